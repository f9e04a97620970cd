"""Where messages enter the node: WebSocket flows and core-side listeners → the transaction layer.

Both sinks apply the per-flow / per-source message rate (``[overload]``) before a message
reaches ``TransactionLayer.receive``; nothing else happens here, so the common path (no limit,
or a trusted core source) costs one call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from epcscf.pcscf.limits import ADMIT
from epcscf.sip.connection import Connection
from epcscf.sip.message import Message
from epcscf.ws.connection import CloseReason, WsConnection

if TYPE_CHECKING:
    from epcscf.pcscf.node import PcscfNode


class WsSink:
    """WebSocket events → flows and the transaction layer."""

    def __init__(self, node: "PcscfNode") -> None:
        self.node = node
        #: every message goes straight to the transaction layer: no frame of ours per message,
        #: unless each flow's message rate is limited
        self.message_received: Callable[[Message, WsConnection], None] = node.transactions.receive
        if node.flow_limiter is not None:
            self.message_received = self._limited

    def _limited(self, message: Message, connection: WsConnection) -> None:
        node = self.node
        assert node.flow_limiter is not None
        verdict = node.flow_limiter.arrived(connection.id)
        if verdict is ADMIT:
            node.transactions.receive(message, connection)
        elif node.refused_over_rate(message, connection, verdict, "flow_rate"):
            # RFC 6455 §7.4.1: 1008, the peer broke our policy (it kept flooding after 503s).
            connection.close(1008, "message rate limit exceeded")

    def connection_opened(self, connection: WsConnection) -> None:
        self.node.flows.open(connection, getattr(connection, "origin", None))

    def connection_closed(self, connection: WsConnection, reason: CloseReason) -> None:
        if self.node.flow_limiter is not None:
            self.node.flow_limiter.forget(connection.id)
        self.node.flows.close(connection.id, str(reason))


class CoreSink:
    """Core-side listeners' messages → the transaction layer.  A source that is no trusted core
    address (``guard.TrustedSources``) has a message rate, as a WIC's flow has: per UDP address
    and port, per TCP/TLS connection (``[overload] untrusted_source_messages_per_second``)."""

    def __init__(self, node: "PcscfNode") -> None:
        self.node = node

    def __call__(self, message: Message, connection: Connection) -> None:
        node = self.node
        limiter = node.source_limiter
        if limiter is None or node.trusted_sources.allows(connection.remote):
            node.transactions.receive(message, connection)
            return
        verdict = limiter.arrived(connection.id)
        if verdict is ADMIT:
            node.transactions.receive(message, connection)
        elif node.refused_over_rate(message, connection, verdict, "source_rate") and connection.reliable:
            connection.close()  # a TCP/TLS connection that kept flooding; a UDP source is just ignored

