"""Requests the eP-CSCF sends on its own in a call it releases from the middle.

A confirmed call ends with a BYE toward each reachable side (RFC 3261 §15.1.1, with a Reason
header, RFC 3326, saying why: WebSocket closed, ICE consent lost, the operator…); a 2xx that
raced an early release is ACKed (RFC 3261 §13.2.2.4) and then BYEd.  The requests are built
by the call's ``dialogs.Dialog``; a BYE goes through the proxy's ``ProxyOperations`` in its
own client transaction (the ACK of a 2xx has none, RFC 3261 §17.1.1.3).
"""

from __future__ import annotations

from typing import Any

from epcscf.pcscf.call_model import Call
from epcscf.pcscf.dialogs import SIDE_WIC, DialogError, Side
from epcscf.pcscf.edge import EdgeAddresses
from epcscf.sip.connection import Connection, ConnectionLost
from epcscf.sip.message import Response
from epcscf.sip.proxy_policy import ProxyOperations


class _RequestsWeSent:
    """Client-transaction user of our own BYEs: the responses end here (noted on the timeline)."""

    def __init__(self, call: Call, what: str) -> None:
        self.call = call
        self.what = what

    def response_received(self, response: Response, transaction: Any) -> None:
        if response.status >= 200:
            self.call.note("sip-in", f"{response.status} to our {self.what}")

    def timed_out(self, transaction: Any) -> None:
        self.call.note("sip-in", f"no response to our {self.what}")

    def transport_failed(self, transaction: Any, reason: str) -> None:
        self.call.note("sip-in", f"our {self.what} could not be sent: {reason}")


class CallRequests:
    """Sends a call's BYE and late ACK toward one side (see module docstring)."""

    def __init__(self, addresses: EdgeAddresses, proxy: ProxyOperations | None) -> None:
        self.addresses = addresses
        self.proxy = proxy

    def send_bye(self, call: Call, toward: Side, reason: str) -> None:
        connection, transport, sent_by = self._path_toward(call, toward)
        if connection is None or call.dialog is None or self.proxy is None:
            call.note("release", f"no BYE toward the {toward.value}: not reachable")
            return
        try:
            bye = call.dialog.build_bye(toward, reason, transport, sent_by)
            self.proxy.send_request(bye, connection, _RequestsWeSent(call, f"BYE to the {toward.value}"))
        except (DialogError, ConnectionLost, ValueError) as error:
            call.note("release", f"BYE toward the {toward.value} not sent: {error}")
            return
        call.note("sip-out", f"BYE toward the {toward.value} (Reason: {reason})")

    def ack_and_bye(self, call: Call, toward: Side, cause: str) -> None:
        connection, transport, sent_by = self._path_toward(call, toward)
        if connection is None or call.dialog is None:
            return
        try:
            connection.send_message(call.dialog.build_ack(toward, transport, sent_by))  # RFC 3261 §13.2.2.4
        except (DialogError, ConnectionLost) as error:
            call.note("release", f"ACK toward the {toward.value} not sent: {error}")
            return
        call.note("sip-out", f"ACK toward the {toward.value} for a 2xx after the release")
        self.send_bye(call, toward, f'SIP;cause=487;text="{quoted(cause)}"')

    def _path_toward(self, call: Call, toward: Side) -> tuple[Connection | None, str, str]:
        if toward is SIDE_WIC:
            flow = call.wic_flow
            return (flow if flow.connected else None), flow.transport, self.addresses.wic_sent_by
        connection = call.core_connection
        if connection is None or not connection.connected:
            return None, "UDP", self.addresses.core_sent_by
        return connection, connection.transport, self.addresses.core_sent_by


def quoted(text: str) -> str:
    """``text`` as the quoted-string of a Reason header's ``text`` (RFC 3326 §2), bounded."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")[:120]
