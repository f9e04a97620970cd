"""SIP over WebSocket (RFC 7118) on Autobahn: whole SIP messages in, whole SIP messages out.

Theory of operation
-------------------
One ``SipWebSocketServerFactory`` per listener (``listen_ws``).  Autobahn does the
WebSocket framing; this module only decides policy and moves messages:

* Opening handshake (``onConnect``): the client must offer the ``sip`` subprotocol
  (RFC 7118 §4.1), else HTTP 406 and no upgrade; the ``Origin`` header is checked
  against the configured WWSF origins (RFC 6455 §10.2) and a disallowed origin gets HTTP 403
  before any upgrade.  A request without ``Origin`` comes from a non-browser client and is
  accepted only if ``allow_missing_origin``.  We compare normalised origins ourselves
  (``scheme://host:port`` with the default port filled in) because Autobahn's own check
  answers 400 and matches patterns against a string it rebuilds.
* Messages (``onMessage``): one WebSocket message is one SIP message (RFC 7118 §5),
  text or binary (RFC 7118 §4.2), Content-Length optional.  ``\\r\\n\\r\\n`` is a
  keep-alive ping answered with ``\\r\\n``; a lone ``\\r\\n`` (a pong) is ignored
  (RFC 5626 §4.4.1, RFC 7118 §6).  A message that does not parse is answered with the
  parser's 400/505/513 when a response can be routed, and the connection stays open (a bad
  SIP message is no WebSocket error); a WebSocket message holding more than one SIP message
  is answered 400 (RFC 7118 §5 forbids it; the answer is our choice).  Every good message
  goes to the ``MessageSink`` with its ``WsConnection``.
* Limits and close codes (RFC 6455 §7.4.1): Autobahn enforces ``max_message_size`` and
  validates UTF-8 in text messages; with ``failByDrop=False`` it closes with 1009 and 1007
  instead of dropping TCP.  permessage-deflate is refused (a compression bomb would bypass
  the size limit, and SIP messages are small).
* Liveness (RFC 7118 §6, RFC 6455 §5.5.2): Autobahn answers Pings; with ``ping_interval`` > 0
  it sends Pings and drops the connection when no Pong arrives within ``ping_timeout``.
  NB: Autobahn's timers are batched to whole seconds, so timeouts fire up to one second early.
* The end of the connection (any cause) reaches the sink once as
  ``connection_closed(connection, CloseReason)``: that is the end of the RFC 5626 flow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence
from urllib.parse import urlsplit

from autobahn.exception import Disconnected
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, ISSLTransport, IStreamServerEndpoint
from twisted.logger import Logger

from epcscf.sip.connection import Address, ConnectionLost
from epcscf.sip.message import Message, Request, make_response
from epcscf.sip.parser import ParserLimits, SipParseError, error_response_for, parse_message
from epcscf.sip.replay import StatelessReplays
from epcscf.ws.autobahn_shim import LeanAutobahnProtocol
from epcscf.ws.connection import CloseReason, WsConnection

__all__ = [
    "SIP_SUBPROTOCOL",
    "WsListenerSettings",
    "MessageSink",
    "SipWebSocketServerProtocol",
    "SipWebSocketServerFactory",
    "listen_ws",
    "normalise_origin",
    "HandshakeRefusal",
]

log = Logger()

# RFC 7118 §4.1 / IANA WebSocket Subprotocol Name Registry
SIP_SUBPROTOCOL = "sip"
# RFC 5626 §4.4.1: CRLFCRLF is a ping, CRLF its pong.
KEEPALIVE_PING = b"\r\n\r\n"
KEEPALIVE_PONG = b"\r\n"

DEFAULT_PORTS = {"http": 80, "https": 443}

# HTTP answers to a refused opening handshake (the reason phrase is what the client sees)
SUBPROTOCOL_REFUSED = 406
ORIGIN_REFUSED = 403
BUSY_REFUSED = 503  # too many connections from one address (RFC 7231 §6.6.4)


@dataclass(frozen=True)
class HandshakeRefusal:
    """The HTTP answer to a handshake whose credentials do not admit it (401/403)."""

    status: int
    phrase: str


#: checks an opening handshake's credentials (query parameters, headers): what they grant, or
#: a ``HandshakeRefusal``; None: nothing granted (no token, and none required)
Authenticate = Callable[[Mapping[str, Sequence[str]], Mapping[str, str]], object]


def handshake_credentials(authenticate: Authenticate | None, refused: Callable[[str], None], request: ConnectionRequest) -> object | None:
    """Web-credential access at the opening handshake (TS 24.371 §5, RFC 6750 §2.3): what the
    token grants, None without a check or a token; a socket without a good one, when one is
    required, is refused here (``ConnectionDeny``), before any SIP or Janus request."""
    if authenticate is None:
        return None
    verdict = authenticate(request.params, request.headers)
    if isinstance(verdict, HandshakeRefusal):
        refused("token")
        raise ConnectionDeny(verdict.status, verdict.phrase)
    return verdict


def normalise_origin(origin: str) -> str:
    """``scheme://host:port`` with a lower-case host and the default port made explicit.

    RFC 6454 §4 origins are (scheme, host, port); ``https://wic.example.com`` and
    ``https://WIC.example.com:443`` are the same origin.  Raises ``ValueError`` for anything
    that is not an http(s) origin (a path, a query, user info, a bad port).
    """
    text = origin.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as error:
        raise ValueError(f"{origin!r} is not an origin like https://wic.example.com:443 ({error})") from None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if (
        scheme not in DEFAULT_PORTS
        or not host
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise ValueError(f"{origin!r} is not an origin like https://wic.example.com:443")
    if port is None:
        port = DEFAULT_PORTS[scheme]
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


@dataclass(frozen=True)
class WsListenerSettings:
    """Policy of one WebSocket listener (the ``[ws]`` ini section)."""

    #: browser origins allowed to connect (RFC 6455 §10.2); default ports may be omitted
    allowed_origins: tuple[str, ...] = ()
    #: accept every Origin (labs only)
    allow_any_origin: bool = False
    #: accept clients that send no Origin at all (non-browser WICs, sipp, JsSIP in Node)
    allow_missing_origin: bool = True
    #: largest WebSocket message accepted; bigger closes with 1009 (RFC 6455 §7.4.1)
    max_message_size: int = 65536
    #: seconds between our Pings (0 = never ping)
    ping_interval: float = 25.0
    #: close the connection when a Ping gets no Pong within this many seconds
    ping_timeout: float = 10.0
    #: drop a TCP/TLS connection that has not completed the WebSocket handshake by then
    open_handshake_timeout: float = 10.0
    #: give up waiting for the peer's Close frame after this many seconds
    close_handshake_timeout: float = 5.0
    #: WebSocket connections from one IP address at once (0: no limit); more get HTTP 503
    max_connections_per_ip: int = 0
    normalised_origins: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_origins", tuple(self.allowed_origins))
        object.__setattr__(
            self, "normalised_origins", frozenset(normalise_origin(origin) for origin in self.allowed_origins)
        )
        if self.max_message_size < 1:
            raise ValueError(f"max_message_size must be positive, not {self.max_message_size}")
        for name in ("ping_interval", "ping_timeout", "open_handshake_timeout", "close_handshake_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, not {getattr(self, name)}")
        if self.ping_interval > 0 and self.ping_timeout <= 0:
            raise ValueError("ping_timeout must be positive when ping_interval is set")

    def origin_decision(self, origin: str | None) -> tuple[bool, str]:
        """(allowed, explanation) for the Origin header of a handshake (None = absent)."""
        if origin is None:
            if self.allow_missing_origin:
                return True, "no Origin (non-browser client) allowed"
            return False, "an Origin header is required"
        if self.allow_any_origin:
            return True, "any origin allowed"
        try:
            normalised = normalise_origin(origin)
        except ValueError:
            return False, f"origin {origin[:100]!r} is not allowed"
        if normalised in self.normalised_origins:
            return True, f"origin {normalised} allowed"
        return False, f"origin {origin[:100]!r} is not allowed"


class MessageSink(Protocol):
    """Where SIP messages and flow events go (the P-CSCF edge implements this)."""

    def connection_opened(self, connection: WsConnection) -> None: ...

    def message_received(self, message: Message, connection: WsConnection) -> None: ...

    def connection_closed(self, connection: WsConnection, reason: CloseReason) -> None: ...


def _address(address: Any) -> Address:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    return Address(str(host) if host is not None else "", int(port) if port is not None else 0)


def _more_than_one_message(payload: bytes, message: Message) -> bool:
    """True when octets beyond the message's body follow it (a second SIP message)."""
    if "content-length" not in message.headers.lookup_index():
        return False  # without Content-Length the body runs to the end of the WS message
    start = 0
    while payload[start : start + 1] in (b"\r", b"\n"):
        start += 1
    head_end = payload.find(b"\r\n\r\n", start)
    if head_end < 0:
        return False
    end = head_end + 4 + len(message.body)
    if end >= len(payload):
        return False  # the usual case: nothing follows (no copy of the payload made)
    return bool(payload[end:].strip(b"\r\n"))


