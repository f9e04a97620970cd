"""SIP over UDP, TCP and TLS (RFC 3261 §18): Twisted protocols that only move bytes.

Theory of operation
-------------------
Every transport turns bytes into whole messages with ``epcscf.sip.parser`` and hands each
message, together with the ``Connection`` it arrived on, to one ``sink`` (the transaction
layer).  Nothing here reads a message beyond what framing and RFC 3261 §18 need.

* UDP (``UdpTransport``): one socket per listener; a cheap ``UdpConnection`` per remote
  address, cached while in use and forgotten after ``udp_idle_timeout``.  A datagram that
  does not parse is answered with the parser's error response when one can be built
  (RFC 3261 §18.3 / §16.3 step 1) and is otherwise dropped.  RFC 3261 §18.1.1: a request
  too large for UDP (``UDP_REQUEST_LIMIT``) goes over TCP to the same address instead
  (``TransportManager.connect_for_request``), over UDP only when no TCP connection can be
  made (then for ``UDP_ONLY_MEMORY`` seconds without a new try); responses keep their
  transport (§18.2.2).
* TCP/TLS (``StreamConnection``): ``StreamFramer`` handles partial reads, several messages
  per read and RFC 5626 §3.5.1 CRLFCRLF keep-alives (answered with CRLF); a framing error
  is answered (400 for a missing Content-Length, RFC 3261 §18.3) and, when fatal, the
  connection is closed.  Errors only ever affect the peer that caused them.
* ``TransportManager`` owns the listeners and the connection table (keyed by transport and
  remote address) so that requests toward a peer reuse an open connection, opens outbound
  TCP/TLS connections for ``connect(Target)`` and closes idle ones.  A response whose
  connection has gone is sent on a new connection to the Via sent-by (RFC 3261 §18.2.2).
"""

from __future__ import annotations

import itertools
from socket import AF_INET, AF_INET6, SO_RCVBUF, SOL_SOCKET
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from twisted.internet import defer, endpoints, ssl
from twisted.internet.error import InvalidAddressError, MessageLengthError
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from epcscf.sip.connection import Address, Connection, ConnectionLost
from epcscf.sip.headers import top_via
from epcscf.sip.message import Message, Request, Response
from epcscf.sip.resolver import DEFAULT_PORTS, Target
from epcscf.sip.parser import (
    FramingError,
    KeepAlivePing,
    MessageFramed,
    ParserLimits,
    SipParseError,
    StreamFramer,
    error_response_for,
    parse_message,
)
from epcscf.sip.tcp_write import write_now
from epcscf.sip.tls import describe_tls_error, server_tls_from_files

log = Logger()

MessageSink = Callable[[Message, Connection], None]

# RFC 3261 §18.1.1: a request within 200 bytes of the path MTU goes over a congestion-controlled
# transport; with the MTU unknown (always, here) that is a request larger than 1300 bytes.
UDP_REQUEST_LIMIT = 1300
#: how long a next hop that refused TCP gets its large requests over UDP without a new try
UDP_ONLY_MEMORY = 300.0


def congestion_controlled_target(target: Target, size: int) -> Target | None:
    """RFC 3261 §18.1.1: the TCP target (same address) to use instead of a UDP ``target`` for a
    request of ``size`` bytes, or None when the request may go as the resolver chose."""
    if size <= UDP_REQUEST_LIMIT or target.transport.upper() != "UDP":
        return None
    return Target("TCP", target.host, target.port)


@dataclass(frozen=True)
class ListenerSpec:
    """One listening socket: ``udp:127.0.0.1:5060``, ``tcp:…``, ``tls:…`` (port 0 = any)."""

    transport: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "ListenerSpec":
        transport, sep, rest = text.partition(":")
        if not sep or transport.lower() not in ("udp", "tcp", "tls"):
            raise ValueError(f"listener {text!r} is not udp|tcp|tls:address:port")
        if rest.startswith("["):
            host, _, port_text = rest[1:].partition("]:")
        else:
            host, _, port_text = rest.rpartition(":")
        if not host or not port_text.isdigit():
            raise ValueError(f"listener {text!r} is not udp|tcp|tls:address:port")
        return cls(transport.upper(), host, int(port_text))

    @classmethod
    def of(cls, spec: "str | ListenerSpec | Any") -> "ListenerSpec":
        """Accept a string, a ListenerSpec or anything with transport/address/port (config.Listener)."""
        if isinstance(spec, ListenerSpec):
            return spec
        if isinstance(spec, str):
            return cls.parse(spec)
        return cls(str(spec.transport).upper(), spec.address, int(spec.port))


