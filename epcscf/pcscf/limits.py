"""Per-source limits: what one source may not have, however idle the eP-CSCF is.

* Messages per second per WebSocket flow (``FlowRateLimiter``): a token bucket each, checked
  before a message reaches the transaction layer; the excess is refused
  (``answer_refused_message``, ``RateRefusals``) and a flow that keeps flooding is closed with 1008.
  The core side's sources that are no trusted core address get the same, per UDP address and
  port and per TCP/TLS connection (``[overload] untrusted_source_messages_per_second``; a
  flooding TCP/TLS connection is closed, a UDP source ignored for ``flow_window``); trusted
  core addresses carry every WIC's traffic and are not limited.
* Failed REGISTER authentications per AOR (``AuthFailures``): above a count in a window the
  AOR is answered 403 locally for a while, without asking the core — password guessing costs
  the core nothing more.
* WebSocket connections per IP address are counted by the listener (``epcscf.ws.protocol``).

Sans-IO like ``epcscf.pcscf.admission``: fed messages and a clock, they answer with verdicts.
"""

from __future__ import annotations

import collections
import enum
from typing import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from epcscf.pcscf.admission import OverloadSettings, Refusal, RefusalSampler, TokenBucket, aor_of, service_unavailable
from epcscf.sip.connection import Connection
from epcscf.sip.headers import HeaderError
from epcscf.sip.message import Message, Request, Response
from epcscf.sip.proxy import ProxiedRequest
from epcscf.sip.proxy_rules import make_local_response, with_to_tag

log = Logger(namespace="epcscf.pcscf.limits")



class AuthFailures:
    """Failed REGISTER authentications per AOR; too many in a window → 403 locally for a while.

    A failure is a 403, or a 401/407 to a REGISTER that carried credentials whose challenge
    is not ``stale=true`` (RFC 7616 §3.3: a stale nonce is no wrong password).  The first
    401 of every registration (no credentials yet) is the normal digest exchange
    (RFC 3261 §22.2) and is not counted.  A 2xx forgets the AOR's failures.
    """

    MAX_TRACKED = 100_000  # AORs with recent failures kept at most (memory bound under attack)

    def __init__(self, settings: OverloadSettings, clock: IReactorTime) -> None:
        self.settings = settings
        self.clock = clock
        #: AOR → (first failure in the window, failures); oldest window first
        self._failures: collections.OrderedDict[str, tuple[float, int]] = collections.OrderedDict()
        #: AOR → locked until; oldest lock first
        self._locked: collections.OrderedDict[str, float] = collections.OrderedDict()

    def locked(self, aor: str) -> bool:
        until = self._locked.get(aor)
        if until is None:
            return False
        if self.clock.seconds() < until:
            return True
        del self._locked[aor]
        return False

    def register_answered(self, request: Request, response: Response) -> None:
        """A final response to a WIC's REGISTER passed toward the WIC."""
        if self.settings.auth_failures <= 0:
            return
        status = response.status
        if 200 <= status < 300:
            if not self._failures:
                return  # nothing to forget (the usual refresh): no AOR to work out
            aor = aor_of(request)
            if aor is not None:
                self._failures.pop(aor, None)
            return
        if not _is_auth_failure(request, response):
            return
        aor = aor_of(request)
        if aor is None:
            return
        now = self.clock.seconds()
        self._prune(now)
        first, count = self._failures.pop(aor, (now, 0))
        if now - first >= self.settings.auth_window:
            first, count = now, 0
        count += 1
        if count >= self.settings.auth_failures:
            self._locked.pop(aor, None)
            self._locked[aor] = now + self.settings.auth_lockout
            log.info("{aor}: {count} failed authentications in {window:g} s; refused locally for {lockout:g} s",
                     aor=aor, count=count, window=self.settings.auth_window, lockout=self.settings.auth_lockout)
            return
        self._failures[aor] = (first, count)

    def _prune(self, now: float) -> None:
        window = self.settings.auth_window
        failures = self._failures
        while failures:
            aor, (first, _) = next(iter(failures.items()))
            if now - first < window and len(failures) < self.MAX_TRACKED:
                break
            del failures[aor]
        locked = self._locked
        while locked:
            aor, until = next(iter(locked.items()))
            if now < until and len(locked) < self.MAX_TRACKED:
                break
            del locked[aor]

    def __call__(self, context: ProxiedRequest) -> Refusal | None:
        request = context.request
        if request.method != "REGISTER" or not self._locked:
            return None
        aor = aor_of(request)
        if aor is None or not self.locked(aor):
            return None
        # RFC 3261 §21.4.4: 403, "authorization will not help" — not until the lock ends.
        response = with_to_tag(make_local_response(request, 403, "Forbidden (too many failed authentications)"))
        return Refusal("auth_failures", response)


