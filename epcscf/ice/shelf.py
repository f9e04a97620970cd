"""Bound UDP sockets of finished calls, kept for the next calls (one shelf per process).

Theory of operation.  Binding a call's media sockets (an ICE host socket toward the WIC, an
RTP/RTCP pair toward the core) costs socket(), setsockopt, bind, registering with the event
loop, and the same again to close: a measurable share of a call's CPU, paid before the INVITE
can be forwarded.  A socket whose call has closed is *parked* here instead, still bound and
still read by the loop (into a sink that drops everything), and a later call *takes* it.

- No state crosses calls: a taker gets the bare socket and puts its own protocol/reader on
  it; ICE, DTLS, SRTP, demux and latching state live in the objects of the call that closed.
- Quarantine: a socket is handed out only `quarantine` seconds after it was parked, so the
  tail of the old call (media in flight, DTLS retransmissions, the peer's last consent checks)
  is read and dropped while it sits here.  A later stray packet meets the new call's checks:
  a STUN request with the old credentials is rejected (RFC 8445 §7.3, 401), and data is
  accepted only from the new selected pair's remote address (RFC 7675 §5.1).
- Bounded: at most `limit` sockets per kind and address; past that a closing call's socket is
  closed for real.  Oldest parked first (least recently used port, as `UdpPortPool` does).
- Idle ones go: a socket parked `idle` seconds without being taken is closed for real, so after a
  busy hour the node does not keep its peak's descriptors and ports for ever (one reactor timer,
  armed only while something is parked).
- The ports stay out of `UdpPortPool`'s free list while parked (`UdpPortPool.park`); `close()`
  (at shutdown) closes every parked socket and gives its ports back.

Sans-IO: the shelf only keeps items and reads the clock; what an item is (an asyncio
transport, a pair of raw sockets) is its owner's business (`epcscf.ice.host_socket`, `epcscf.media.relay`).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from epcscf.ice.ports import UdpPortPool

#: seconds a parked socket rests before reuse (no RFC sets it): well over the round trip a WIC
#: needs to stop sending once the BYE or its 200 arrives, short enough for a busy node to reuse.
PARK_QUARANTINE = 1.0
#: parked sockets per kind and address (each one an open descriptor)
PARK_LIMIT = 256
#: seconds a parked socket waits for a taker before it is closed (no RFC sets it either): long
#: enough to ride out a lull between bursts, short enough that an idle node gives its ports back.
PARK_IDLE = 60.0


class ShelvedSocket(Protocol):
    """What a kind of media socket must offer to be parked."""

    @property
    def ports(self) -> tuple[int, ...]: ...

    def close(self) -> None:
        """Close the socket(s) for real (their ports are released by the shelf)."""


class SocketShelf:
    """Parked sockets by key (a kind and a bind address), oldest first."""

    def __init__(
        self,
        pool: UdpPortPool,
        clock: IReactorTime,
        *,
        limit: int = PARK_LIMIT,
        quarantine: float = PARK_QUARANTINE,
        idle: float = PARK_IDLE,
    ) -> None:
        if limit < 0 or quarantine < 0 or idle < quarantine:
            raise ValueError("SocketShelf: limit and quarantine must not be negative, idle not below quarantine")
        self._pool = pool
        self._clock = clock
        self.limit = limit
        self.quarantine = quarantine
        self._parked: OrderedDict[Hashable, deque[tuple[float, ShelvedSocket]]] = OrderedDict()
        self.idle = idle
        self._closed = False
        self._expiry: IDelayedCall | None = None
        self.reused = 0
        self.expired = 0

    def __len__(self) -> int:
        return sum(len(items) for items in self._parked.values())

    @property
    def port_count(self) -> int:
        return self._pool.parked_count

    def park(self, key: Hashable, item: ShelvedSocket) -> bool:
        """Keep `item` for a later call; False when the shelf is full or closed (the caller then
        closes it and releases its ports as before)."""
        if self._closed:
            return False
        items = self._parked.get(key)
        if items is None:
            items = self._parked[key] = deque()
        if len(items) >= self.limit:
            return False
        self._pool.park(*item.ports)
        items.append((self._clock.seconds(), item))
        if self._expiry is None:
            self._expiry = self._clock.callLater(self.idle, self._expire)
        return True

    def _expire(self) -> None:
        """Close what waited `idle` seconds; re-arm for the oldest item left, if any."""
        self._expiry = None
        now = self._clock.seconds()
        for key in list(self._parked):
            items = self._parked[key]
            while items and now - items[0][0] >= self.idle:
                _, item = items.popleft()
                self._discard(item)
                self.expired += 1
            if not items:
                del self._parked[key]
        if self._parked:
            oldest = min(items[0][0] for items in self._parked.values())
            self._expiry = self._clock.callLater(max(0.0, oldest + self.idle - now), self._expire)

    def _discard(self, item: ShelvedSocket) -> None:
        item.close()
        self._pool.release(*item.ports)

    def ready(self, key: Hashable) -> bool:
        """Whether `take(key)` would hand out an item now."""
        items = self._parked.get(key)
        return bool(items) and self._clock.seconds() - items[0][0] >= self.quarantine

    def take(self, key: Hashable) -> ShelvedSocket | None:
        """The oldest item of `key` out of quarantine, or None (bind a fresh one)."""
        items = self._parked.get(key)
        if not items or self._clock.seconds() - items[0][0] < self.quarantine:
            return None
        _, item = items.popleft()
        self._pool.unpark(*item.ports)
        self.reused += 1
        return item

    def close(self) -> None:
        """Shutdown: close every parked socket and give its ports back; nothing is parked after."""
        self._closed = True
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        parked, self._parked = self._parked, OrderedDict()
        for items in parked.values():
            for _, item in items:
                self._discard(item)