@dataclass(frozen=True)
class TransportSettings:
    limits: ParserLimits = field(default_factory=ParserLimits)
    #: close a TCP/TLS connection after this long without traffic in either direction
    idle_timeout: float = 600.0
    #: forget a UDP peer this long after its last datagram (it is recreated on demand)
    udp_idle_timeout: float = 180.0
    tls_certificate: str = ""  # PEM file for tls listeners
    tls_private_key: str = ""
    #: trust root for outbound TLS (``ssl.Certificate`` or ``platformTrust()``); None = platform
    tls_trust_root: Any = None
    connect_timeout: float = 10.0
    #: SO_RCVBUF for UDP listeners, bytes (0: the system default)
    udp_receive_buffer: int = 4 * 1024 * 1024


class _Connections:
    """The connection table: one open stream connection per (transport, remote address)."""

    def __init__(self) -> None:
        self._by_remote: dict[tuple[str, Address], "StreamConnection"] = {}
        self.all: set["StreamConnection"] = set()

    def add(self, connection: "StreamConnection") -> None:
        self.all.add(connection)
        self._by_remote[(connection.transport, connection.remote)] = connection

    def remove(self, connection: "StreamConnection") -> None:
        self.all.discard(connection)
        key = (connection.transport, connection.remote)
        if self._by_remote.get(key) is connection:
            del self._by_remote[key]

    def find(self, transport: str, remote: Address) -> "StreamConnection | None":
        found = self._by_remote.get((transport, remote))
        return found if found is not None and found.connected else None


_ids = itertools.count(1)


# --- UDP -------------------------------------------------------------------------------------


class UdpConnection:
    """The path (our UDP socket, one peer address); stateless, so it never really closes."""

    transport = "UDP"
    reliable = False

    def __init__(self, socket: "UdpTransport", remote: Address) -> None:
        self._socket = socket
        self.remote = remote
        self.local = socket.local
        self.id = f"udp:{self.local}:{remote}"
        self.last_used = socket.clock.seconds()

    @property
    def connected(self) -> bool:
        return self._socket.listening

    def send_message(self, message: Message) -> None:
        self.send_bytes(message.serialize())

    def send_bytes(self, data: bytes) -> None:
        if not self._socket.listening:
            raise ConnectionLost(f"UDP socket {self.local} is closed")
        self.last_used = self._socket.clock.seconds()
        try:
            self._socket.transport.write(data, (self.remote.host, self.remote.port))
        except (OSError, MessageLengthError, InvalidAddressError, OverflowError, ValueError) as error:
            # RFC 3261 §18.4: a send failure is a transport error for the transaction layer
            # (§17.1.4, §17.2.4).  Besides socket errors: an address of the other family than
            # this socket's (an IPv6 target with only an IPv4 listener) or not an IP address
            # at all (InvalidAddressError), a port out of range (OverflowError).
            raise ConnectionLost(f"UDP send to {self.remote} failed: {error}") from error

    def close(self) -> None:
        self._socket.forget(self)

    def __repr__(self) -> str:
        return f"<UdpConnection {self.local} -> {self.remote}>"


