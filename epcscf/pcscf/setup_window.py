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

Sans-IO: fed admissions and a clock; it reads the calls' states (``call_model``) when asked.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime

from epcscf.pcscf.call_model import call_leg
from epcscf.pcscf.call_state import CallState
from epcscf.sip.proxy_policy import ProxiedRequest, ProxyState


class SetupPhase(enum.Enum):
    EDGE = "edge"  # the edge is working on it: routing the offer, or the answer and ICE
    CALLEE = "callee"  # the offer went on; the answer is the callee's business
    DONE = "done"  # ICE is up, or the call ended, or the request was no call after all


#: call states in which the answer has not come yet (RFC 3261 §13.2.1: offer in the INVITE)
_WAITING_STATES = frozenset({CallState.OFFER_FORWARDED, CallState.CANCELLING})
_ANSWERED_STATES = frozenset({CallState.EARLY, CallState.CONFIRMED})


def media_connected(media: Any) -> bool:
    """Whether the call's ICE is done toward the WIC (``CallMedia.ice_settled``); a media
    without that notion (a test double) counts as connected."""
    return bool(getattr(media, "ice_settled", True))


def phase(context: ProxiedRequest) -> SetupPhase:
    """Where the setup of an admitted initial INVITE stands."""
    leg = call_leg(context)
    if leg is None:
        # Not (yet) a call: still being routed is ours; anything else (rejected before a call
        # was made, or a request the call manager does not handle) is over.
        return SetupPhase.EDGE if context.state is ProxyState.ROUTING else SetupPhase.DONE
    call = leg.call
    state = call.state
    if call.ended or state in (CallState.TERMINATING, CallState.TERMINATED):
        return SetupPhase.DONE
    if state is CallState.OFFER_RECEIVED:
        return SetupPhase.EDGE
    if state in _WAITING_STATES:
        return SetupPhase.CALLEE
    if state in _ANSWERED_STATES:
        return SetupPhase.DONE if call.media is None or media_connected(call.media) else SetupPhase.EDGE
    return SetupPhase.DONE


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
    REFRESH = 0.005  # seconds between two looks at the calls' states on the admission path
    CALLEE_REFRESH = 0.25  # seconds between two looks at the calls waiting for their callee

    def __init__(self, settings: WindowSettings, clock: IReactorTime) -> None:
        self.settings = settings
        self.clock = clock
        now = clock.seconds()
        #: admitted initial INVITEs in the edge's phase: id → (context, admitted at)
        self._edge: dict[int, tuple[ProxiedRequest, float]] = {}
        #: admitted initial INVITEs waiting for their callee
        self._callee: dict[int, tuple[ProxiedRequest, float]] = {}
        self._refreshed = self._callee_refreshed = now
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
        """Now, after a look at the calls' states if the last is ``REFRESH`` old.  Not at every
        arrival while full: a look reads every call in setup, and on each refused INVITE that was
        a quarter of the refusal's CPU with 60 calls in setup (docs/performance.md); a place
        freed waits at most ``REFRESH`` to be seen, against a ``setup_target`` fifty times longer."""
        now = self.clock.seconds()
        if now >= self._refreshed + self.REFRESH:
            self.refresh(now)
        return now

    def refresh(self, now: float | None = None) -> None:
        """Look at the calls' states: move them between phases, count those done, resize."""
        if now is None:
            now = self.clock.seconds()
        self._refreshed = now
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
            if current is SetupPhase.EDGE and admitted > oldest:
                continue
            del self._edge[key]
            if current is SetupPhase.CALLEE:
                self._callee[key] = (context, admitted)
            elif current is SetupPhase.DONE and call_leg(context) is not None:
                self._finished += 1  # a call through its setup (not one refused while routed)
        elapsed = now - self._period_start
        if elapsed >= self.PERIOD:
            measured = self._finished / elapsed
            self.throughput = measured if self.throughput == 0.0 else (
                self.SMOOTHING * measured + (1 - self.SMOOTHING) * self.throughput)
            self._finished, self._period_start = 0, now
            self.limit = self._bounded(self.throughput)

    def _bounded(self, throughput: float) -> int:
        settings = self.settings
        if settings.target <= 0:
            return settings.max_calls  # a configured capacity only
        limit = max(settings.min_calls, int(throughput * settings.target))
        if settings.max_calls > 0:
            limit = min(limit, settings.max_calls)
        return max(1, limit)
