"""RFC 7675 consent freshness, as timers on an injected clock (sans-IO).

Theory of operation.  Once a pair is selected, consent to send on it is "fresh" and expires
`timeout` seconds (30 s, RFC 7675 §5.1) after the last evidence the peer still wants our traffic:

- full ICE: we send a Binding request every `interval` randomised ×0.8–1.2 and never below
  `min_interval` (RFC 7675 §5.1: 5 s, at least 4 s), each with a new transaction id and no
  retransmission; an authenticated success response is evidence;
- ICE-lite (RFC 7675 §5.1 mirrored): we send nothing; an authenticated Binding request from
  the peer on the selected pair is evidence (browsers send one every ~5 s).

An authenticated 403 revokes consent at once (RFC 7675 §5.2).  On expiry or revocation the
owner stops sending on the 5-tuple and is told once; this object then stays inert.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class ConsentFreshness:
    """One timer per agent, armed for whichever comes first: the next check or the expiry.

    Evidence only records when it came (`refreshed`, on every consent response or lite check):
    the timer, when it fires, finds the expiry moved and re-arms for it.  Two timers (one reset
    on each evidence) cost a clock call and a reset per call more for the same instants."""

    def __init__(
        self,
        clock: IReactorTime,
        *,
        timeout: float,
        on_lost: Callable[[str], None],
        send_check: Callable[[], None] | None = None,
        interval: float = 5.0,
        min_interval: float = 4.0,
        random_fraction: Callable[[], float] = random.random,
    ) -> None:
        self._clock = clock
        self._timeout = timeout
        self._on_lost = on_lost
        self._send_check = send_check
        self._interval = interval
        self._min_interval = min_interval
        self._random_fraction = random_fraction
        self._timer: IDelayedCall | None = None
        # The instant `_timer` was armed for, and when the next check is due (None: no checks).
        self._timer_due = 0.0
        self._next_check_at: float | None = None
        self.last_evidence: float | None = None
        self.lost_reason: str | None = None

    @property
    def running(self) -> bool:
        return self._timer is not None

    def start(self) -> None:
        """The pair was just selected by a successful check: consent is fresh now."""
        if self.lost_reason is not None:
            return
        now = self._clock.seconds()
        self.last_evidence = now
        if self._send_check is not None and self._next_check_at is None:
            self._next_check_at = now + self.next_interval()
        self._arm()

    def refreshed(self) -> None:
        """Evidence of consent arrived (RFC 7675 §5.1): the expiry is now `timeout` ahead."""
        if self.lost_reason is not None:
            return
        self.last_evidence = self._clock.seconds()
        if self._timer is None:
            self._arm()

    def revoke(self, reason: str) -> None:
        """RFC 7675 §5.2: an authenticated 403 (or a DTLS fatal alert) ends consent at once."""
        self._lose(reason)

    def stop(self) -> None:
        """Cancel the timer without reporting anything (the agent is closing)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._next_check_at = None

    def release(self) -> None:
        """The agent is closed for good: stop, and let go of its callbacks (a cycle otherwise)."""
        self.stop()
        self._on_lost = _ignore
        self._send_check = None

    def next_interval(self) -> float:
        # RFC 7675 §5.1: randomised between 0.8 and 1.2 times the interval, never below 4 s.
        return max(self._min_interval, self._interval * (0.8 + 0.4 * self._random_fraction()))

    def _expiry(self) -> float:
        assert self.last_evidence is not None
        return self.last_evidence + self._timeout

    def _arm(self) -> None:
        due = self._expiry()
        if self._next_check_at is not None and self._next_check_at < due:
            due = self._next_check_at
        self._timer_due = due
        self._timer = self._clock.callLater(max(due - self._clock.seconds(), 0.0), self._fired)

    def _fired(self) -> None:
        self._timer = None
        if self.lost_reason is not None:
            return
        # The instants are compared as computed (not with the clock's sum, a hair off them).
        due = self._timer_due
        if self._expiry() <= due:
            # RFC 7675 §5.1: no evidence for `timeout`; expiry before a check due at the same instant.
            self._lose(f"no consent for {self._timeout:g} s (RFC 7675 §5.1)")
            return
        if self._next_check_at is not None and self._next_check_at <= due and self._send_check is not None:
            self._send_check()
            if self.lost_reason is not None:
                return
            self._next_check_at = self._clock.seconds() + self.next_interval()
        if self._timer is None:  # the check's answer may have come at once (and armed it)
            self._arm()

    def _lose(self, reason: str) -> None:
        if self.lost_reason is not None:
            return
        self.lost_reason = reason
        self.stop()
        self._on_lost(reason)


def _ignore(reason: str) -> None:
    """A closed agent's consent: nobody listens any more."""