def _is_auth_failure(request: Request, response: Response) -> bool:
    if response.status == 403:
        return True
    if response.status not in (401, 407):
        return False
    headers = request.headers
    if "authorization" not in headers and "proxy-authorization" not in headers:
        return False
    challenges = response.headers.get_all("www-authenticate") + response.headers.get_all("proxy-authenticate")
    return not any("stale=true" in value.lower().replace(" ", "").replace('"', "") for value in challenges)


class FlowVerdict(enum.Enum):
    ADMIT = "admit"
    REFUSE = "refuse"  # over the rate: a request is answered 503, an ACK or response dropped
    CLOSE = "close"  # flooding: refuse, and close the flow (WebSocket 1008)
    DROP = "drop"  # what still arrives while that flow closes: ignored


#: read for every message a flow brings, as a module constant (``EnumType`` has a slow
#: ``__getattr__`` hook in Python 3.11: ``epcscf.sip.transaction_machine.TERMINATED``)
ADMIT = FlowVerdict.ADMIT


class _FlowBudget:
    __slots__ = ("bucket", "window_start", "refused")

    def __init__(self, bucket: TokenBucket, now: float) -> None:
        self.bucket = bucket
        self.window_start = now
        self.refused = 0


class FlowRateLimiter:
    """Messages per second per flow (a token bucket each); a flow that keeps flooding is closed.

    ``rate`` reads the limit from the settings (by default ``flow_messages_per_second``, the
    WebSocket flows'); the core side's untrusted sources have a limiter of their own.  At most
    ``MAX_FLOWS`` flows are remembered: UDP sources are whatever the network sends from, and the
    longest known is forgotten first (a forgotten source starts again with a full bucket)."""

    MAX_FLOWS = 100_000
    #: seconds between two sweeps of the resting sources (``sweep``): at the ``MAX_FLOWS`` cap a
    #: sweep takes ~50 ms, 0.5 % of a CPU; at a few thousand, a millisecond
    SWEEP_INTERVAL = 10.0

    def __init__(self, settings: OverloadSettings, clock: IReactorTime,
                 rate: Callable[[OverloadSettings], float] = lambda settings: settings.flow_messages_per_second) -> None:
        self.settings = settings
        self.clock = clock
        self.rate = rate
        self._flows: dict[str, _FlowBudget] = {}
        self._swept_at = clock.seconds()

    def __len__(self) -> int:
        return len(self._flows)

    def arrived(self, flow_id: str) -> FlowVerdict:
        now = self.clock.seconds()
        if now - self._swept_at >= self.SWEEP_INTERVAL:
            self.sweep()  # also without [overload] enabled (no load probe to call it)
        budget = self._flows.get(flow_id)
        if budget is None:
            settings = self.settings
            if len(self._flows) >= self.MAX_FLOWS:
                del self._flows[next(iter(self._flows))]
            budget = self._flows[flow_id] = _FlowBudget(TokenBucket(self.rate(settings), settings.flow_burst, now), now)
        close_after = self.settings.flow_close_after
        if close_after > 0 and budget.refused >= close_after:
            if now - budget.window_start < self.settings.flow_window:
                return FlowVerdict.DROP  # told to close already (a UDP source: ignored for the window)
            budget.window_start, budget.refused = now, 0  # a source that cannot be closed is heard again
        if budget.bucket.take(now):
            return ADMIT
        if now - budget.window_start >= self.settings.flow_window:
            budget.window_start, budget.refused = now, 0
        budget.refused += 1
        if close_after > 0 and budget.refused >= close_after:
            return FlowVerdict.CLOSE
        return FlowVerdict.REFUSE

    def forget(self, flow_id: str) -> None:
        self._flows.pop(flow_id, None)

    def sweep(self) -> None:
        """Every ``SWEEP_INTERVAL`` (called often, from the load probe): forget the resting sources.

        A budget whose bucket is full again and that has no refusals in a current window is
        replaced, if its source comes back, by the fresh one ``arrived`` makes: the same
        verdicts (its window at most starts later).  Without this a fuzzing or port-scanning
        peer leaves an entry per source address and port or per TCP connection (up to
        ``MAX_FLOWS``), allocated all through its burst: they kept the burst's memory from going
        back (docs/performance.md, "What pins a fuzz burst's memory").  The table is built anew,
        as a dict never shrinks.
        """
        now = self.clock.seconds()
        if now - self._swept_at < self.SWEEP_INTERVAL:
            return
        self._swept_at = now
        window = self.settings.flow_window
        self._flows = {
            flow_id: budget for flow_id, budget in self._flows.items()
            # refused in a current window, or tokens spent: not what a fresh budget would be
            if (budget.refused and now - budget.window_start < window)
            or budget.bucket.tokens + (now - budget.bucket.stamp) * budget.bucket.rate < budget.bucket.burst
        }


