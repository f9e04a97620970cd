"""SIP over UDP (RFC 3261 §18): one ``UdpTransport`` per listening socket, a cheap
``UdpConnection`` per remote address.

A ``UdpConnection`` is cached while in use and forgotten after ``udp_idle_timeout``.  A
datagram that does not parse is answered with the parser's error response when one can be
built (RFC 3261 §18.3 / §16.3 step 1) and is otherwise dropped.  RFC 3261 §18.1.1: a request
too large for UDP (``UDP_REQUEST_LIMIT``) goes over TCP to the same address instead
(``congestion_controlled_target``; the fallback lives in ``TransportManager.connect_for_request``).
"""

from __future__ import annotations

import select
from errno import ECONNREFUSED, EMSGSIZE
from socket import AF_INET, AF_INET6, SO_RCVBUF, SOL_SOCKET
from typing import Any, Callable

from twisted.internet import udp
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.error import InvalidAddressError, MessageLengthError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from epcscf.sip.connection import Address, ConnectionLost
from epcscf.sip.headers import top_via
from epcscf.sip.message import Message, Request
from epcscf.sip.parser import SipParseError, error_response_for, parse_message
from epcscf.sip.replay import StatelessReplays
from epcscf.sip.resolver import DEFAULT_PORTS, Target
from epcscf.sip.transport_specs import MessageSink, TransportSettings

log = Logger(namespace="epcscf.sip.transport")

# RFC 3261 §18.1.1: a request within 200 bytes of the path MTU goes over a congestion-controlled
# transport; with the MTU unknown (always, here) that is a request larger than 1300 bytes.
UDP_REQUEST_LIMIT = 1300
#: at most this many source addresses keep their ``Address`` between idle sweeps
_SOURCES_KEPT = 4096
#: how long a next hop that refused TCP gets its large requests over UDP without a new try
UDP_ONLY_MEMORY = 300.0


def congestion_controlled_target(target: Target, size: int) -> Target | None:
    """RFC 3261 §18.1.1: the TCP target (same address) to use instead of a UDP ``target`` for a
    request of ``size`` bytes, or None when the request may go as the resolver chose."""
    if size <= UDP_REQUEST_LIMIT or target.transport.upper() != "UDP":
        return None
    return Target("TCP", target.host, target.port)


def _writable(host: str, family: int) -> bool:
    """Whether Twisted's ``Port.write`` would send to ``host`` from a socket of ``family``
    (rather than raise ``InvalidAddressError``)."""
    if family == AF_INET:
        return isIPAddress(host)
    return family == AF_INET6 and isIPv6Address(host)


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
        self._to = (remote.host, remote.port)
        # What Twisted's ``Port.write`` checks on every datagram (an IP address of the
        # socket's family), checked once: the remote never changes.
        self._sendto = socket.sendto if _writable(remote.host, socket.family) else None

    @property
    def connected(self) -> bool:
        return self._socket.listening

    def send_message(self, message: Message) -> None:
        self.send_bytes(message.serialize())

    def send_bytes(self, data: bytes) -> None:
        if not self._socket.listening:
            raise ConnectionLost(f"UDP socket {self.local} is closed")
        self.last_used = self._socket.clock.seconds()
        sendto = self._sendto
        try:
            if sendto is None:
                self._socket.transport.write(data, self._to)
            else:
                # Port.write's send without its per-datagram address checks (done in __init__);
                # its error handling kept: PEP 475 retries EINTR, a refusal is ignored.
                try:
                    sendto(data, self._to)
                except OSError as error:
                    if error.errno == ECONNREFUSED:
                        return
                    if error.errno == EMSGSIZE:
                        raise MessageLengthError("message too long") from error
                    raise
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
        #: the ``Address`` of each recent source address (a frozen dataclass is dear to make for
        #: every datagram); emptied with each idle sweep, and bounded like ``_peers`` in use
        self._sources: dict[tuple[str, int], Address] = {}
        self.listening = False
        self.local = Address("0.0.0.0", 0)
        self._sweep: Any = None
        #: the listening socket's ``sendto`` and address family when it is Twisted's UDP
        #: ``Port`` (what ``UdpConnection`` sends with); None: send through ``transport.write``
        self.sendto: Callable[[bytes, tuple[str, int]], int] | None = None
        self.family = AF_INET
        #: copies of statelessly forwarded messages, sent on unparsed (None: none kept)
        self.replays: StatelessReplays | None = None

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
        if socket is not None and isinstance(self.transport, udp.Port) and not self.transport._connectedAddr:
            self.sendto = socket.sendto
            self.family = self.transport.addressFamily
        self.listening = True
        self._schedule_sweep()

    def stopProtocol(self) -> None:
        self.listening = False
        self.sendto = None
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
        self._sources.clear()
        deadline = self.clock.seconds() - self._settings.udp_idle_timeout
        for remote, connection in list(self._peers.items()):
            if connection.last_used <= deadline:
                del self._peers[remote]
        self._schedule_sweep()

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        source = self._sources.get(addr)
        if source is None:
            source = Address(addr[0], addr[1])
            if len(self._sources) < _SOURCES_KEPT:
                self._sources[addr] = source
        if data[:1] in (b"\r", b"\n", b"\x00", b" ", b"") and not data.strip(b"\r\n\x00 "):
            return  # RFC 5626 §3.5.1 / common practice: CRLF keep-alive datagrams carry no message
        replays = self.replays
        if replays is not None and replays.replay(data, addr):
            return  # a copy of a 2xx or ACK forwarded statelessly: sent on as before (epcscf.sip.replay)
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
        if replays is None:
            self._sink(message, connection)
            return
        replays.receiving(data, addr)
        try:
            self._sink(message, connection)
        finally:
            replays.received()

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


