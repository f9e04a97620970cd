"""The core-facing leg of the relay: an RTP/RTCP port pair, the core's addresses, latching.

RFC 3550 §11: RTP on an even port, RTCP on the next (odd) one.  The pair comes from the shared
`[media] port_range` pool (`epcscf.ice.ports.UdpPortPool`, the same pool the ICE agents use);
without a pool (tests) an ephemeral even/odd pair is searched.  Sockets are bound with the
`socket` module first (so a failed pair costs no reactor round trip); under the asyncio reactor
they are read straight from its event loop (the lean path), otherwise through Twisted UDP ports.
On the lean path, with a `SocketShelf`, a closed pair is parked (still bound and read, into a
sink) and a later call takes it instead of binding: the call gets new readers' callbacks and
nothing else of the old call (`epcscf.ice.shelf` for the quarantine).

Toward the core media is plain RTP/AVP (TS 23.334 §5.20).  Where to send: the address of
the core's SDP (`MediaSession.set_core_remote`), or, with latching on (TS 23.334 latching,
RFC 4961 symmetric RTP), the source of the first packet received from the core on each
socket; once latched, packets from other sources are dropped (they would otherwise let anyone
inject media into the call).
With latching off, media goes to the SDP address and is accepted from any source.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IListeningPort, IReactorSocket
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from epcscf.ice.ports import PortsExhausted, UdpPortPool
from epcscf.ice.shelf import SocketShelf

Address = tuple[str, int]

log = Logger()

# How many pairs we try when binding fails (another process holds a port of the range).
BIND_ATTEMPTS = 16

# Room for bursts (video key frames; a busy relay process): 1 MiB, like the ICE sockets.
RECEIVE_BUFFER_SIZE = 1024 * 1024

# RTP over UDP never exceeds the path MTU in practice; jumbo loopback tests stay below this.
MAX_PACKET_SIZE = 65535

# Datagrams read from one socket per wakeup before the loop serves the others.
READ_BATCH = 64

# The shelf key of core-side RTP/RTCP pairs, with the bind address.
SHELF_KIND = "core-rtp"


def _drop(data: bytes, source: Address) -> None:
    """A parked socket's reader: the tail of the call that closed it is dropped."""


class MediaError(Exception):
    """A media operation that cannot be done; str() says why in words a user can act on."""


class CoreSocket(DatagramProtocol):
    """Hands every datagram of one core-side socket to a callable (the session's hot path)."""

    noisy = False  # two sockets per call: no "Starting protocol" lines

    def __init__(self, on_datagram: Callable[[bytes, Address], None]) -> None:
        self.on_datagram = on_datagram

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:  # noqa: N802 (Twisted API)
        self.on_datagram(datagram, addr)


@dataclass(frozen=True)
class CoreRemote:
    """Where the core wants its media (its SDP c=/m= and a=rtcp / a=rtcp-mux)."""

    rtp: Address
    rtcp: Address
    rtcp_mux: bool