class UdpTransport(DatagramProtocol):
    """One UDP listener: datagrams in → messages to the sink; one UdpConnection per peer."""

    noisy = False  # the node logs its listeners in one line; no "Starting protocol" per socket

    def __init__(self, clock: IReactorTime, sink: MessageSink, settings: TransportSettings) -> None:
        self.clock = clock
        self._sink = sink
        self._settings = settings
        self._peers: dict[Address, UdpConnection] = {}
        self.listening = False
        self.local = Address("0.0.0.0", 0)
        self._sweep: Any = None

    def use_settings(self, settings: TransportSettings) -> None:
        """Parse the next datagrams with ``settings`` (a reload; see ``TransportManager.update_settings``)."""
        self._settings = settings

    def startProtocol(self) -> None:
        host = self.transport.getHost()
        self.local = Address(host.host, host.port)
        socket = getattr(self.transport, "socket", None)
        if socket is not None and self._settings.udp_receive_buffer:
            # A bigger kernel buffer rides out bursts instead of dropping datagrams (the
            # kernel caps it at net.core.rmem_max).
            socket.setsockopt(SOL_SOCKET, SO_RCVBUF, self._settings.udp_receive_buffer)
        self.listening = True
        self._schedule_sweep()

    def stopProtocol(self) -> None:
        self.listening = False
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None

    def connection_to(self, remote: Address) -> UdpConnection:
        connection = self._peers.get(remote)
        if connection is None:
            connection = self._peers[remote] = UdpConnection(self, remote)
        return connection

    def forget(self, connection: UdpConnection) -> None:
        if self._peers.get(connection.remote) is connection:
            del self._peers[connection.remote]

    def peer_count(self) -> int:
        return len(self._peers)

    def _schedule_sweep(self) -> None:
        self._sweep = self.clock.callLater(self._settings.udp_idle_timeout / 2, self._expire_idle_peers)

    def _expire_idle_peers(self) -> None:
        deadline = self.clock.seconds() - self._settings.udp_idle_timeout
        for remote, connection in list(self._peers.items()):
            if connection.last_used <= deadline:
                del self._peers[remote]
        self._schedule_sweep()

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        source = Address(addr[0], addr[1])
        if data[:1] in (b"\r", b"\n", b"\x00", b" ", b"") and not data.strip(b"\r\n\x00 "):
            return  # RFC 5626 §3.5.1 / common practice: CRLF keep-alive datagrams carry no message
        try:
            message = parse_message(data, self._settings.limits)
        except SipParseError as error:
            # RFC 3261 §18.3 / §16.3 step 1: answer a request we can answer, drop the rest.
            log.info("malformed datagram from {source}: {error}", source=source, error=error)
            reply = error_response_for(error)
            if reply is not None:
                try:
                    self.connection_to(source).send_message(reply)
                except ConnectionLost as lost:
                    log.info("no answer to {source}: {why}", source=source, why=lost)
            return
        connection = self.connection_to(self._reply_address(message, source))
        connection.last_used = self.clock.seconds()
        self._sink(message, connection)

    @staticmethod
    def _reply_address(message: Message, source: Address) -> Address:
        """RFC 3261 §18.2.2 / RFC 3581 §4: responses go to the source address; to the Via
        sent-by port only when the client did not ask for rport."""
        if not isinstance(message, Request):
            return source
        raw = message.headers.get("via") or ""
        if "rport" in raw.split(",", 1)[0].lower():
            return source  # the common case, decided without parsing the Via
        try:
            via = top_via(message)
        except Exception:
            return source
        if via is None or "rport" in via.params:
            return source
        return Address(source.host, via.port or DEFAULT_PORTS["UDP"])


# --- TCP / TLS -------------------------------------------------------------------------------


