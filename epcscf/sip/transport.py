"""SIP over UDP, TCP and TLS (RFC 3261 §18): the ``TransportManager`` that owns them.

Theory of operation
-------------------
Every transport turns bytes into whole messages with ``epcscf.sip.parser`` and hands each
message, together with the ``Connection`` it arrived on, to one ``sink`` (the transaction
layer).  Nothing here reads a message beyond what framing and RFC 3261 §18 need.  One
module per concept:

* ``transport_specs``: what a transport is built from (``ListenerSpec``, ``TransportSettings``,
  the ``MessageSink``);
* ``transport_udp``: UDP (``UdpTransport`` per socket, ``UdpConnection`` per peer address) and
  the RFC 3261 §18.1.1 size rule;
* ``transport_stream``: TCP/TLS (``StreamConnection``, ``SipStreamProtocol``, the connection
  table);
* here, ``TransportManager``: owns the listeners (bound anew or adopted from an inherited
  socket) and the connection table (keyed by transport and remote address) so that requests
  toward a peer reuse an open connection; opens outbound TCP/TLS connections for
  ``connect(Target)``.  RFC 3261 §18.1.1: a request too large for UDP goes over TCP to the
  same address (``connect_for_request``), over UDP only when no TCP connection can be made
  (then for ``UDP_ONLY_MEMORY`` seconds without a new try); responses keep their transport
  (§18.2.2).  A response whose connection has gone is sent on a new connection to the Via
  sent-by (RFC 3261 §18.2.2).
"""

from __future__ import annotations

from socket import AF_INET, AF_INET6
from typing import Any, Iterable

from twisted.internet import defer, endpoints, ssl
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from epcscf.sip.connection import Address, Connection, ConnectionLost
from epcscf.sip.headers import top_via
from epcscf.sip.message import Message, Response
from epcscf.sip.replay import StatelessReplays
from epcscf.sip.resolver import DEFAULT_PORTS, Target
from epcscf.sip.tls import server_tls_from_files
from epcscf.sip.transport_specs import ListenerSpec, MessageSink, TransportSettings
from epcscf.sip.transport_stream import ConnectionTable, OutboundFactory, StreamConnection, StreamFactory
# UDP_REQUEST_LIMIT is imported from here by the proxy (epcscf.sip.proxy)
from epcscf.sip.transport_udp import (
    UDP_ONLY_MEMORY,
    UDP_REQUEST_LIMIT,
    UdpTransport,
    adopt_udp,
    congestion_controlled_target,
    listen_udp,
)

__all__ = ["TransportManager", "UDP_REQUEST_LIMIT"]

log = Logger()


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
        self.connection_table = ConnectionTable()
        self._udp: list[UdpTransport] = []
        self._ports: list[Any] = []
        self._pending: dict[Target, list[defer.Deferred]] = {}
        self._connecting: set[defer.Deferred] = set()  # outbound connects not yet established
        #: RFC 3261 §18.1.1 fallback: UDP next hops that could not be reached over TCP, until when
        self._udp_only: dict[Address, float] = {}
        self._server_tls: Any = None
        #: (transport, local address) of each listener, in the order they were started
        self.listening: list[tuple[str, Address]] = []
        #: given to each UDP listener started after it is set (``epcscf.sip.replay``; None: none)
        self.replays: StatelessReplays | None = None

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
            protocol.replays = self.replays
            if fd is None:
                port = listen_udp(self.reactor, listener.port, protocol, listener.host)
            else:
                port = adopt_udp(self.reactor, fd, family, protocol)
            self._udp.append(protocol)
        elif listener.transport in ("TCP", "TLS"):
            factory: Any = StreamFactory(self, listener.transport)
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
        return self.connection_table.find(target.transport, target.address)

    def connect(self, target: Target) -> defer.Deferred:
        """Deferred[Connection] toward ``target``: reuse an open one or open a new one."""
        transport = target.transport.upper()
        if transport == "UDP":
            if not self._udp:
                return defer.fail(ConnectionLost("no UDP listener to send from"))
            return defer.succeed(self._udp_socket(target.host).connection_to(target.address))
        existing = self.connection_table.find(transport, target.address)
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

        connecting = endpoint.connect(OutboundFactory(connection.protocol))
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
        return list(self.connection_table.all)

    def close(self) -> defer.Deferred:
        """Stop every listener and close every connection."""
        waits = [defer.maybeDeferred(port.stopListening) for port in self._ports]
        self._ports.clear()
        for connecting in list(self._connecting):
            connecting.cancel()  # the waiters get a CancelledError
        for connection in list(self.connection_table.all):
            waits.append(connection.closed)
            connection.ready.addErrback(lambda _: None)
            connection.protocol.transport.loseConnection()
        for socket in self._udp:
            socket._peers.clear()
        return defer.DeferredList(waits, consumeErrors=True)
