"""A bound on the calls in setup: admission by work in progress (Little's law), not by rate.

Theory of operation
-------------------
Event-loop lag says the node is late only once it is late: a rate throttle fed by it lets a
queue build for as long as its feedback takes, and a call's setup crosses the event loop some
ten times (INVITE in and out, the core, the answer, ACK, the ICE checks), so a lag the probe
calls tolerable is already seconds of setup.  A *window* reacts with no delay: a new call is
admitted only while fewer than ``limit`` calls are in the part of their setup that is the
edge's own work, so when the edge slows down the calls in setup finish later and fewer new
ones get in at once — self-clocked, like a TCP window.

By Little's law (mean number in the system = throughput × mean time in it), a window of
``limit`` calls served at ``X`` calls/s keeps each call in setup ``limit / X`` seconds on
average.  The window is therefore sized from the measured throughput: ``limit = X × target``
(``[overload] setup_target``), never under ``min_calls_in_setup`` and, if configured, never
over ``max_calls_in_setup``.  While the node keeps up, calls spend less than ``target`` in
setup, fewer than ``limit`` are in it and nothing is refused; when it cannot, the window
shrinks until calls spend ``target`` in it again, and the excess is refused with 503 +
Retry-After (RFC 3261 §21.5.4) before any work was spent on it.

What counts as the edge's work (``phase``): from the initial INVITE's arrival until the offer
went on (ICE gathering, SDP rewriting, routing), and from the answer's arrival until ICE is up
toward the WIC (TS 24.371 §7.4.2, §7.4.3: the answer rewritten, the connectivity checks).  The
time in between is the callee's (ringing can last a minute): such a call is remembered but not
counted, so a busy site with many phones ringing is not taken for an overloaded one.

Only a busy node shrinks its window.  The time in the edge's phases is not only the edge's: from
the answer until ICE is up the WIC's round trips count too (its ACK, its checks, its answers to
ours; RFC 8445 §7.2), and a WIC behind a 200 ms mobile path spends longer there than ``target``
however idle the edge is.  Sized by Little's law alone, such a window refuses calls, the measured
throughput falls, the window with it — down to ``min_calls`` / that round trip, whatever the node
could carry.  So at each period the window also reads how much of a CPU the node wanted
(``usage``: its reactor thread's CPU time plus the time it waited, runnable, for a CPU): while
under ``BUSY``, the node has CPU to spare and what holds calls in setup is outside it, so the
window opens by ``GROWTH`` if it refused calls in the period, and otherwise shrinks no further than
twice the most calls it held in setup in the period (room for a burst, none kept from long ago);
once busy, the Little's-law size applies as before.  On a host that starves the node of CPU the
wait counts as busy: the node is overloaded for its callers either way.

Sans-IO: fed admissions, a clock and a usage counter; it reads the calls' states (``call_model``)
when asked.
"""

from __future__ import annotations

import enum
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.interfaces import IReactorTime

from epcscf.pcscf.call_model import call_leg
from epcscf.pcscf.call_state import CallState
from epcscf.sip.proxy_policy import ProxiedRequest, ProxyState


class SetupPhase(enum.Enum):
    EDGE = "edge"  # the edge is working on it: routing the offer, or the answer and ICE
    CALLEE = "callee"  # the offer went on; the answer is the callee's business
    DONE = "done"  # ICE is up, or the call ended, or the request was no call after all


def media_connected(media: Any) -> bool:
    """Whether the call's ICE is done toward the WIC (``CallMedia.ice_settled``); a media
    without that notion (a test double) counts as connected."""
    return bool(getattr(media, "ice_settled", True))


def phase(context: ProxiedRequest) -> SetupPhase:
    """Where the setup of an admitted initial INVITE stands.

    Read for every call in setup several times a second: states are compared by identity, not
    looked up in sets (an ``Enum``'s hash is a Python-level call)."""
    leg = call_leg(context)
    if leg is None:
        # Not (yet) a call: still being routed is ours; anything else (rejected before a call
        # was made, or a request the call manager does not handle) is over.
        return SetupPhase.EDGE if context.state is ProxyState.ROUTING else SetupPhase.DONE
    call = leg.call
    if call.ended:
        return SetupPhase.DONE
    state = call.state
    if state is CallState.EARLY or state is CallState.CONFIRMED:  # answered (RFC 3261 §13.2.1)
        media = call.media
        return SetupPhase.DONE if media is None or media_connected(media) else SetupPhase.EDGE
    if state is CallState.OFFER_RECEIVED:
        return SetupPhase.EDGE
    if state is CallState.OFFER_FORWARDED or state is CallState.CANCELLING:  # the answer not yet come
        return SetupPhase.CALLEE
    return SetupPhase.DONE  # TERMINATING, TERMINATED


