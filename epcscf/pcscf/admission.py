"""Admission control: refusing *new* work when the node is overloaded or a source misbehaves.

Theory of operation
-------------------
A proxy that accepts every new call while it cannot keep up makes every call slow: setup
latency grows for everybody, transactions time out and are retransmitted, and goodput falls
below what the node could have carried.  The remedy (RFC 3261 §21.5.4; RFC 7339 overload control) is to
refuse the *excess* early and cheaply with ``503 Service Unavailable`` and ``Retry-After``
while the work already admitted keeps flowing.

What counts as new work (``is_new_work``): a request outside any dialog that would create
state here — an initial INVITE, SUBSCRIBE, REFER, MESSAGE, OPTIONS… from either side — and
a REGISTER that does not refresh a binding this flow already holds (RFC 3261 §10.2; a flow
without a binding, or an AOR not bound on that flow).  Requests inside a dialog (a To tag),
ACK and CANCEL, and refreshes of existing registrations are never refused for load: they
finish work the node already took on, and refusing them would waste what was spent on it.

The overload state is a two-state machine with hysteresis (``TRANSITIONS``), fed a load
sample every ``lag_interval`` seconds by ``LoadProbe``: the event-loop lag (how late a timer
ran: the time every message waits before it is looked at) and, optionally, the number of
proxied requests still waiting for a final response.  ``HIGH`` samples in a row move
NORMAL → OVERLOADED (one late timer is a GC pause or a blocking call, not overload); back to
NORMAL only after ``recover`` seconds of ``LOW`` samples.  In between (``MID``) the state is
kept: that band is the hysteresis that stops the state flapping on every sample.  While
OVERLOADED, new work is let in at a rate that follows the lag (``OverloadController``); the
rest is refused.

Independently of the state, ``max_new_per_second`` caps the arrival rate of new work with a
token bucket (an operator's known capacity), and per-source limits refuse what one source
may not have, however idle the node is: messages per second per flow and failed
authentications per AOR (``epcscf.pcscf.limits``).  Connections per IP are the WebSocket
listener's (``epcscf.ws.protocol``), refused before the upgrade.

Everything here is sans-IO: fed requests, samples and a clock, it answers with refusals.
``AdmissionChain`` is the one hook ``PcscfPolicy.route_request`` calls first; the drain on
shutdown adds its own check to the same chain.
"""

from __future__ import annotations

import collections
import enum
import random
from dataclasses import dataclass
from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from epcscf.pcscf.registration import Registrations
from epcscf.pcscf.setup_window import SetupWindow
from epcscf.sip.connection import WEBSOCKET_TRANSPORTS, Connection
from epcscf.sip.headers import HeaderError, to_aor, to_tag
from epcscf.sip.message import Request, Response
from epcscf.sip.proxy import ProxiedRequest, Reject
from epcscf.sip.proxy_rules import make_local_response, with_to_tag

log = Logger(namespace="epcscf.pcscf.admission")

#: RFC 3261 §17.2.3 / §9: these belong to a transaction already admitted
NEVER_NEW = frozenset({"ACK", "CANCEL"})


@dataclass(frozen=True)
class OverloadSettings:
    """The ``[overload]`` section (see ``epcscf.config``)."""

    enabled: bool = True
    lag_interval: float = 0.05  # seconds between load samples
    lag_high: float = 0.1  # lag at or above which a sample is HIGH
    lag_low: float = 0.03  # lag below which a sample is LOW
    high_samples: int = 2  # HIGH samples in a row that mean overload
    recover: float = 1.0  # seconds of LOW samples before NORMAL again
    max_pending: int = 0  # proxied requests awaiting a final response (0: not watched)
    max_new_per_second: float = 0.0  # new dialogs + registrations per second (0: no cap)
    min_new_per_second: float = 10.0  # let in while OVERLOADED however bad the lag
    retry_after: int = 5  # seconds, in the 503's Retry-After
    max_connections_per_ip: int = 10000  # WebSocket connections from one IP (0: no limit)
    flow_messages_per_second: float = 100.0  # sustained messages per second per flow (0: no limit)
    flow_burst: int = 200  # messages a flow may send at once above the rate
    flow_close_after: int = 1000  # messages refused within flow_window before the flow is closed
    flow_window: float = 10.0  # seconds
    auth_failures: int = 10  # failed REGISTER authentications per AOR within auth_window (0: no limit)
    auth_window: float = 60.0  # seconds
    auth_lockout: float = 300.0  # seconds an AOR is answered 403 locally
    setup_target: float = 0.25  # seconds in the edge's part of a call's setup (``setup_window``; 0: no window)
    min_calls_in_setup: int = 20  # the window never below this
    max_calls_in_setup: int = 0  # nor above this (0: no cap)
    untrusted_source_messages_per_second: float = 200.0  # per core-side source not trusted (0: no limit)
    retry_after_spread: int = 0  # seconds added at random to every overload 503's Retry-After (``RetryAfter``)


