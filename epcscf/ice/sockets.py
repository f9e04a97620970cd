"""What the full and lite back-ends share: binding host sockets, host candidates, the early
datagram buffer, and the small interface through which a back-end reports to its `IceAgent`.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections import deque
from collections.abc import Callable
from typing import Protocol, TypeVar

from aioice.candidate import Candidate, candidate_foundation, candidate_priority

from epcscf.ice.ports import PortsExhausted, UdpPortPool
from epcscf.ice.types import Address, IceError, SelectedPair

# aioice's value for SO_RCVBUF on its sockets; media bursts (video key frames) need room.
RECEIVE_BUFFER_SIZE = 1024 * 1024

# How many ports we try when binding fails because another process holds them.
BIND_ATTEMPTS = 16

# Datagrams that arrive from the peer before the pair is selected (a DTLS ClientHello racing
# the nominating check): kept, bounded, and delivered if they came on the pair then selected.
EARLY_DATAGRAMS = 16

# RFC 7983 §7: first byte 0..3 is STUN, everything else (DTLS 20..63, RTP/RTCP 128..191) is data.
def is_stun(data: bytes) -> bool:
    return len(data) > 0 and data[0] < 4


class BackendListener(Protocol):
    """What a back-end tells its agent.  All calls happen on the reactor thread."""

    def pair_selected(self, pair: SelectedPair) -> None: ...

    def checks_failed(self, reason: str) -> None: ...

    def datagram(self, data: bytes) -> None: ...

    def consent_evidence(self) -> None: ...

    def consent_revoked(self, reason: str) -> None: ...


P = TypeVar("P", bound=asyncio.BaseProtocol)


async def bind_udp(
    protocol_factory: Callable[[], P], address: str, pool: UdpPortPool | None
) -> tuple[asyncio.DatagramTransport, P, int | None]:
    """Bind a UDP socket on `address`, on a port from `pool` (ephemeral without a pool).

    Returns the transport, its protocol and the pool port to release when the socket closes.
    """
    loop = asyncio.get_running_loop()
    if pool is None:
        transport, protocol = await loop.create_datagram_endpoint(protocol_factory, local_addr=(address, 0))
        _enlarge_receive_buffer(transport)
        return transport, protocol, None
    last_error: OSError | None = None
    for _ in range(min(BIND_ATTEMPTS, pool.size)):
        port = pool.allocate()
        try:
            transport, protocol = await loop.create_datagram_endpoint(protocol_factory, local_addr=(address, port))
        except OSError as exc:
            # Held by another process: back to the end of the queue, try the next port.
            pool.release(port)
            last_error = exc
            continue
        _enlarge_receive_buffer(transport)
        return transport, protocol, port
    if pool.free_count == 0:
        raise PortsExhausted(f"no free UDP port left in {pool.low}-{pool.high}")
    raise IceError(f"could not bind a UDP port on {address} in {pool.low}-{pool.high}: {last_error}")


def _enlarge_receive_buffer(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_SIZE)
        except OSError:
            pass


def host_candidate(bound: Address, advertised_address: str | None, index: int) -> Candidate:
    """Our UDP host candidate (RFC 8445 §5.1.1.1) for component 1 only (rtcp-mux, RFC 5761).

    RFC 8445 §5.1.2.1: the type preference of a host is 126; the local preference separates the
    addresses of a multihomed host, so each configured address gets its own (first = highest).
    With a 1:1 NAT the advertised (public) address is written instead of the bound one.
    """
    written = advertised_address or bound[0]
    return HostCandidate(
        foundation=_host_foundation(bound[0]),
        component=1,
        transport="udp",
        priority=candidate_priority(1, "host", local_pref=65535 - index),
        host=written,
        port=bound[1],
        type="host",
    )


@functools.lru_cache(maxsize=64)  # our bind addresses: a few, from the configuration
def _host_foundation(address: str) -> str:
    # RFC 8445 §5.1.1.3: the same for every call on one address (aioice hashes it each time).
    return candidate_foundation("host", "udp", address)


@functools.lru_cache(maxsize=1024)  # bounded: remote candidate addresses come from peers
def _ip_version(host: str) -> int:
    return ipaddress.ip_address(host).version


class HostCandidate(Candidate):
    """Our host candidate, pairing as aioice's `Candidate.can_pair_with` does (RFC 8445
    §6.1.2.2: same component, transport and address family) without parsing both addresses
    with `ipaddress` for every pair it is asked about."""

    def can_pair_with(self, other: Candidate) -> bool:
        return (
            self.component == other.component
            and self.transport.lower() == other.transport.lower()
            and _ip_version(self._network_host) == _ip_version(other._network_host)
        )


class EarlyDatagrams:
    """A bounded buffer of (data, local socket, source) received before a pair was selected."""

    def __init__(self, limit: int = EARLY_DATAGRAMS) -> None:
        self._items: deque[tuple[bytes, object, Address]] = deque(maxlen=limit)
        self.dropped = 0

    def keep(self, data: bytes, local: object, source: Address) -> None:
        if len(self._items) == self._items.maxlen:
            self.dropped += 1
        self._items.append((data, local, source))

    def take_matching(self, local: object, source: Address) -> list[bytes]:
        matching = [data for data, sock, src in self._items if sock is local and src == source]
        self.dropped += len(self._items) - len(matching)
        self._items.clear()
        return matching

    def clear(self) -> None:
        self._items.clear()
