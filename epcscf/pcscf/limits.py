"""Per-source limits: what one source may not have, however idle the eP-CSCF is.

* Messages per second per WebSocket flow (``FlowRateLimiter``): a token bucket each, checked
  before a message reaches the transaction layer; the excess is refused
  (``answer_refused_message``) and a flow that keeps flooding is closed with 1008.
* Failed REGISTER authentications per AOR (``AuthFailures``): above a count in a window the
  AOR is answered 403 locally for a while, without asking the core — password guessing costs
  the core nothing more.
* WebSocket connections per IP address are counted by the listener (``epcscf.ws.protocol``).

Sans-IO like ``epcscf.pcscf.admission``: fed messages and a clock, they answer with verdicts.
"""

from __future__ import annotations

import collections
import enum

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from epcscf.pcscf.admission import OverloadSettings, Refusal, TokenBucket, aor_of, service_unavailable
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


class _FlowBudget:
    __slots__ = ("bucket", "window_start", "refused")

    def __init__(self, bucket: TokenBucket, now: float) -> None:
        self.bucket = bucket
        self.window_start = now
        self.refused = 0


class FlowRateLimiter:
    """Messages per second per flow (a token bucket each); a flow that keeps flooding is closed."""

    def __init__(self, settings: OverloadSettings, clock: IReactorTime) -> None:
        self.settings = settings
        self.clock = clock
        self._flows: dict[str, _FlowBudget] = {}

    def __len__(self) -> int:
        return len(self._flows)

    def arrived(self, flow_id: str) -> FlowVerdict:
        now = self.clock.seconds()
        budget = self._flows.get(flow_id)
        if budget is None:
            settings = self.settings
            budget = self._flows[flow_id] = _FlowBudget(
                TokenBucket(settings.flow_messages_per_second, settings.flow_burst, now), now
            )
        close_after = self.settings.flow_close_after
        if close_after > 0 and budget.refused >= close_after:
            return FlowVerdict.DROP  # told to close already
        if budget.bucket.take(now):
            return FlowVerdict.ADMIT
        if now - budget.window_start >= self.settings.flow_window:
            budget.window_start, budget.refused = now, 0
        budget.refused += 1
        if close_after > 0 and budget.refused >= close_after:
            return FlowVerdict.CLOSE
        return FlowVerdict.REFUSE

    def forget(self, flow_id: str) -> None:
        self._flows.pop(flow_id, None)


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