class StreamConnection:
    """The SIP ``Connection`` for one TCP or TLS connection (its bytes: ``SipStreamProtocol``)."""

    reliable = True

    def __init__(self, manager: "TransportManager", transport: str, outbound: bool) -> None:
        self._manager = manager
        self.transport = transport
        self.outbound = outbound
        self.id = f"{transport.lower()}:{next(_ids)}"
        self.local = Address("0.0.0.0", 0)
        self.remote = Address("0.0.0.0", 0)
        self.protocol = SipStreamProtocol(self)
        self._open = False
        self._idle_timer: Any = None
        #: fires with self once the connection can carry messages (after the TLS handshake)
        self.ready: defer.Deferred = defer.Deferred()
        #: fires (with None) once the connection is gone
        self.closed: defer.Deferred = defer.Deferred()

    @property
    def connected(self) -> bool:
        return self._open

    def send_message(self, message: Message) -> None:
        if not self._open:
            if isinstance(message, Response):
                # RFC 3261 §18.2.2: the connection is gone; open one to the Via sent-by.
                self._manager.send_response_elsewhere(message, self.transport)
                return
            raise ConnectionLost(f"{self.transport} connection to {self.remote} is closed")
        self._touch()
        write_now(self.protocol.transport, message.serialize())  # TLS and backlogs: Twisted's write

    def close(self) -> None:
        if self._open:
            self._open = False
            self.protocol.transport.loseConnection()

    # events from the protocol
    def _made(self, peer: Address, host: Address) -> None:
        self.remote, self.local = peer, host
        self._open = True
        self._manager._connections.add(self)
        self._touch()
        if self.transport != "TLS":
            self.ready.callback(self)

    def _handshake_done(self) -> None:
        if not self.ready.called:
            self.ready.callback(self)

    def _received(self, events: list[Any]) -> None:
        self._touch()
        for event in events:
            if not self._open:
                return
            if isinstance(event, MessageFramed):
                self._manager.deliver(event.message, self)
            elif isinstance(event, KeepAlivePing):
                # RFC 5626 §3.5.1: a CRLFCRLF ping is answered with a CRLF pong.
                self.protocol.transport.write(b"\r\n")
            elif isinstance(event, FramingError):
                self._framing_error(event)

    def _framing_error(self, event: FramingError) -> None:
        log.info("framing error from {peer}: {error}", peer=self.remote, error=event.error)
        reply = error_response_for(event.error)
        if reply is not None:
            self.protocol.transport.write(reply.serialize())
        if event.fatal:
            # RFC 3261 §18.3: without a usable Content-Length the stream cannot be re-synchronised.
            self._open = False
            self.protocol.transport.loseConnection()

    def _lost(self, reason: Failure) -> None:
        self._open = False
        self._cancel_idle()
        self._manager._connections.remove(self)
        if not self.ready.called:
            if not self.outbound:
                # An inbound TLS handshake failed (a client offering only TLS 1.1, or not
                # trusting our certificate): the peer's problem, one line, and nobody waits
                # on ``ready`` of an inbound connection.
                log.info(
                    "TLS handshake with {peer} failed: {error}", peer=self.remote, error=describe_tls_error(reason.value)
                )
                self.ready.addErrback(lambda _: None)
            self.ready.errback(reason)
        if not self.closed.called:
            self.closed.callback(None)

    # idle timeout (clock-driven)
    def _touch(self) -> None:
        timeout = self._manager.settings.idle_timeout
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.reset(timeout)
        else:
            self._idle_timer = self._manager.clock.callLater(timeout, self._idle_expired)

    def _cancel_idle(self) -> None:
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None

    def _idle_expired(self) -> None:
        log.info("closing idle {transport} connection to {peer}", transport=self.transport, peer=self.remote)
        self.close()

    def __repr__(self) -> str:
        return f"<StreamConnection {self.transport} {self.local} -> {self.remote} open={self._open}>"


@implementer(IHandshakeListener)
class SipStreamProtocol(Protocol):
    """Bytes of one TCP/TLS connection → ``StreamFramer`` → its ``StreamConnection``."""

    def __init__(self, connection: StreamConnection) -> None:
        self.connection = connection
        self._framer = StreamFramer(connection._manager.settings.limits)

    def connectionMade(self) -> None:
        peer, host = self.transport.getPeer(), self.transport.getHost()
        self.connection._made(Address(peer.host, peer.port), Address(host.host, host.port))

    def handshakeCompleted(self) -> None:
        self.connection._handshake_done()

    def dataReceived(self, data: bytes) -> None:
        self.connection._received(self._framer.feed(data))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.connection._lost(reason if reason is not None else Failure(ConnectionLost("closed")))


class _StreamFactory(Factory):
    noisy = False  # no "Starting factory" line per listener

    def __init__(self, manager: "TransportManager", transport: str) -> None:
        self._manager = manager
        self._transport = transport

    def buildProtocol(self, addr: Any) -> SipStreamProtocol:
        return StreamConnection(self._manager, self._transport, outbound=False).protocol


