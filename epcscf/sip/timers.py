"""Many transaction timers on one reactor timer.

Almost every RFC 3261 §17 timer is cancelled long before it fires: Timer F (32 s) of each
non-INVITE client transaction dies when the response arrives a few milliseconds later.
The reactor's ``callLater`` builds a ``DelayedCall`` and re-sorts the reactor's timer heap
for each of them; ``TimerQueue`` keeps its own small heap of entries instead and holds a
single reactor call armed for the earliest one.  Cancelling an entry only marks it; the
heap is compacted when dead entries outnumber live ones, and the reactor call is
cancelled as soon as no entry is live (so an idle element leaves nothing scheduled).

Entries fire at exactly their deadline on the wrapped clock (``task.Clock`` in tests).

Timers of a fixed delay (``call_fixed``: every RFC 3261 §17 / RFC 6026 transaction timer, whose
delays come from a handful of values: T1·2^n for A, E and G, T2, T4, 64·T1, the 200 ms of 100
Trying) are not heap entries: all of one delay are armed in deadline order, so one deque per delay
holds them.  An entry is a serial number (an int, which the collector never tracks); its deadline,
owner and token are filed under it in three dicts of the queue.  A timer then costs the collector
nothing, where a ``QueuedCall`` with its bound method, its arguments and its heap tuple were four
objects every young and middle pass traversed for as long as the timer lived -- 32 s for Timers B, F,
H, J, L and M, most of them cancelled long before (docs/performance.md, "The collector's share of a
call").  A cancelled entry lets go of its owner at once and leaves its number behind until it comes up.
Entries fire at exactly their deadline, as heap entries do; on the same deadline, heap entries
first, then fixed entries in the order they were armed.
"""

from __future__ import annotations

import heapq
from collections import deque
from itertools import count
from typing import Any, Callable, Protocol

from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()

# A deadline within this of "now" is due (the wrapped clock's float arithmetic may land a
# hair short of it).
_EPSILON = 1e-9
# Compact when more than this many entries are dead and they outnumber the live ones.
_COMPACT_AT = 64
# ``call_fixed`` deques kept before those with nothing armed are dropped (transactions use ~10 delays).
_MOST_DELAYS = 64


def _nothing() -> None:
    pass


class FixedDelayOwner(Protocol):
    """What a ``call_fixed`` entry calls when its deadline comes."""

    def fixed_timer_fired(self, token: Any) -> None: ...


#: one ``call_fixed`` timer: its serial number; the queue files its deadline, owner and token under it
FixedEntry = int