class RetryAfter:
    """Retry-After seconds for overload 503s, spread so that refused clients do not come back in
    step: uniform over ``base`` … ``base + spread``, whole seconds.  WICs refused in the same
    second and told the same delay would all come back in the same second, a burst the node
    refuses again (RFC 3261 §21.5.4; RFC 6357 §4: synchronised retries)."""

    def __init__(self, base: int, spread: int = 0, uniform: Callable[[], float] = random.random) -> None:
        self.base = base
        self.spread = max(0, spread)
        self._uniform = uniform  # [0, 1): the draw, replaceable in tests

    @classmethod
    def of(cls, settings: OverloadSettings, uniform: Callable[[], float] = random.random) -> "RetryAfter":
        return cls(settings.retry_after, settings.retry_after_spread, uniform)

    def seconds(self) -> int:
        if not self.spread:
            return self.base
        return self.base + int(self._uniform() * (self.spread + 1))


# --- the load state machine ----------------------------------------------------------------


class LoadState(enum.Enum):
    NORMAL = "normal"
    OVERLOADED = "overloaded"


class Sample(enum.Enum):
    HIGH = "high"  # over a high threshold
    MID = "mid"  # between the thresholds: the hysteresis band
    LOW = "low"  # under every low threshold


#: (state, sample) → next state.  The two conditional moves (HIGH in a row, LOW for long
#: enough) are the only ones ``OverloadController`` decides outside this table.
TRANSITIONS: dict[tuple[LoadState, Sample], LoadState] = {
    (LoadState.NORMAL, Sample.LOW): LoadState.NORMAL,
    (LoadState.NORMAL, Sample.MID): LoadState.NORMAL,
    (LoadState.NORMAL, Sample.HIGH): LoadState.OVERLOADED,  # after high_samples in a row
    (LoadState.OVERLOADED, Sample.HIGH): LoadState.OVERLOADED,
    (LoadState.OVERLOADED, Sample.MID): LoadState.OVERLOADED,
    (LoadState.OVERLOADED, Sample.LOW): LoadState.NORMAL,  # after recover seconds of LOW
}


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; ``take()`` spends one."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float) -> bool:
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return True
        self.tokens = tokens
        return False

    def has_token(self, now: float) -> bool:
        """Whether ``take(now)`` would succeed (nothing spent)."""
        return min(self.burst, self.tokens + (now - self.stamp) * self.rate) >= 1.0


