"""Bookkeeping of the `[media] port_range`: which UDP ports are ours to bind (sans-IO).

One `UdpPortPool` serves the whole process: ICE agents toward the WIC take single ports
(`allocate`), the core-side RTP relay takes even/odd pairs (`allocate_pair`, RFC 3550 §11:
RTP on an even port, RTCP on the next odd one).  The pool never touches a socket; a caller
that fails to bind a port (another process holds it) calls `release` and asks again: freed
ports go to the back of the queue, so the next allocation tries a different one and a port
freed by a finished call is reused as late as possible (stray packets of the old call).

When the pool is empty, `PortsExhausted` is raised; the call manager answers 503.
"""

from __future__ import annotations

from collections import OrderedDict


class PortsExhausted(Exception):
    """No free port (or even/odd pair) is left in the media port range."""


class UdpPortPool:
    """Free/used ports of one inclusive range, handed out least-recently-freed first."""

    def __init__(self, low: int, high: int) -> None:
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"port range must satisfy 1 <= low <= high <= 65535, got {low}-{high}")
        self.low = low
        self.high = high
        # Insertion order is the order ports became free: allocation pops from the front.
        self._free: OrderedDict[int, None] = OrderedDict((port, None) for port in range(low, high + 1))
        self._used: set[int] = set()
        # Bound by a socket parked between calls (`epcscf.ice.shelf`): neither free nor a call's.
        self._parked: set[int] = set()

    def __repr__(self) -> str:
        return f"UdpPortPool({self.low}-{self.high}, free={self.free_count})"

    @property
    def size(self) -> int:
        return self.high - self.low + 1

    @property
    def free_count(self) -> int:
        return len(self._free)

    @property
    def used_count(self) -> int:
        return len(self._used)

    @property
    def parked_count(self) -> int:
        return len(self._parked)

    def is_used(self, port: int) -> bool:
        return port in self._used

    def allocate(self) -> int:
        """One port (an ICE host candidate's socket)."""
        if not self._free:
            raise PortsExhausted(f"no free UDP port left in {self.low}-{self.high}")
        port, _ = self._free.popitem(last=False)
        self._used.add(port)
        return port

    def allocate_pair(self) -> tuple[int, int]:
        """An even port and the odd port after it (RTP and RTCP, RFC 3550 §11)."""
        for port in self._free:
            if port % 2 == 0 and port + 1 in self._free:
                del self._free[port]
                del self._free[port + 1]
                self._used.update((port, port + 1))
                return port, port + 1
        raise PortsExhausted(f"no free even/odd UDP port pair left in {self.low}-{self.high}")

    def release(self, *ports: int) -> None:
        """Give ports back (idempotent: releasing a free port is ignored)."""
        for port in ports:
            if port in self._used or port in self._parked:
                self._used.discard(port)
                self._parked.discard(port)
                self._free[port] = None

    def park(self, *ports: int) -> None:
        """Ports of a call's socket kept bound for a later call (no longer the call's)."""
        for port in ports:
            if port in self._used:
                self._used.discard(port)
                self._parked.add(port)

    def unpark(self, *ports: int) -> None:
        """Parked ports taken by a new call."""
        for port in ports:
            if port in self._parked:
                self._parked.discard(port)
                self._used.add(port)