@implementer(IDelayedCall)
class QueuedCall:
    """One entry of a ``TimerQueue``: the ``IDelayedCall`` its ``callLater`` returns."""

    __slots__ = ("_queue", "time", "_function", "_args", "_pending", "_fired")

    def __init__(self, queue: "TimerQueue", time: float, function: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._queue = queue
        self.time = time
        self._function = function
        self._args = args
        self._pending = True
        self._fired = False

    def getTime(self) -> float:
        return self.time

    def active(self) -> bool:
        return self._pending

    def cancel(self) -> None:
        if self._pending:
            self._pending = False
            # The entry may sit in the heap until the next compaction: let go of the
            # callback (and the transaction it belongs to) now.
            self._function = _nothing
            self._args = ()
            self._queue._cancelled()

    def delay(self, secondsLater: float) -> None:
        self.reset(self.time + secondsLater - self._queue.seconds())

    def reset(self, secondsFromNow: float) -> None:
        if not self._pending:
            raise AlreadyCalled(self) if self._fired else AlreadyCancelled(self)
        self.time = self._queue.seconds() + secondsFromNow
        self._queue._moved(self)

    def _run(self) -> None:
        self._pending = False
        self._fired = True
        self._function(*self._args)

    def _is_entry(self, entry: tuple[float, int, "QueuedCall"]) -> bool:
        """Whether a heap entry is this call's current one (a reset leaves the old behind)."""
        return self._pending and entry[0] == self.time


class TimerQueue:
    """``callLater`` for transaction timers, multiplexed on one call of ``clock``."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, QueuedCall]] = []
        self._order = count()  # ties fire in the order they were armed
        self._live = 0
        self._armed: IDelayedCall | None = None
        self._armed_at = 0.0
        #: ``call_fixed`` entries, one deque per delay, each in deadline order
        self._fixed: dict[float, deque[FixedEntry]] = {}
        #: serial of each live ``call_fixed`` entry → its owner, its token, its deadline
        self._owners: dict[int, FixedDelayOwner] = {}
        self._tokens: dict[int, Any] = {}
        self._deadlines: dict[int, float] = {}

    def seconds(self) -> float:
        return self._clock.seconds()

    def callLater(self, delay: float, function: Callable[..., Any], *args: Any) -> QueuedCall:
        call = QueuedCall(self, self._clock.seconds() + delay, function, args)
        heapq.heappush(self._heap, (call.time, next(self._order), call))
        self._live += 1
        if self._armed is None or call.time < self._armed_at:
            self._arm(call.time)
        return call

    def call_fixed(self, delay: float, owner: FixedDelayOwner, token: Any) -> FixedEntry:
        """Call ``owner.fixed_timer_fired(token)`` in ``delay`` seconds, as ``callLater`` would;
        for delays many timers share (see the module docstring).  ``cancel_fixed`` the entry."""
        serial = next(self._order)
        deadline = self._clock.seconds() + delay
        queue = self._fixed.get(delay)
        if queue is None:
            if len(self._fixed) >= _MOST_DELAYS:
                self._drop_empty_deques()
            queue = self._fixed[delay] = deque()
        queue.append(serial)
        self._owners[serial] = owner
        self._tokens[serial] = token
        self._deadlines[serial] = deadline
        if self._armed is None or deadline < self._armed_at:
            self._arm(deadline)
        return serial

    def cancel_fixed(self, entry: FixedEntry) -> None:
        if self._owners.pop(entry, None) is not None:
            del self._tokens[entry], self._deadlines[entry]
            self._forget_if_idle()

    def token_of(self, entry: FixedEntry) -> Any:
        """The token of a live ``call_fixed`` entry (None once it fired or was cancelled)."""
        return self._tokens.get(entry)

    def deadline_of(self, entry: FixedEntry) -> float | None:
        """When a live ``call_fixed`` entry fires (clock seconds; None once it fired or was cancelled)."""
        return self._deadlines.get(entry)

    def pending(self) -> int:
        """How many entries are armed (for tests and the console)."""
        return self._live + len(self._owners)

    def _drop_empty_deques(self) -> None:
        """Forget the deques of delays with nothing armed (a caller whose delays vary widely)."""
        for delay in [delay for delay, queue in self._fixed.items() if not any(serial in self._owners for serial in queue)]:
            del self._fixed[delay]

    def _arm(self, when: float) -> None:
        if self._armed is not None and self._armed.active():
            self._armed.cancel()
        self._armed_at = when
        self._armed = self._clock.callLater(max(0.0, when - self._clock.seconds()), self._fire)

    def _moved(self, call: QueuedCall) -> None:
        heapq.heappush(self._heap, (call.time, next(self._order), call))
        if self._armed is None or call.time < self._armed_at:
            self._arm(call.time)

    def _cancelled(self) -> None:
        self._live -= 1
        if self._live == 0:
            self._heap.clear()
            self._forget_if_idle()
        elif len(self._heap) - self._live > max(_COMPACT_AT, self._live):
            self._heap = [entry for entry in self._heap if entry[2]._is_entry(entry)]
            heapq.heapify(self._heap)

    def _forget_if_idle(self) -> None:
        """Nothing armed: leave nothing scheduled and no dead entry behind."""
        if self._live or self._owners:
            return
        self._heap.clear()
        self._fixed.clear()
        if self._armed is not None and self._armed.active():
            self._armed.cancel()
        self._armed = None

    def _earliest_fixed(self) -> deque[FixedEntry] | None:
        """The deque whose first live entry is due first (dead first entries are dropped)."""
        earliest: deque[FixedEntry] | None = None
        owners, deadlines = self._owners, self._deadlines
        for queue in self._fixed.values():
            while queue and queue[0] not in owners:
                queue.popleft()
            if queue and (earliest is None or (deadlines[queue[0]], queue[0]) < (deadlines[earliest[0]], earliest[0])):
                earliest = queue  # (deadline, serial): the one armed first on a tie
        return earliest

    def _fire(self) -> None:
        self._armed = None
        now = self._clock.seconds() + _EPSILON
        # self._heap, not a local: a callback may arm, cancel or compact.  Heap and fixed
        # entries are run in deadline order, the heap's first on a tie.
        while True:
            while self._heap and not self._heap[0][2]._is_entry(self._heap[0]):
                heapq.heappop(self._heap)
            fixed = self._earliest_fixed() if self._owners else None
            heap_due = self._heap[0][0] if self._heap else None
            fixed_due = self._deadlines[fixed[0]] if fixed else None
            callback: Callable[..., None]
            if heap_due is not None and heap_due <= now and (fixed_due is None or heap_due <= fixed_due):
                call = heapq.heappop(self._heap)[2]
                self._live -= 1
                callback, args = call._run, ()
            elif fixed is not None and fixed_due is not None and fixed_due <= now:
                serial = fixed.popleft()
                del self._deadlines[serial]
                callback, args = self._owners.pop(serial).fixed_timer_fired, (self._tokens.pop(serial),)
            else:
                break
            try:
                callback(*args)
            except Exception:
                log.failure("timer callback failed")
        dues = [due for due in (heap_due, fixed_due) if due is not None]
        if dues and (self._armed is None or min(dues) < self._armed_at):
            self._arm(min(dues))
        elif not dues:
            self._forget_if_idle()
