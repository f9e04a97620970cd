"""The Janus API's WebSocket transport (subprotocol ``janus-protocol``) on Autobahn.

Same rules as the SIP listener (``epcscf.ws.protocol``): the subprotocol must be offered (else
HTTP 406), the Origin is checked against the WWSF origins before the upgrade (RFC 6455 §10.2,
HTTP 403), Autobahn pings and drops a silent peer, permessage-deflate is refused.  Sizes: a
message above ``max_message_size`` is answered with a Janus error and the connection stays
(Janus answers bad requests, it does not hang up); only a message above four times that,
which no client of this API sends, closes the connection with 1009 (RFC 6455 §7.4.1).
One WebSocket message is one JSON request; replies and events are text messages.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from autobahn.exception import Disconnected
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger

from epcscf.nonsip.janus_api import SUBPROTOCOL
from epcscf.sip.connection import Address
from epcscf.ws.protocol import (
    BUSY_REFUSED,
    ORIGIN_REFUSED,
    SUBPROTOCOL_REFUSED,
    Authenticate,
    PeerCounter,
    WsListenerSettings,
    handshake_credentials,
    normalise_origin,
)

__all__ = ["JanusConnection", "JanusSink", "JanusWebSocketFactory", "HARD_LIMIT_FACTOR"]

log = Logger(namespace="epcscf.nonsip")

HARD_LIMIT_FACTOR = 4


class JanusSink(Protocol):
    """The Janus adapter (``epcscf.pcscf.nonsip_gateway``)."""

    def frame_received(self, connection: "JanusConnection", payload: bytes) -> None: ...

    def frame_too_large(self, connection: "JanusConnection", size: int) -> None: ...

    def connection_closed(self, connection: "JanusConnection") -> None: ...


class JanusConnection(WebSocketServerProtocol):
    """One WebSocket of a Janus client."""

    factory: "JanusWebSocketFactory"
    origin: str | None = None
    local: Address = Address("", 0)
    remote: Address = Address("", 0)
    #: the WebSocket runs over TLS (wss): the handle's SIP flow is then a WSS one (RFC 7118 §5.2)
    secure: bool = False
    #: what the handshake's token granted ([auth] handshake), for the handles' REGISTERs
    credentials: object | None = None
    _counted_peer: str | None = None  # the IP this connection is counted under (per-IP limit)
    open = False

    def onConnect(self, request: ConnectionRequest) -> str:
        if not self.factory.peers.admit(self, self.factory.settings.max_connections_per_ip):
            # [overload] max_connections_per_ip on this door too: each connection may make up to 16
            # handles, each a SIP UA with a flow of its own (HTTP 503 before the upgrade)
            self.factory.refused("per_ip_limit")
            raise ConnectionDeny(BUSY_REFUSED, "Service Unavailable: too many connections from this address")
        if SUBPROTOCOL not in request.protocols:
            self.factory.refused("subprotocol")
            offered = ", ".join(request.protocols) or "none"
            raise ConnectionDeny(SUBPROTOCOL_REFUSED, f"Not Acceptable: WebSocket subprotocol '{SUBPROTOCOL}' required, offered: {offered}"[:200])
        origin = request.headers.get("origin")
        allowed, why = self.factory.settings.origin_decision(origin)
        if not allowed:
            self.factory.refused("origin")
            raise ConnectionDeny(ORIGIN_REFUSED, f"Forbidden: {why}")
        if origin is not None:
            try:
                self.origin = normalise_origin(origin)
            except ValueError:
                self.origin = origin.strip()
        self.credentials = handshake_credentials(self.factory.authenticate, self.factory.refused, request)
        return SUBPROTOCOL

    def onOpen(self) -> None:
        host, peer = self.transport.getHost(), self.transport.getPeer()
        self.local = Address(str(getattr(host, "host", "")), int(getattr(host, "port", 0)))
        self.remote = Address(str(getattr(peer, "host", "")), int(getattr(peer, "port", 0)))
        self.secure = ISSLTransport.providedBy(self.transport)
        self.open = True
        self.factory.connections.add(self)
        log.info("Janus API connection from {peer} opened (origin {origin})", peer=self.remote, origin=self.origin)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if not self.open:
            return
        if len(payload) > self.factory.settings.max_message_size:
            self.factory.sink.frame_too_large(self, len(payload))
            return
        try:
            self.factory.sink.frame_received(self, payload)
        except Exception:
            log.failure("Janus adapter failed on a frame from {peer}", peer=self.remote)

    def send_json(self, encoded: bytes) -> None:
        if not self.open or self.state != self.STATE_OPEN:
            return
        try:
            self.sendMessage(encoded, isBinary=False)
        except Disconnected:
            pass

    def going_away(self) -> None:
        """Server shutdown: close with 1001 (RFC 6455 §7.4.1)."""
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(code=1001, reasonUtf8=b"server shutting down", isReply=False)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.connections.discard(self)
        if not self.open:
            return
        self.open = False
        log.info("Janus API connection from {peer} ended ({code})", peer=self.remote, code=code)
        try:
            self.factory.sink.connection_closed(self)
        except Exception:
            log.failure("Janus adapter failed on the end of {peer}", peer=self.remote)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802 (Twisted's name)
        super().connectionLost(reason)
        self.factory.peers.release(self)


class JanusWebSocketFactory(WebSocketServerFactory):
    protocol = JanusConnection
    noisy = False

    def refused(self, reason: str) -> None:
        if self.on_refused is not None:
            self.on_refused(reason)

    def __init__(self, settings: WsListenerSettings, sink: JanusSink, reactor: Any = None) -> None:
        super().__init__(url=None, protocols=[SUBPROTOCOL], server="epcscf", reactor=reactor)
        self.sink = sink
        self.connections: set[JanusConnection] = set()
        #: connections past onConnect per remote IP (``[overload] max_connections_per_ip``)
        self.peers = PeerCounter()
        #: metrics: a refused opening handshake (``subprotocol`` | ``origin`` | ``token``)
        self.on_refused: Callable[[str], None] | None = None
        #: the same web-credential check as the SIP listener's (None: no check)
        self.authenticate: Authenticate | None = None
        self.setProtocolOptions(
            webStatus=False,
            utf8validateIncoming=True,
            failByDrop=False,
            openHandshakeTimeout=settings.open_handshake_timeout,
            closeHandshakeTimeout=settings.close_handshake_timeout,
            perMessageCompressionAccept=lambda offers: None,
            allowNullOrigin=True,
            allowedOrigins=["*"],
        )
        self.update_settings(settings)

    def update_settings(self, settings: WsListenerSettings) -> None:
        """The [ws] rules (at start, and after a reload): new handshakes see the Origin policy, new
        connections the size limits and pings (Autobahn copies its options at connection time)."""
        self.settings = settings
        hard = settings.max_message_size * HARD_LIMIT_FACTOR
        self.setProtocolOptions(
            maxMessagePayloadSize=hard,
            maxFramePayloadSize=hard,
            autoPingInterval=settings.ping_interval,
            autoPingTimeout=settings.ping_timeout if settings.ping_interval > 0 else 0,
        )
