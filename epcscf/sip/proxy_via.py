"""Our Via in the stateful proxy, a mixin of ``StatefulProxy``.

The Via we add to a request forwarded (RFC 3261 §16.6 step 8) and its sent-by; how big
that makes a request toward UDP (RFC 3261 §18.1.1); recognising our own sent-by (loop
detection, §16.3 step 4) and our own Via on a response (§16.7 step 3, §18.1.2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from epcscf.sip import proxy_rules as rules
from epcscf.sip.connection import Address, Connection
from epcscf.sip.message import Request
from epcscf.sip.proxy_policy import Branch
from epcscf.sip.resolver import DEFAULT_PORTS, Target

if TYPE_CHECKING:
    from epcscf.sip.proxy_ports import Connector, ProxySettings

# The Via we add (§16.6 step 8), counted when sizing a request for RFC 3261 §18.1.1: our
# branch is the prefix, the loop hash and a digest (16 hex digits each, rules.branch_for).
OWN_VIA_LINE = "Via: SIP/2.0/UDP {sent_by};branch=" + rules.BRANCH_PREFIX + "0" * 16 + "." + "0" * 16 + "\r\n"


class OwnVia:
    """Writes and recognises our Via, for ``StatefulProxy`` (which owns ``connector`` and ``settings``)."""

    if TYPE_CHECKING:
        connector: Connector
        settings: ProxySettings

    def _with_own_via(self, branch: Branch, connection: Connection, branch_id: str) -> Request:
        """The branch's request as it goes out on ``connection``, with our Via on top (RFC 3261
        §16.6 step 8).  The branch keeps its request for the next target (RFC 3263 §4.3), so
        the Via goes on a copy, unless no target is left: then nothing sends the branch's
        request again, and it is the request sent (not for an INVITE, whose request the call
        manager keeps reading)."""
        request = branch.request
        outgoing = request if not branch.targets and request.method != "INVITE" else request.copy()
        rules.add_via(outgoing, connection.transport, branch.via_sent_by or self._sent_by(connection), branch_id)
        return outgoing

    def _sent_by(self, connection: Connection) -> str:
        """Our Via sent-by: the public host, else the listener of that transport (responses
        over UDP come back to the listening socket), else the connection's local end."""
        listener = self.connector.local_address(connection.transport)
        local = listener or connection.local
        host = self.settings.public_host or local.host
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{local.port}"

    def _udp_request_size(self, branch: Branch, target: Target) -> int:
        """The size the branch's request will have on the wire toward a UDP ``target`` (0 for
        other transports): RFC 3261 §18.1.1 counts the whole message, our Via included."""
        if target.transport.upper() != "UDP":
            return 0
        sent_by = branch.via_sent_by
        if not sent_by:
            local = self.connector.local_address("UDP") or Address("", 0)
            sent_by = f"{self.settings.public_host or local.host}:{local.port}"
        return len(branch.request.serialize()) + len(OWN_VIA_LINE.format(sent_by=sent_by))

    def _is_own_sent_by(self, host: str, port: int | None) -> bool:
        for transport in ("UDP", "TCP", "TLS"):
            local = self.connector.local_address(transport)
            if local is None:
                continue
            hosts = {local.host, self.settings.public_host}
            if host.strip("[]") in hosts and (port or DEFAULT_PORTS[transport]) == local.port:
                return True
        return False

    def _is_own_via(self, via_text: str) -> bool:
        branch = rules.via_param(via_text, "branch") or ""
        return branch.startswith(rules.BRANCH_PREFIX)
