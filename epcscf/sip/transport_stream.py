"""SIP over TCP and TLS (RFC 3261 §18): one ``StreamConnection`` per connection, its bytes
moved by a ``SipStreamProtocol``.

``StreamFramer`` handles partial reads, several messages per read and RFC 5626 §3.5.1
CRLFCRLF keep-alives (answered with CRLF); a framing error is answered (400 for a missing
Content-Length, RFC 3261 §18.3) and, when fatal, the connection is closed.  Errors only ever
affect the peer that caused them.  A connection belongs to a ``StreamOwner`` (the
``TransportManager``): its connection table, settings, clock and sink.
"""

from __future__ import annotations

import itertools
from typing import Any, Protocol as TypingProtocol

from twisted.internet import defer
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from epcscf.sip.connection import Address, Connection, ConnectionLost
from epcscf.sip.message import Message, Response
from epcscf.sip.parser import FramingError, KeepAlivePing, MessageFramed, StreamFramer, error_response_for
from epcscf.sip.tcp_write import write_now
from epcscf.sip.tls import describe_tls_error
from epcscf.sip.transport_specs import TransportSettings

log = Logger(namespace="epcscf.sip.transport")


class ConnectionTable:
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


class StreamOwner(TypingProtocol):
    """What a stream connection asks of whoever opened or accepted it (``TransportManager``)."""

    settings: TransportSettings
    clock: IReactorTime
    connection_table: ConnectionTable

    def deliver(self, message: Message, connection: Connection) -> None: ...

    def send_response_elsewhere(self, response: Response, transport: str) -> None: ...


_ids = itertools.count(1)


class StreamConnection:
    """The SIP ``Connection`` for one TCP or TLS connection (its bytes: ``SipStreamProtocol``)."""

    reliable = True

    def __init__(self, manager: StreamOwner, transport: str, outbound: bool) -> None:
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
        self._manager.connection_table.add(self)
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
        self._manager.connection_table.remove(self)
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
        if self.ready.called:
            # ``ready`` fired with this connection: once gone it need not keep it (a cycle that
            # only the cyclic collector would free, per closed connection).
            self.ready.addCallback(lambda _: None)

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
        connection = self.connection
        # Nothing reaches this protocol after its connection is lost (Twisted drops the transport's
        # reference as well): the back-reference would only make the pair a cycle.
        del self.connection
        connection._lost(reason if reason is not None else Failure(ConnectionLost("closed")))


class StreamFactory(Factory):
    noisy = False  # no "Starting factory" line per listener

    def __init__(self, manager: StreamOwner, transport: str) -> None:
        self._manager = manager
        self._transport = transport

    def buildProtocol(self, addr: Any) -> SipStreamProtocol:
        return StreamConnection(self._manager, self._transport, outbound=False).protocol


class OutboundFactory(Factory):
    """``endpoints.connectProtocol`` without its "Starting factory" line per connection."""

    noisy = False

    def __init__(self, protocol: SipStreamProtocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> SipStreamProtocol:
        return self._protocol