class OverloadController:
    """NORMAL / OVERLOADED from load samples (``TRANSITIONS``), and the rates new work is let in at.

    While OVERLOADED, new work is not refused wholesale: it is let in through a token bucket
    whose rate follows the load, the rate-based scheme of RFC 7415 with the event-loop lag
    as the feedback (multiplicative decrease while HIGH, additive increase while LOW, hold in
    between).  It starts at half the rate new work was admitted at in the last second, which
    is at most what the node just failed to carry, and never goes under ``min_new_per_second``
    (a node that is busy for reasons of its own — a long computation, a starved CPU — still
    serves a handful of new calls and registrations, as a small site needs).  Refusing everything until the backlog is
    gone would leave the node idle once it drains; a throttle near its capacity keeps it busy
    with calls that complete quickly, and refuses only the excess.
    """

    ADJUST_EVERY = 0.2  # seconds between two changes of the throttle (the effect lags the cause)
    DECREASE = 0.85  # factor per change while HIGH
    INCREASE = 0.05  # share of the rate added per change while LOW

    def __init__(self, settings: OverloadSettings, clock: IReactorTime,
                 uniform: Callable[[], float] = random.random) -> None:
        self.settings = settings
        self.clock = clock
        self._uniform = uniform
        self._retry_after = RetryAfter.of(settings, uniform)
        self.state = LoadState.NORMAL
        self.last_lag = 0.0
        self.last_pending = 0
        now = clock.seconds()
        self.changed_at = now
        self._high_run = 0
        self._low_since: float | None = None
        rate = settings.max_new_per_second
        self._arrivals = TokenBucket(rate, max(1.0, rate), now) if rate > 0 else None
        #: new work admitted per second over the last whole second
        self.admitted_rate = 0.0
        self._admitted = 0
        self._window_start = now
        #: while OVERLOADED: the rate new work is let in at
        self.throttle: TokenBucket | None = None
        self._adjusted_at = now
        #: observer of state changes (log, metrics)
        self.on_change: Callable[[LoadState], None] | None = None

    def reconfigure(self, settings: OverloadSettings) -> None:
        """New settings (SIGHUP): the state and throttle are kept, the thresholds and caps change."""
        if settings.max_new_per_second != self.settings.max_new_per_second:
            rate = settings.max_new_per_second
            self._arrivals = TokenBucket(rate, max(1.0, rate), self.clock.seconds()) if rate > 0 else None
        self.settings = settings

    def retry_after(self) -> int:
        """Seconds for the Retry-After of an overload 503, drawn from the current settings
        (``RetryAfter``): every refusal for load or rate says it this way."""
        settings = self.settings
        drawn = self._retry_after
        if drawn.base != settings.retry_after or drawn.spread != max(0, settings.retry_after_spread):
            drawn = self._retry_after = RetryAfter.of(settings, self._uniform)
        return drawn.seconds()

    def classify(self, lag: float, pending: int) -> Sample:
        settings = self.settings
        watch_pending = settings.max_pending > 0
        if lag >= settings.lag_high or (watch_pending and pending >= settings.max_pending):
            return Sample.HIGH
        # the pending band: below 80 % of the limit counts as calm again
        if lag < settings.lag_low and (not watch_pending or pending < 0.8 * settings.max_pending):
            return Sample.LOW
        return Sample.MID

    def sample(self, lag: float, pending: int = 0) -> LoadState:
        """One load sample; returns the state after it."""
        now = self.clock.seconds()
        self.last_lag, self.last_pending = lag, pending
        if now - self._window_start >= 1.0:
            self.admitted_rate = self._admitted / (now - self._window_start)
            self._admitted, self._window_start = 0, now
        sample = self.classify(lag, pending)
        self._high_run = self._high_run + 1 if sample is Sample.HIGH else 0
        if sample is Sample.LOW:
            if self._low_since is None:
                self._low_since = now
        else:
            self._low_since = None
        following = TRANSITIONS[(self.state, sample)]
        if following is not self.state:
            if self.state is LoadState.NORMAL and self._high_run < self.settings.high_samples:
                following = self.state  # one late timer is not overload
            elif self.state is LoadState.OVERLOADED and (
                self._low_since is None or now - self._low_since < self.settings.recover
            ):
                following = self.state  # not calm for long enough yet
        if following is not self.state:
            self._enter(following, now, lag, pending)
        elif self.throttle is not None and now - self._adjusted_at >= self.ADJUST_EVERY - 1e-9:
            self._adjust(self.throttle, sample, now)
        return self.state

    def _enter(self, state: LoadState, now: float, lag: float, pending: int) -> None:
        self.state = state
        self.changed_at = now
        if state is LoadState.OVERLOADED:
            recent = max(self.admitted_rate, self._admitted / max(now - self._window_start, 1e-3))
            floor = self.settings.min_new_per_second
            self.throttle = TokenBucket(max(floor, recent / 2), 1.0, now)
            self.throttle.tokens = 0.0  # nothing saved up: the first admission waits its turn
            self._adjusted_at = now
        else:
            self.throttle = None
        log.info(
            "load {state}: event-loop lag {lag:.0f} ms, {pending} requests pending, new work let in at {rate}",
            state=state.value,
            lag=1000 * lag,
            pending=pending,
            rate="any rate" if self.throttle is None else f"{self.throttle.rate:.1f}/s",
        )
        if self.on_change is not None:
            self.on_change(state)

    def _adjust(self, throttle: TokenBucket, sample: Sample, now: float) -> None:
        self._adjusted_at = now
        if sample is Sample.HIGH:
            throttle.rate = max(self.settings.min_new_per_second, throttle.rate * self.DECREASE)
        elif sample is Sample.LOW:
            throttle.rate += max(1.0, throttle.rate * self.INCREASE)  # from nothing, too
        throttle.burst = max(1.0, throttle.rate * self.ADJUST_EVERY)

    @property
    def overloaded(self) -> bool:
        return self.state is LoadState.OVERLOADED

    def admit_new(self, throttled: bool = True) -> str | None:
        """None to admit one unit of new work, else the reason it is refused; ``throttled=False``
        for work another bound governs while overloaded (``setup_window``): only the configured
        rate cap applies to it."""
        reason = self._limited(throttled, spend=True)
        if reason is None:
            self._admitted += 1
        return reason

    def refuses_new(self, throttled: bool = True) -> str | None:
        """The reason ``admit_new(throttled)`` would refuse now, or None; nothing is spent, so
        new work this lets through is still counted by ``admit_new`` on its way."""
        return self._limited(throttled, spend=False)

    def _limited(self, throttled: bool, spend: bool) -> str | None:
        now = self.clock.seconds()
        for bucket, reason in ((self.throttle if throttled else None, "overloaded"), (self._arrivals, "new_work_rate")):
            if bucket is not None and not (bucket.take(now) if spend else bucket.has_token(now)):
                return reason
        return None