class SipWebSocketServerProtocol(LeanAutobahnProtocol, WebSocketServerProtocol):
    """One WebSocket connection from a WIC (``LeanAutobahnProtocol``: what it saves per connection)."""

    factory: "SipWebSocketServerFactory"
    connection: WsConnection | None = None
    _origin: str | None = None
    _failure: tuple[int, str] | None = None
    _counted_peer: str | None = None  # the IP this connection is counted under (per-IP limit)
    _credentials: object | None = None  # what the handshake's credentials granted

    # --- opening handshake ---

    def onConnect(self, request: ConnectionRequest) -> str:
        settings = self.factory.settings
        if not self.factory.admit_peer(self):
            # A per-source limit: one address may not hold every connection slot (HTTP 503
            # before the upgrade, so the client never believes it has a flow).
            self.factory.refused("per_ip_limit")
            raise ConnectionDeny(BUSY_REFUSED, "Service Unavailable: too many connections from this address")
        if SIP_SUBPROTOCOL not in request.protocols:
            # RFC 7118 §4.1: the client MUST offer "sip"; without it there is no SIP to speak.
            offered = ", ".join(request.protocols) if request.protocols else "none"
            self.factory.refused("subprotocol")
            raise ConnectionDeny(
                SUBPROTOCOL_REFUSED,
                f"Not Acceptable: WebSocket subprotocol 'sip' required (RFC 7118), offered: {offered}"[:200],
            )
        origin = request.headers.get("origin")
        allowed, why = settings.origin_decision(origin)
        if not allowed:
            # RFC 6455 §10.2: refuse a foreign web page before upgrading.
            self.factory.refused("origin")
            raise ConnectionDeny(ORIGIN_REFUSED, f"Forbidden: {why}")
        if origin is not None:
            try:
                self._origin = normalise_origin(origin)
            except ValueError:
                self._origin = origin.strip()  # allow_any_origin lets odd ones ("null") in
        self._credentials = handshake_credentials(self.factory.authenticate, self.factory.refused, request)
        return SIP_SUBPROTOCOL

    def onOpen(self) -> None:
        secure = ISSLTransport.providedBy(self.transport)
        self.connection = WsConnection(
            sender=self,
            transport="WSS" if secure else "WS",
            local=_address(self.transport.getHost()),
            remote=_address(self.transport.getPeer()),
            origin=self._origin,
            opened=self.factory.reactor.seconds(),
        )
        if self._credentials is not None:
            self.connection.credentials = self._credentials
        log.info("{connection} opened (origin {origin})", connection=self.connection, origin=self._origin)
        self.release_handshake()
        self.factory.connection_opened(self.connection)

    # --- messages ---

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        connection = self.connection
        if connection is None or connection.closed_reason is not None:  # ``connected``, inlined: every message
            return
        if payload == KEEPALIVE_PING:
            try:
                connection.send_raw(KEEPALIVE_PONG)  # RFC 5626 §4.4.1 / RFC 7118 §6
            except ConnectionLost:
                pass  # closing under us: the flow's end is reported by onClose
            return
        if not payload or (payload[:1] in (b"\r", b"\n") and not payload.strip(b"\r\n")):
            return  # a pong (lone CRLF) or empty padding: nothing to do (no copy of a message made)
        connection.messages_received += 1
        replays = self.factory.replays
        if replays is not None and replays.replay(payload, connection):
            return  # a copy of an ACK forwarded statelessly: sent on as before (epcscf.sip.replay)
        try:
            message = parse_message(payload, self.factory.limits)
        except SipParseError as error:
            self._reject(connection, error)
            return
        if isinstance(message, Request) and _more_than_one_message(payload, message):
            # RFC 7118 §5: a WebSocket message MUST NOT contain more than one SIP message.
            response = make_response(
                message, 400, "Bad Request (more than one SIP message in one WebSocket message, RFC 7118 section 5)"
            )
            self._send_quietly(connection, response)
            return
        if replays is None:
            self.factory.message_received(message, connection)
            return
        replays.receiving(payload, connection)
        try:
            self.factory.message_received(message, connection)
        finally:
            replays.received()

    def _reject(self, connection: WsConnection, error: SipParseError) -> None:
        if self.factory.on_parse_error is not None:
            self.factory.on_parse_error(connection.transport)
        response = error_response_for(error)
        log.info(
            "{connection}: unparseable SIP message ({status} {reason}); {action}",
            connection=connection,
            status=error.status,
            reason=error.reason,
            action="answered" if response is not None else "dropped",
        )
        if response is not None:
            self._send_quietly(connection, response)

    def _send_quietly(self, connection: WsConnection, message: Message) -> None:
        try:
            connection.send_message(message)
        except Exception as error:  # the connection may be closing; nothing else to do
            log.info("{connection}: could not answer: {error}", connection=connection, error=error)

    # --- FrameSender for WsConnection ---

    def send_frame(self, payload: bytes, binary: bool) -> None:
        # Autobahn fails a connection (1002/1007/1009, a ping timeout) at once but reports
        # onClose only when TCP is gone, a loop turn or a close handshake later; meanwhile its
        # sendMessage raises ``Disconnected``.  To SIP that is the flow gone (RFC 5626 §5.3.1):
        # the one documented ``ConnectionLost`` every sender of a ``Connection`` handles.
        if self.state != self.STATE_OPEN:
            raise ConnectionLost(f"WebSocket to {self.connection.remote if self.connection else '?'} is closing")
        try:
            self.send_data_frame(payload, binary)
        except Disconnected as error:
            raise ConnectionLost(f"WebSocket is gone: {error}") from error

    def close_websocket(self, code: int, reason: str) -> None:
        # Autobahn's public sendClose() refuses 1001 (going away), which a server shutting
        # down must send (RFC 6455 §7.4.1); its closing-handshake primitive takes any code.
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:123] or None, isReply=False)

    # --- the end ---

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        connection = self.connection
        if connection is None or not connection.connected:
            return
        # A Close we sent first (closedByMe/failedByMe), or a drop with no Close from the peer
        # (ping timeout), is ours; a server also drops TCP after a peer-initiated close.
        by_us = bool(self.closedByMe or self.failedByMe or (self.droppedByMe and self.remoteCloseCode is None))
        if self._failure is not None:
            # what we told the peer (1007, 1009, 1002) matters more than how TCP ended
            code, text = self._failure
        else:
            code = code if code is not None else 1006
            text = reason or self.wasNotCleanReason or ""
        close_reason = CloseReason(code=code, reason=str(text), clean=bool(wasClean), by_us=by_us)
        connection.mark_closed(close_reason)
        log.info("{connection} ended", connection=connection)
        self.factory.connection_closed(connection, close_reason)

    def _fail_connection(self, code: int = 1001, reason: str = "going away") -> None:
        # Autobahn's single exit for 1002/1007/1009: remember why, for the sink.
        if self._failure is None:
            self._failure = (code, reason)
        super()._fail_connection(code, reason)

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        self.factory.release_peer(self)
        # Autobahn leaves its close-handshake timer running when TCP goes away first.
        if self.closeHandshakeTimeoutCall is not None:
            self.closeHandshakeTimeoutCall.cancel()
            self.closeHandshakeTimeoutCall = None