def answer_refused_message(message: Message, retry_after: int) -> Response | None:
    """What a message refused by the per-flow limit gets back.

    A request (other than ACK) is answered 503 + Retry-After statelessly (RFC 3261 §21.5.4;
    §8.2: a UAS may answer before creating state): the WIC learns why and when to retry,
    and a retransmission is answered the same way.  An ACK cannot be answered (§17) and is
    dropped.  A response is dropped as well: it cannot be refused, and relaying it would let
    the flooding flow keep the node busy; the peer's client transaction retransmits or
    times out as for a lost message (§17.1).
    """
    if not isinstance(message, Request) or message.method == "ACK":
        return None
    try:
        return service_unavailable(message, retry_after, "message rate limit")
    except (HeaderError, ValueError):
        return None


class RateRefusals:
    """What a message over its flow's or source's rate gets (``answer_refused_message``),
    counted by reason and logged by sample (``admission.RefusalSampler``: a flood of refusals
    must not become a flood of log lines)."""

    def __init__(self, clock: IReactorTime, on_refused: Callable[[str], None], retry_after: Callable[[], int]) -> None:
        self.on_refused = on_refused
        self.retry_after = retry_after
        self.sampler = RefusalSampler(clock)

    def __call__(self, message: Message, connection: Connection, verdict: FlowVerdict, reason: str) -> bool:
        """Refuse ``message``; True when its source kept flooding and its connection is to close."""
        if verdict is FlowVerdict.DROP:
            return False
        self.on_refused(reason)
        what = message.method if isinstance(message, Request) else "response"
        self.sampler.refused(what, message.headers.get("call-id"), reason, connection.remote)
        answer = answer_refused_message(message, self.retry_after())
        if answer is not None:
            try:
                connection.send_message(answer)
            except Exception as error:  # the flow may be closing: nothing more to tell it
                log.info("{connection}: 503 not sent: {error}", connection=connection, error=error)
        if verdict is not FlowVerdict.CLOSE:
            return False
        log.info("{connection} closed: kept sending over the message rate limit", connection=connection)
        return True