class UdpPort(udp.Port):
    """Twisted's UDP port without the failing read that ends nearly every wake-up.

    ``udp.Port.doRead`` reads until ``recvfrom`` raises ``BlockingIOError`` (EAGAIN): one
    exception per reactor wake-up, ~9,000 instructions and ~4 µs with Twisted's handling,
    where the edge usually finds one datagram.  This port reads the first datagram, then asks
    ``poll`` with a zero timeout (a plain answer, ~1 µs) whether another waits, and only
    then hands over to Twisted's loop, which reads the rest up to the same ``maxThroughput``
    as before.  The same datagrams are read in the same order: a wake-up with one datagram
    costs less, one with several about 1 µs more.  (RFC-neutral: nothing a peer sees changes.)
    """

    _waiting: Any = None  # ``select.poll`` on this socket, made at the first read

    def doRead(self) -> None:  # noqa: N802 (Twisted's name)
        try:
            data, address = self.socket.recvfrom(self.maxPacketSize)
        except OSError:
            # Nothing to read after all, or an error: Twisted's handling of either (it reads
            # once more, which returns at once or meets the error as it would have).
            udp.Port.doRead(self)
            return
        if self.addressFamily == AF_INET6:
            address = address[:2]  # as Twisted: (host, port) without flow and scope ids
        try:
            self.protocol.datagramReceived(data, address)
        except BaseException:
            log.failure("UDP datagram from {address} not handled", address=address)
        waiting = self._waiting
        if waiting is None:
            waiting = self._waiting = select.poll()
            waiting.register(self.socket.fileno(), select.POLLIN)
        if self.connected and waiting.poll(0):
            udp.Port.doRead(self)


def listen_udp(reactor: Any, port: int, protocol: DatagramProtocol, interface: str) -> UdpPort:
    """What ``reactor.listenUDP`` does (Twisted's ``posixbase``), with a ``UdpPort``."""
    listening = UdpPort(port, protocol, interface, reactor=reactor)
    listening.startListening()
    return listening


def adopt_udp(reactor: Any, fd: int, family: int, protocol: DatagramProtocol) -> Any:
    """What ``reactor.adoptDatagramPort`` does (Twisted's ``posixbase``), with a ``UdpPort``."""
    if family not in (AF_INET, AF_INET6):
        return reactor.adoptDatagramPort(fd, family, protocol)  # raises UnsupportedAddressFamily
    listening = UdpPort._fromListeningDescriptor(reactor, fd, family, protocol, maxPacketSize=8192)
    listening.startListening()
    return listening
