"""Give the C heap's free memory back to the operating system once a burst is over (glibc).

Why this exists.  glibc's ``malloc`` returns freed memory to the kernel only from the top of
its heap (and for blocks above the mmap threshold).  Each call allocates C memory in the
middle of it: the DTLS association alone is 60–85 KiB of OpenSSL state and buffers, and SIP
messages and SDP bodies above 512 bytes bypass pymalloc.  After a burst of calls that memory
is free and reused by the next calls, but the pages stay in the process's RSS: in
``benchmarks/soak.py`` (600 mixed calls) every count came back to its baseline while RSS
stayed 37 % up, and 6.7 % after ``malloc_trim(0)`` (``docs/performance.md``, "Memory per call").

``malloc_trim(0)`` hands every whole free page back (``MADV_DONTNEED``); it costs about
0.4 ms per MiB given back and ~2.5 ms on a 200 MiB heap with nothing to give.  So the
trimmer looks every ``interval`` seconds at how much the heap holds free (``mallinfo2``, a
few microseconds) and trims only when that grew by more than ``threshold`` since the lowest
figure seen after the last trim (glibc still counts trimmed pages as free, and reuses them
first): during steady load the free memory is reused and does not grow, after a burst it is
returned within ``interval``.  While the process is busy (more than ``busy_share`` of a CPU
since the last look) the trim waits: pages handed back then are faulted in again at once.
On a C library without ``mallinfo2``/``malloc_trim`` (musl, macOS) nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from typing import Callable, Protocol

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

log = Logger(namespace="epcscf.ops.heap")

#: seconds between two looks at the heap
TRIM_INTERVAL = 10.0
#: newly free bytes the heap may keep before they are handed back: a few percent of a
#: ~100 MiB edge (a trim of that much costs a few milliseconds)
TRIM_THRESHOLD = 4 * 1024 * 1024
#: share of one CPU above which the node is busy and the trim waits: pages handed back under
#: load are faulted in again by the next messages (a page fault each), for nothing
BUSY_SHARE = 0.25


class Heap(Protocol):
    def free_bytes(self) -> int:
        """Bytes the allocator holds free (not handed back to the kernel)."""

    def trim(self) -> None:
        """Hand every free page back to the kernel."""


class _Mallinfo2(ctypes.Structure):
    # glibc >= 2.33, malloc.h: struct mallinfo2 (all size_t)
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
    )]


class GlibcHeap:
    """The process's glibc heap, through ``mallinfo2`` and ``malloc_trim``."""

    def __init__(self, libc: ctypes.CDLL) -> None:
        self._mallinfo2 = libc.mallinfo2
        self._mallinfo2.restype = _Mallinfo2
        self._malloc_trim = libc.malloc_trim
        self._malloc_trim.argtypes = [ctypes.c_size_t]

    def free_bytes(self) -> int:
        info = self._mallinfo2()
        return int(info.fordblks + info.fsmblks)  # free in ordinary chunks and in fastbins

    def trim(self) -> None:
        self._malloc_trim(0)


def glibc_heap() -> GlibcHeap | None:
    """The glibc heap, or None when the C library is not glibc (>= 2.33)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else ctypes.CDLL(None)
        return GlibcHeap(libc)
    except (OSError, AttributeError):
        return None


class HeapTrimmer(Service):
    """Every ``interval`` s: when the heap holds more than ``threshold`` bytes free, and the
    process used less than ``busy_share`` of a CPU since the last look, trim it."""

    def __init__(self, clock: IReactorTime, heap: Heap, interval: float = TRIM_INTERVAL,
                 threshold: int = TRIM_THRESHOLD, cpu: Callable[[], float] = time.process_time,
                 busy_share: float = BUSY_SHARE, before_trim: Callable[[], None] | None = None) -> None:
        self.clock = clock
        #: run just before a trim (the node just went quiet after a burst): caches the burst
        #: filled are emptied so that their entries do not hold its memory
        self.before_trim = before_trim
        self.heap = heap
        self.interval = interval
        self.threshold = threshold
        #: the process's CPU seconds so far, and the share of one CPU above which it is busy
        self.cpu = cpu
        self.busy_share = busy_share
        self.trims = 0
        #: looks that would have trimmed but found the node busy
        self.deferred_trims = 0
        self._cpu_then = 0.0
        self._timer: IDelayedCall | None = None
        #: free bytes already handed back, or reused since (the floor the growth counts from)
        self._floor = 0

    def startService(self) -> None:  # noqa: N802
        super().startService()
        self._cpu_then = self.cpu()
        self._timer = self.clock.callLater(self.interval, self._look)

    def stopService(self) -> None:  # noqa: N802
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _look(self) -> None:
        self._timer = self.clock.callLater(self.interval, self._look)
        cpu_now = self.cpu()
        busy = cpu_now - self._cpu_then > self.busy_share * self.interval
        self._cpu_then = cpu_now
        free = self.heap.free_bytes()
        self._floor = min(self._floor, free)
        if free - self._floor <= self.threshold:
            return
        if busy:
            self.deferred_trims += 1
            return
        if self.before_trim is not None:
            self.before_trim()
        self.heap.trim()
        self.trims += 1
        log.debug("heap: {mib:.1f} MiB freed since the last trim handed back to the kernel",
                  mib=(free - self._floor) / (1 << 20))
        self._floor = self.heap.free_bytes()