class LoadProbe:
    """Every ``interval`` seconds: how late this timer ran, and a pending count → ``sample``.

    A 1 s probe would notice overload a second late; at 50 ms the controller reacts while the
    backlog is still a fraction of a second of work.
    """

    def __init__(self, clock: IReactorTime, interval: float, sample: Callable[[float, int], object],
                 pending: Callable[[], int] = lambda: 0) -> None:
        self.clock = clock
        self.interval = interval
        self.sample = sample
        self.pending = pending
        self._due = 0.0
        self._timer: IDelayedCall | None = None

    def start(self) -> None:
        self._due = self.clock.seconds() + self.interval
        self._timer = self.clock.callLater(self.interval, self._tick)

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _tick(self) -> None:
        self.sample(max(0.0, self.clock.seconds() - self._due), self.pending())
        self.start()


# --- what is new work ------------------------------------------------------------------------


def aor_of(request: Request) -> str | None:
    """The To URI of a REGISTER, as ``Registrations`` keys bindings by it."""
    try:
        return to_aor(request)  # once per message: three checks ask per REGISTER
    except (HeaderError, ValueError):
        return None


def is_new_work(request: Request, connection: Connection, registrations: Registrations) -> bool:
    """Whether admitting ``request`` takes on new work (see the module docstring)."""
    method = request.method
    if method in NEVER_NEW:
        return False
    if method == "REGISTER":
        if connection.transport not in WEBSOCKET_TRANSPORTS:
            return True
        return not registrations.has_aor_on_flow(connection.id, aor_of(request))
    try:
        return to_tag(request) is None
    except (HeaderError, ValueError):
        return True  # a To that does not parse is no dialog of ours


def service_unavailable(request: Request, retry_after: int, why: str) -> Response:
    """RFC 3261 §21.5.4: 503 with Retry-After, so the client waits or goes elsewhere."""
    response = with_to_tag(make_local_response(request, 503, f"Service Unavailable ({why})"))
    response.headers.add("Retry-After", str(retry_after))
    return response


class RefusalSampler:
    """At most one info line per ``interval`` about refusals made in bulk (before a transaction,
    or by a per-source limit): the Call-ID of one, and how many there were since the last line.
    At the rates these refusals come, a line each would cost as much CPU as the refusal."""

    def __init__(self, clock: IReactorTime, interval: float = 1.0) -> None:
        self.clock = clock
        self.interval = interval
        self._unlogged = 0
        self._next = 0.0

    def refused(self, what: str, call_id: str | None, reason: str, peer: object) -> None:
        self._unlogged += 1
        now = self.clock.seconds()
        if now < self._next:
            return
        log.info(
            "{what} {call_id} from {peer} refused ({reason}) without a transaction; "
            "{count} refused so since the last such line",
            what=what,
            call_id=call_id,
            peer=peer,
            reason=reason,
            count=self._unlogged,
        )
        self._unlogged = 0
        self._next = now + self.interval


# --- the chain the policy calls --------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    reason: str  # the label of epcscf_overload_refusals_total
    response: Response