def reactor_thread_usage() -> float:
    """Seconds the calling thread (the reactor's) has run on a CPU plus waited for one while
    runnable (``/proc/thread-self/schedstat``, Linux); elsewhere its CPU time alone."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as handle:
            ran, waited = handle.read().split()[:2]
        return (int(ran) + int(waited)) / 1e9
    except (OSError, ValueError):
        return time.thread_time()


@dataclass(frozen=True)
class WindowSettings:
    """The ``[overload]`` keys of the window (see ``epcscf.config``)."""

    target: float = 0.25  # seconds a call may spend, on average, in the edge's part of its setup (0: no window)
    min_calls: int = 20  # the window never shrinks below this many calls in setup
    max_calls: int = 0  # and never grows above this many (0: only the measured throughput bounds it)
    max_age: float = 64.0  # seconds after which a call still "in setup" is forgotten (it is the call manager's)


class SetupWindow:
    """The calls in setup and the window that bounds them (see the module docstring)."""

    PERIOD = 0.5  # seconds over which throughput is measured
    SMOOTHING = 0.5  # weight of the newest period in the throughput estimate
    REFRESH = 0.005  # seconds between two looks at a full window's oldest calls on the admission path
    FULL_REFRESH = 0.2  # seconds between two looks at every call's state (the head's are looked at every REFRESH)
    LOOK_CALLS = 8  # calls a look at a full window reads at most
    CALLEE_REFRESH = 0.25  # seconds between two looks at the calls waiting for their callee
    BUSY = 0.9  # share of a CPU the node wanted in a period from which its window may shrink
    GROWTH = 1.25  # how much a window the idle node refused calls through opens in a period

    def __init__(self, settings: WindowSettings, clock: IReactorTime, usage: Callable[[], float] | None = None) -> None:
        """``usage``: seconds of CPU the node used plus waited for, a counter (``reactor_thread_usage``);
        None: the window is sized by Little's law alone, busy or not."""
        self.settings = settings
        self.clock = clock
        self._usage = usage
        self._used = usage() if usage is not None else 0.0  # at the start of this period
        self._refused_before = 0  # ``refused`` at the start of this period
        self._peak = 0  # the most calls in the edge's phases at once, this period
        now = clock.seconds()
        #: admitted initial INVITEs in the edge's phase: id → (context, admitted at)
        self._edge: OrderedDict[int, tuple[ProxiedRequest, float]] = OrderedDict()
        #: admitted initial INVITEs waiting for their callee
        self._callee: dict[int, tuple[ProxiedRequest, float]] = {}
        self._refreshed = self._looked = self._callee_refreshed = now
        #: calls that left the edge's phases for good, this period
        self._finished = 0
        self._period_start = now
        #: calls/s leaving setup (smoothed)
        self.throughput = 0.0
        self.limit = self._bounded(0.0)
        #: refusals since start
        self.refused = 0

    @property
    def enabled(self) -> bool:
        return self.settings.target > 0 or self.settings.max_calls > 0

    @property
    def in_setup(self) -> int:
        """Calls in the edge's part of their setup (as of the last refresh)."""
        return len(self._edge)

    @property
    def waiting(self) -> int:
        """Admitted calls waiting for their callee."""
        return len(self._callee)

    def reconfigure(self, settings: WindowSettings) -> None:
        """New settings (SIGHUP): the calls in setup are kept, the window resized."""
        self.settings = settings
        self.limit = self._bounded(self.throughput)

    def admit(self, context: ProxiedRequest) -> bool:
        """Whether a new initial INVITE may start its setup now; if so it is counted."""
        if not self.enabled:
            return True
        now = self._current()
        if len(self._edge) >= self.limit:
            self.refused += 1
            return False
        self._edge[id(context)] = (context, now)
        self._peak = max(self._peak, len(self._edge))
        return True

    def refuses(self) -> bool:
        """Whether a new initial INVITE is refused now (counted if so; ``admit`` counts the
        admitted): the question the early, stateless refusal asks before any work is spent."""
        if not self.enabled:
            return False
        self._current()
        if len(self._edge) >= self.limit:
            self.refused += 1
            return True
        return False

    def _current(self) -> float:
        """Now, after a look at the calls' states if one is due.  Not a look at every call on every
        arrival: with 60 calls in setup that was a quarter of a refused INVITE's CPU, and at most
        one every ``REFRESH`` was still a third of it when INVITEs came one at a time
        (docs/performance.md).  So every call is read at most every ``FULL_REFRESH``, and in between a
        full window reads a few of its oldest calls only (``_look``); a place freed at the head waits
        at most ``REFRESH`` to be seen, any other at most the ``LOOK_CALLS``-a-look turn through
        the calls (40 ms for 60 calls) or ``FULL_REFRESH``, against a ``setup_target`` of 250 ms.
        A window that is not full refuses nothing, so what it has not seen yet costs no call."""
        now = self.clock.seconds()
        if now >= self._refreshed + self.FULL_REFRESH:
            self.refresh(now)
        elif now >= self._looked + self.REFRESH and len(self._edge) >= self.limit:
            self._look(now)
        return now

    def tick(self) -> None:
        """The load probe's clock (every ``[overload] lag_interval``): a look at every call if one
        is due, so that the throughput is measured and the window resized while no INVITE comes.
        Not a look at each tick: at 20 ticks a second and 60 calls in setup, those reads were a
        sixth of the node's CPU while it refused paced INVITEs (docs/performance.md)."""
        if self.enabled:
            now = self.clock.seconds()
            if now >= self._refreshed + self.FULL_REFRESH:
                self.refresh(now)

    def _look(self, now: float) -> None:
        """At most ``LOOK_CALLS`` calls from the head of the edge's phases, until one still in them
        once a place is free.  Calls leave in about the order they came (an answer's ICE takes
        about as long for each), so the places a full window waits for are at its head; a call read
        and still in setup goes to the back, so a head stuck in setup (ICE that never completes)
        costs no more than ``LOOK_CALLS`` reads a look, and every call is read in turn."""
        self._looked = now
        oldest = now - self.settings.max_age
        edge = self._edge
        for _ in range(min(self.LOOK_CALLS, len(edge))):
            key = next(iter(edge))
            context, admitted = edge[key]
            current = phase(context)
            if current is SetupPhase.EDGE and admitted > oldest:
                edge.move_to_end(key)
                if len(edge) < self.limit:
                    break
            else:
                self._leave(key, context, admitted, current)

    def _leave(self, key: int, context: ProxiedRequest, admitted: float, current: SetupPhase) -> None:
        """A call out of the edge's phases: to its callee's, or through its setup."""
        del self._edge[key]
        if current is SetupPhase.CALLEE:
            self._callee[key] = (context, admitted)
        elif current is SetupPhase.DONE and call_leg(context) is not None:
            self._finished += 1  # a call through its setup (not one refused while routed)

    def refresh(self, now: float | None = None) -> None:
        """Look at the calls' states: move them between phases, count those done, resize."""
        if now is None:
            now = self.clock.seconds()
        self._refreshed = self._looked = now
        oldest = now - self.settings.max_age
        if now - self._callee_refreshed >= self.CALLEE_REFRESH:
            self._callee_refreshed = now
            for key, (context, admitted) in list(self._callee.items()):
                current = phase(context)
                if current is SetupPhase.EDGE:
                    del self._callee[key]
                    self._edge[key] = (context, admitted)
                elif current is SetupPhase.DONE or admitted <= oldest:
                    del self._callee[key]  # ended while ringing: the edge never worked on an answer
        for key, (context, admitted) in list(self._edge.items()):
            current = phase(context)
            if current is not SetupPhase.EDGE or admitted <= oldest:
                self._leave(key, context, admitted, current)
        elapsed = now - self._period_start
        if elapsed >= self.PERIOD:
            self._resize(now, elapsed)

    def _resize(self, now: float, elapsed: float) -> None:
        """The end of a period: throughput measured, the window sized (see the module docstring)."""
        measured = self._finished / elapsed
        self.throughput = measured if self.throughput == 0.0 else (
            self.SMOOTHING * measured + (1 - self.SMOOTHING) * self.throughput)
        self._finished, self._period_start = 0, now
        limit = self._bounded(self.throughput)
        if self._usage is not None:
            used = self._usage()
            demand, self._used = (used - self._used) / elapsed, used
            if demand < self.BUSY:  # CPU to spare: what holds calls in setup is not the node
                if self.refused > self._refused_before:
                    kept = math.ceil(self.limit * self.GROWTH)
                else:
                    kept = min(self.limit, 2 * self._peak)
                limit = max(limit, self._capped(kept))
        self._refused_before, self._peak = self.refused, len(self._edge)
        self.limit = limit

    def _bounded(self, throughput: float) -> int:
        settings = self.settings
        if settings.target <= 0:
            return settings.max_calls  # a configured capacity only
        return self._capped(max(settings.min_calls, int(throughput * settings.target)))

    def _capped(self, limit: int) -> int:
        if self.settings.max_calls > 0:
            limit = min(limit, self.settings.max_calls)
        return max(1, limit)