@functools.lru_cache(maxsize=1024)  # a few core media addresses, read at every offer/answer
def parse_ip(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        raise MediaError(f"core media address {host!r} is not an IP address") from None


@functools.lru_cache(maxsize=1024)
def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET


def _bind(family: socket.AddressFamily, address: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_SIZE)
        sock.bind((address, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def bind_rtp_pair(address: str, pool: UdpPortPool | None) -> tuple[socket.socket, socket.socket, bool]:
    """Two bound sockets: RTP on an even port, RTCP on the next (RFC 3550 §11).

    Returns (rtp, rtcp, from_pool).  Raises PortsExhausted when the pool is empty and
    MediaError when no pair could be bound.
    """
    family = _family(address)
    last_error: OSError | None = None
    for _ in range(BIND_ATTEMPTS):
        if pool is not None:
            rtp_port, rtcp_port = pool.allocate_pair()
            try:
                rtp = _bind(family, address, rtp_port)
            except OSError as error:
                pool.release(rtp_port, rtcp_port)
                last_error = error
                continue
        else:
            rtp = _bind(family, address, 0)
            rtp_port = rtp.getsockname()[1]
            rtcp_port = rtp_port + 1
            if rtp_port % 2 or rtcp_port > 65535:
                rtp.close()
                continue
        try:
            rtcp = _bind(family, address, rtcp_port)
        except OSError as error:
            rtp.close()
            if pool is not None:
                pool.release(rtp_port, rtcp_port)
            last_error = error
            continue
        return rtp, rtcp, pool is not None
    if pool is not None and pool.free_count < 2:
        raise PortsExhausted(f"no free UDP port pair left in {pool.low}-{pool.high}")
    raise MediaError(f"could not bind an RTP/RTCP port pair on {address}: {last_error or 'no even port found'}")


class _LoopReader:
    """Reads one UDP socket straight from the asyncio loop of the asyncio reactor.

    The hot path: Twisted's `udp.Port` costs a logging context and a method chain per wakeup;
    this hands each datagram to the session with nothing in between."""

    __slots__ = ("_loop", "_sock", "_fd", "_on_datagram")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, on_datagram: Callable[[bytes, Address], None]) -> None:
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._on_datagram = on_datagram
        loop.add_reader(self._fd, self._readable)

    def retarget(self, on_datagram: Callable[[bytes, Address], None]) -> None:
        """Hand what this socket reads to someone else (parking, or the next call)."""
        self._on_datagram = on_datagram

    def _readable(self) -> None:
        recvfrom = self._sock.recvfrom
        on_datagram = self._on_datagram
        # Bounded batch: one flooded socket must not starve the others.
        for _ in range(READ_BATCH):
            try:
                data, source = recvfrom(MAX_PACKET_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # ECONNREFUSED from an ICMP error of an earlier send: nothing to read
            try:
                on_datagram(data, source[:2])
            except Exception:
                log.failure("media: handling a core-side datagram")

    def close(self) -> None:
        if self._fd != -1:
            self._loop.remove_reader(self._fd)
            self._fd = -1
            self._sock.close()


class _TwistedReader:
    """The same for a reactor that is not the asyncio one (a Twisted UDP port adopted)."""

    def __init__(self, reactor: IReactorSocket, sock: socket.socket, on_datagram: Callable[[bytes, Address], None]) -> None:
        # adoptDatagramPort duplicates the descriptor; ours is closed right after.
        self._port: IListeningPort = reactor.adoptDatagramPort(sock.fileno(), sock.family, CoreSocket(on_datagram), MAX_PACKET_SIZE)
        sock.close()
        self._stopped: Deferred[None] | None = None

    @property
    def sendto(self) -> Callable[[bytes, Address], int]:
        return self._port.socket.sendto  # type: ignore[attr-defined,no-any-return]

    def close(self) -> Deferred[None] | None:
        if self._stopped is None:
            self._stopped = self._port.stopListening()  # type: ignore[assignment]
        return self._stopped


class _ParkedPair:
    """A core-side RTP/RTCP pair between calls (`SocketShelf` item)."""

    __slots__ = ("rtp", "rtcp", "readers", "ports")

    def __init__(self, sockets: tuple[socket.socket, socket.socket], readers: tuple[_LoopReader, _LoopReader], ports: tuple[int, int]) -> None:
        self.rtp, self.rtcp = sockets
        self.readers = readers
        self.ports = ports

    def close(self) -> None:
        for reader in self.readers:
            reader.close()


class CorePorts:
    """The bound RTP and RTCP sockets of one media stream toward the core."""

    rtp_port: int
    rtcp_port: int
    send_rtp: Callable[[bytes, Address], int]
    send_rtcp: Callable[[bytes, Address], int]

    def __init__(
        self,
        reactor: IReactorSocket,
        address: str,
        pool: UdpPortPool | None,
        on_rtp: Callable[[bytes, Address], None],
        on_rtcp: Callable[[bytes, Address], None],
        shelf: SocketShelf | None = None,
    ) -> None:
        self.address = parse_ip(address)
        self._pool = pool
        loop = getattr(reactor, "_asyncioEventloop", None)
        # Parking needs the loop's readers (retargetable) and pool ports (to keep them out of it).
        self._shelf = shelf if pool is not None and isinstance(loop, asyncio.AbstractEventLoop) else None
        self._closed: Deferred[None] | None = None
        self._readers: tuple[_LoopReader | _TwistedReader, _LoopReader | _TwistedReader]
        parked = self._shelf.take((SHELF_KIND, self.address)) if self._shelf is not None else None
        if isinstance(parked, _ParkedPair):
            self.rtp_port, self.rtcp_port = parked.ports
            self._from_pool = True
            self._sockets = (parked.rtp, parked.rtcp)
            self.send_rtp, self.send_rtcp = parked.rtp.sendto, parked.rtcp.sendto
            parked.readers[0].retarget(on_rtp)
            parked.readers[1].retarget(on_rtcp)
            self._readers = parked.readers
            return
        rtp_sock, rtcp_sock, from_pool = bind_rtp_pair(self.address, pool)
        self._sockets = (rtp_sock, rtcp_sock)
        self.rtp_port = rtp_sock.getsockname()[1]
        self.rtcp_port = rtcp_sock.getsockname()[1]
        self._from_pool = from_pool
        if isinstance(loop, asyncio.AbstractEventLoop):
            # The hot path writes with the socket's own sendto: Port.write re-validates the
            # address on every packet, which set_remote has already done once.
            self.send_rtp = rtp_sock.sendto
            self.send_rtcp = rtcp_sock.sendto
            self._readers = (_LoopReader(loop, rtp_sock, on_rtp), _LoopReader(loop, rtcp_sock, on_rtcp))
        else:
            rtp_reader = _TwistedReader(reactor, rtp_sock, on_rtp)
            rtcp_reader = _TwistedReader(reactor, rtcp_sock, on_rtcp)
            self.send_rtp, self.send_rtcp = rtp_reader.sendto, rtcp_reader.sendto
            self._readers = (rtp_reader, rtcp_reader)

    def close(self) -> Deferred[None]:
        """Close both sockets; the Deferred fires when they are closed and the ports are back
        in the pool (idempotent: later calls get a Deferred for the same moment)."""
        if self._closed is None and self._park():
            self._closed = succeed(None)
        if self._closed is None:
            stopping = [d for d in (reader.close() for reader in self._readers) if d is not None]
            closed: Deferred[None] = DeferredList(stopping, consumeErrors=True).addCallback(self._release)
            self._closed = closed
        result: Deferred[None] = Deferred()
        self._closed.addBoth(lambda outcome: (result.callback(None), outcome)[1])
        return result

    def _park(self) -> bool:
        readers = self._readers
        if self._shelf is None or not (isinstance(readers[0], _LoopReader) and isinstance(readers[1], _LoopReader)):
            return False
        if not self._shelf.park((SHELF_KIND, self.address), _ParkedPair(self._sockets, (readers[0], readers[1]), (self.rtp_port, self.rtcp_port))):
            return False
        for reader in readers:
            reader.retarget(_drop)
        return True

    def _release(self, _: object) -> None:
        if self._pool is not None and self._from_pool:
            self._pool.release(self.rtp_port, self.rtcp_port)