AdmissionCheck = Callable[[ProxiedRequest], "Refusal | None"]


class AdmissionChain:
    """The checks a request passes before it is routed, in order; the first refusal wins."""

    def __init__(self) -> None:
        self._checks: list[tuple[str, AdmissionCheck]] = []
        #: observer of every refusal, by reason (metrics)
        self.on_refused: Callable[[str], None] | None = None

    def add(self, name: str, check: AdmissionCheck) -> None:
        """Add (or replace) the check called ``name``."""
        self.remove(name)
        self._checks.append((name, check))

    def add_first(self, name: str, check: AdmissionCheck) -> None:
        """Add (or replace) the check called ``name`` before every other."""
        self.remove(name)
        self._checks.insert(0, (name, check))

    def remove(self, name: str) -> None:
        self._checks = [(n, c) for n, c in self._checks if n != name]

    def names(self) -> list[str]:
        return [name for name, _ in self._checks]

    def __call__(self, context: ProxiedRequest) -> Reject | None:
        for _, check in self._checks:
            refusal = check(context)
            if refusal is not None:
                request = context.request
                log.info(
                    "{method} {call_id} refused {status} ({reason})",
                    method=request.method,
                    call_id=request.headers.get("Call-ID"),
                    status=refusal.response.status,
                    reason=refusal.reason,
                )
                if self.on_refused is not None:
                    self.on_refused(refusal.reason)
                return Reject(refusal.response)
        return None


class NewWorkGate:
    """The check that refuses new work while overloaded or over the new-work rate cap.

    A registration takes two REGISTERs (RFC 3261 §22.2: the first is challenged, the second
    carries credentials).  Once the first was let in and challenged, the second finishes work
    already admitted: refusing it would waste the first, so a REGISTER with credentials for an
    AOR challenged on the same flow within ``CHALLENGE_TTL`` is not new work.
    """

    #: seconds a challenge keeps the answering REGISTER admitted (RFC 3261 Timer F at T1 0.5 s)
    CHALLENGE_TTL = 32.0
    MAX_CHALLENGED = 100_000  # registrations in progress remembered at most

    def __init__(self, controller: OverloadController, registrations: Registrations,
                 window: "SetupWindow | None" = None) -> None:
        self.controller = controller
        self.registrations = registrations
        #: the bound on calls in setup (``epcscf.pcscf.setup_window``): new INVITEs pass it too
        self.window = window
        #: (flow id, AOR) → until when its answer to a challenge is admitted; oldest first
        self._challenged: collections.OrderedDict[tuple[str, str], float] = collections.OrderedDict()

    def register_answered(self, context: ProxiedRequest, response: Response) -> None:
        """A final response to a WIC's REGISTER passed toward the WIC."""
        if not self._challenged and response.status not in (401, 407):
            return  # nothing to forget or remember (the usual refresh)
        aor = aor_of(context.request)
        if aor is None:
            return
        key = (context.connection.id, aor)
        self._challenged.pop(key, None)
        if response.status in (401, 407):
            now = self.controller.clock.seconds()
            challenged = self._challenged
            while challenged and (next(iter(challenged.values())) <= now or len(challenged) >= self.MAX_CHALLENGED):
                challenged.popitem(last=False)
            challenged[key] = now + self.CHALLENGE_TTL

    def _answers_a_challenge(self, context: ProxiedRequest) -> bool:
        request = context.request
        if request.method != "REGISTER" or not self._challenged:
            return False
        headers = request.headers
        if "authorization" not in headers and "proxy-authorization" not in headers:
            return False
        until = self._challenged.get((context.connection.id, aor_of(request) or ""))
        return until is not None and self.controller.clock.seconds() < until

    def __call__(self, context: ProxiedRequest) -> Refusal | None:
        controller = self.controller
        request = context.request
        if not is_new_work(request, context.connection, self.registrations) or self._answers_a_challenge(context):
            return None
        # A new call is bounded by the window of calls in setup, which follows the node's own
        # throughput without delay; the lag-driven throttle governs the rest of the new work.
        window = self.window if request.method == "INVITE" and self.window is not None and self.window.enabled else None
        reason = controller.admit_new(throttled=window is None)
        if reason is None:
            if window is None or window.admit(context):
                return None
            reason = "calls_in_setup"
        return Refusal(reason, service_unavailable(request, controller.retry_after(), "overloaded"))