class PeerCounter:
    """Connections past the opening handshake's start, per remote IP address: one address may
    not hold every connection slot of a listener (``[overload] max_connections_per_ip``)."""

    def __init__(self) -> None:
        self._per_ip: dict[str, int] = {}

    def admit(self, protocol: Any, limit: int) -> bool:
        """Count one more connection from the protocol's IP, unless that is over ``limit`` (0: none)."""
        host = str(getattr(protocol.transport.getPeer(), "host", ""))
        count = self._per_ip.get(host, 0)
        if limit > 0 and count >= limit:
            return False
        self._per_ip[host] = count + 1
        protocol._counted_peer = host
        return True

    def release(self, protocol: Any) -> None:
        """The protocol's connection ended: uncount it (once; never counted, nothing)."""
        host = protocol._counted_peer
        if host is None:
            return
        protocol._counted_peer = None
        count = self._per_ip.get(host, 0) - 1
        if count > 0:
            self._per_ip[host] = count
        else:
            self._per_ip.pop(host, None)

    def hosts(self) -> dict[str, int]:
        """Counted connections by IP address (a copy)."""
        return dict(self._per_ip)


class SipWebSocketServerFactory(WebSocketServerFactory):
    """Builds ``SipWebSocketServerProtocol``s for one listener and relays to the sink."""

    protocol = SipWebSocketServerProtocol
    noisy = False  # no "Starting factory" line per listener

    def __init__(self, settings: WsListenerSettings, sink: MessageSink, reactor: Any = None) -> None:
        super().__init__(url=None, protocols=[SIP_SUBPROTOCOL], server="epcscf", reactor=reactor)
        self.settings = settings
        self.sink = sink
        self.limits = ParserLimits(max_message_size=settings.max_message_size)
        self.connections: set[WsConnection] = set()
        #: connections past onConnect per remote IP (``max_connections_per_ip``)
        self.peers = PeerCounter()
        #: checks the handshake's credentials (query parameters, headers): what they grant (kept
        #: as the connection's ``credentials``) or a ``HandshakeRefusal``; None: no check
        self.authenticate: Callable[[Mapping[str, Sequence[str]], Mapping[str, str]], object] | None = None
        #: observers for metrics: a refused handshake ("subprotocol" | "origin"), an unparseable message
        self.on_refused: Callable[[str], None] | None = None
        self.on_parse_error: Callable[[str], None] | None = None
        #: copies of statelessly forwarded ACKs, sent on unparsed (``epcscf.sip.replay``; None: none)
        self.replays: StatelessReplays | None = None
        self.setProtocolOptions(
            webStatus=False,  # no HTML status page on plain GET
            utf8validateIncoming=True,  # RFC 6455 §8.1: invalid UTF-8 text → 1007
            maxMessagePayloadSize=settings.max_message_size,
            maxFramePayloadSize=settings.max_message_size,
            failByDrop=False,  # send a Close frame with the code (1007/1009/1002), RFC 6455 §7.4.1
            openHandshakeTimeout=settings.open_handshake_timeout,
            closeHandshakeTimeout=settings.close_handshake_timeout,
            perMessageCompressionAccept=lambda offers: None,  # no permessage-deflate
            autoPingInterval=settings.ping_interval,
            autoPingTimeout=settings.ping_timeout if settings.ping_interval > 0 else 0,
            allowNullOrigin=True,  # "null" reaches onConnect, where our policy decides
            # Origin policy is ours (403 in onConnect); Autobahn's check would say 400.
            allowedOrigins=["*"],
        )

    def update_settings(self, settings: WsListenerSettings) -> None:
        """A configuration reload: new handshakes see the new Origin policy, new connections
        the new limits and pings (Autobahn copies its protocol options at connection time)."""
        self.settings = settings  # frozen: replaced whole, never mutated
        self.limits = ParserLimits(max_message_size=settings.max_message_size)
        self.setProtocolOptions(
            maxMessagePayloadSize=settings.max_message_size,
            maxFramePayloadSize=settings.max_message_size,
            autoPingInterval=settings.ping_interval,
            autoPingTimeout=settings.ping_timeout if settings.ping_interval > 0 else 0,
        )

    # The sink is called through these so that one misbehaving sink call never takes the
    # connection (or Autobahn's state machine) down with it.

    def refused(self, reason: str) -> None:
        if self.on_refused is not None:
            self.on_refused(reason)

    def admit_peer(self, protocol: SipWebSocketServerProtocol) -> bool:
        """Count one more connection from the protocol's IP, unless that is over the limit."""
        return self.peers.admit(protocol, self.settings.max_connections_per_ip)

    def release_peer(self, protocol: SipWebSocketServerProtocol) -> None:
        self.peers.release(protocol)

    def connection_opened(self, connection: WsConnection) -> None:
        self.connections.add(connection)
        self._call_sink("connection_opened", connection)

    def message_received(self, message: Message, connection: WsConnection) -> None:
        # The per-message path: no name lookup or argument tuple as in _call_sink.
        try:
            self.sink.message_received(message, connection)
        except Exception:
            log.failure("sink message_received failed for {connection}", connection=connection)

    def connection_closed(self, connection: WsConnection, reason: CloseReason) -> None:
        self.connections.discard(connection)
        self._call_sink("connection_closed", connection, reason)

    def _call_sink(self, name: str, *args: Any) -> None:
        try:
            getattr(self.sink, name)(*args)
        except Exception:
            log.failure("sink {name} failed for {args}", name=name, args=args)


def listen_ws(
    reactor: Any, endpoint: "str | IStreamServerEndpoint", settings: WsListenerSettings, sink: MessageSink
) -> "Deferred[IListeningPort]":
    """Listen for SIP WebSocket clients on an endpoint or a strports description.

    ``tcp:8080:interface=127.0.0.1`` serves WS.  For WSS pass
    ``SSL4ServerEndpoint(reactor, 8443, server_tls(credentials, HTTP_PROTOCOLS))``
    (``epcscf.sip.tls``): the ``ssl:`` description builds Twisted's own context, whose ALPN
    callback aborts the handshake of every browser.  The listening port's ``factory``
    attribute is not exposed by Twisted, so the factory is attached to the returned port as
    ``ws_factory``.
    """
    factory = SipWebSocketServerFactory(settings, sink, reactor=reactor)
    if isinstance(endpoint, str):
        endpoint = endpoints.serverFromString(reactor, endpoint)
    listening: Deferred[IListeningPort] = endpoint.listen(factory)

    def attach(port: IListeningPort) -> IListeningPort:
        port.ws_factory = factory  # type: ignore[attr-defined]
        return port

    listening.addCallback(attach)
    return listening