class _OutboundFactory(Factory):
    """``endpoints.connectProtocol`` without its "Starting factory" line per connection."""

    noisy = False

    def __init__(self, protocol: SipStreamProtocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> SipStreamProtocol:
        return self._protocol


# --- the manager -----------------------------------------------------------------------------


class TransportManager:
    """Listeners, the connection table and outbound connections for UDP/TCP/TLS."""

    def __init__(
        self, reactor: Any, sink: MessageSink, settings: TransportSettings | None = None, *, clock: IReactorTime | None = None
    ) -> None:
        self.reactor = reactor
        #: drives idle timeouts (tests pass a ``task.Clock``)
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.sink = sink
        self.settings = settings or TransportSettings()
        self._connections = _Connections()
        self._udp: list[UdpTransport] = []
        self._ports: list[Any] = []
        self._pending: dict[Target, list[defer.Deferred]] = {}
        self._connecting: set[defer.Deferred] = set()  # outbound connects not yet established
        #: RFC 3261 §18.1.1 fallback: UDP next hops that could not be reached over TCP, until when
        self._udp_only: dict[Address, float] = {}
        self._server_tls: Any = None
        #: (transport, local address) of each listener, in the order they were started
        self.listening: list[tuple[str, Address]] = []

    def update_settings(self, settings: TransportSettings) -> None:
        """A configuration reload: new TCP/TLS connections and every running UDP listener
        parse with the new settings (limits); connections already open keep theirs."""
        self.settings = settings
        for udp in self._udp:
            udp.use_settings(settings)

    # listeners
    def listen(self, spec: "str | ListenerSpec | Any", fd: int | None = None) -> Address:
        """Start one listener; returns the bound address (useful with port 0).

        ``fd``: a socket already bound (and, for TCP/TLS, listening) for ``spec`` that this
        process inherited, adopted instead of binding anew.  A parent that keeps its own copy
        keeps the port open while this process is replaced: datagrams and connections that
        arrive meanwhile wait in the kernel for the next process instead of being refused.
        """
        listener = ListenerSpec.of(spec)
        family = AF_INET6 if ":" in listener.host else AF_INET
        if listener.transport == "UDP":
            protocol = UdpTransport(self.clock, self.deliver, self.settings)
            if fd is None:
                port = self.reactor.listenUDP(listener.port, protocol, interface=listener.host)
            else:
                port = self.reactor.adoptDatagramPort(fd, family, protocol)
            self._udp.append(protocol)
        elif listener.transport in ("TCP", "TLS"):
            factory: Any = _StreamFactory(self, listener.transport)
            if fd is not None:
                if listener.transport == "TLS":
                    # What listenSSL does: TLS in memory over a plain TCP port.
                    factory = TLSMemoryBIOFactory(self._server_tls_options(), False, factory)
                port = self.reactor.adoptStreamPort(fd, family, factory)
            elif listener.transport == "TCP":
                port = self.reactor.listenTCP(listener.port, factory, interface=listener.host)
            else:
                port = self.reactor.listenSSL(listener.port, factory, self._server_tls_options(), interface=listener.host)
        else:
            raise ValueError(f"unknown transport {listener.transport!r}")
        self._ports.append(port)
        host = port.getHost()
        bound = Address(host.host, host.port)
        self.listening.append((listener.transport, bound))
        return bound

    def listen_all(self, specs: Iterable["str | ListenerSpec | Any"]) -> list[Address]:
        return [self.listen(spec) for spec in specs]

    def _server_tls_options(self) -> Any:
        if self._server_tls is None:
            if not (self.settings.tls_certificate and self.settings.tls_private_key):
                raise ValueError("a tls listener needs tls_certificate and tls_private_key")
            # SIP has no ALPN identifier: offers are ignored, never fatal (see epcscf.sip.tls).
            self._server_tls = server_tls_from_files(self.settings.tls_certificate, self.settings.tls_private_key)
        return self._server_tls

    def local_address(self, transport: str) -> Address | None:
        """The first listener's address for ``transport`` (what goes in Via/Record-Route)."""
        for name, address in self.listening:
            if name == transport.upper():
                return address
        return None

    # inbound
    def deliver(self, message: Message, connection: Connection) -> None:
        try:
            self.sink(message, connection)
        except Exception:
            # A bug above us must not kill the connection of the peer that triggered it.
            log.failure("sink failed for a message from {peer}", peer=connection.remote)

    # outbound
    def connection_for(self, target: Target) -> Connection | None:
        """An open connection usable for ``target`` without connecting, if any."""
        if target.transport == "UDP":
            return self._udp_socket(target.host).connection_to(target.address) if self._udp else None
        return self._connections.find(target.transport, target.address)

    def connect(self, target: Target) -> defer.Deferred:
        """Deferred[Connection] toward ``target``: reuse an open one or open a new one."""
        transport = target.transport.upper()
        if transport == "UDP":
            if not self._udp:
                return defer.fail(ConnectionLost("no UDP listener to send from"))
            return defer.succeed(self._udp_socket(target.host).connection_to(target.address))
        existing = self._connections.find(transport, target.address)
        if existing is not None:
            return defer.succeed(existing)
        if target in self._pending:
            return self._waiter(target)
        if transport not in ("TCP", "TLS"):
            return defer.fail(ValueError(f"unknown transport {target.transport!r}"))
        endpoint: Any = endpoints.HostnameEndpoint(
            self.reactor, target.host, target.port, timeout=self.settings.connect_timeout
        )
        if transport == "TLS":
            # Outbound TLS verifies the peer's certificate against the name (service_identity).
            options = ssl.optionsForClientTLS(
                target.tls_server_name or target.host, trustRoot=self.settings.tls_trust_root
            )
            endpoint = endpoints.wrapClientTLS(options, endpoint)
        connection = StreamConnection(self, transport, outbound=True)
        self._pending[target] = []

        def finished(outcome: Any) -> None:
            for waiter in self._pending.pop(target, []):
                if isinstance(outcome, Failure):
                    waiter.errback(outcome)
                else:
                    waiter.callback(outcome)

        connecting = endpoint.connect(_OutboundFactory(connection.protocol))
        self._connecting.add(connecting)
        connecting.addBoth(lambda outcome: (self._connecting.discard(connecting), outcome)[1])
        connecting.addCallback(lambda _: connection.ready).addBoth(finished)
        return self._waiter(target)

    def connect_for_request(self, target: Target, size: int) -> defer.Deferred:
        """``connect(target)`` for a request of ``size`` bytes, with RFC 3261 §18.1.1: a request
        too large for UDP goes over TCP to the same address, and over UDP only if that TCP
        connection cannot be made (the RFC's own fallback).  The caller writes its Via for
        the transport of the connection it gets."""
        stream = congestion_controlled_target(target, size)
        if stream is None or self._udp_only.get(target.address, 0.0) > self.clock.seconds():
            return self.connect(target)

        def fall_back(failure: Failure) -> defer.Deferred | Failure:
            if failure.check(defer.CancelledError):
                return failure  # shutting down: no fallback
            log.info(
                "no TCP connection to {host}:{port} for a {size}-byte request ({why}): sending it over UDP"
                " (and large requests to it for {memory:.0f} s)",
                host=target.host, port=target.port, size=size, why=failure.value, memory=UDP_ONLY_MEMORY,
            )
            # A next hop without TCP (or behind a firewall that drops the SYN) would cost every
            # large request a connect attempt, up to connect_timeout each: remember it a while.
            now = self.clock.seconds()
            self._udp_only = {address: until for address, until in self._udp_only.items() if until > now}
            self._udp_only[target.address] = now + UDP_ONLY_MEMORY
            return self.connect(target)

        return self.connect(stream).addErrback(fall_back)

    def _waiter(self, target: Target) -> defer.Deferred:
        waiter: defer.Deferred = defer.Deferred()
        self._pending[target].append(waiter)
        return waiter

    def _udp_socket(self, host: str) -> UdpTransport:
        """The UDP listener to send from: the first of the destination's address family."""
        want_v6 = ":" in host
        for socket in self._udp:
            if (":" in socket.local.host) == want_v6:
                return socket
        return self._udp[0]

    def send_response_elsewhere(self, response: Response, transport: str) -> None:
        """RFC 3261 §18.2.2: the request's connection is gone; connect to the top Via's
        received (or sent-by) address and rport (or sent-by port) and send there."""
        try:
            via = top_via(response)
        except Exception:
            via = None
        if via is None:
            log.info("dropping a response with no usable Via: its connection is gone")
            return
        host = via.params.get("received") or via.host
        rport = via.params.get("rport")
        port = int(rport) if rport and str(rport).isdigit() else (via.port or DEFAULT_PORTS.get(transport, 5060))
        target = Target(transport, host, port, tls_server_name=via.host)

        def send(connection: Connection) -> None:
            connection.send_message(response)

        def failed(failure: Failure) -> None:
            log.info("could not deliver a response to {host}:{port}: {why}", host=host, port=port, why=failure.value)

        # failed() also sees a send that fails on the new connection: nothing is left unhandled.
        self.connect(target).addCallback(send).addErrback(failed)

    def stream_connections(self) -> list[StreamConnection]:
        return list(self._connections.all)

    def close(self) -> defer.Deferred:
        """Stop every listener and close every connection."""
        waits = [defer.maybeDeferred(port.stopListening) for port in self._ports]
        self._ports.clear()
        for connecting in list(self._connecting):
            connecting.cancel()  # the waiters get a CancelledError
        for connection in list(self._connections.all):
            waits.append(connection.closed)
            connection.ready.addErrback(lambda _: None)
            connection.protocol.transport.loseConnection()
        for socket in self._udp:
            socket._peers.clear()
        return defer.DeferredList(waits, consumeErrors=True)
