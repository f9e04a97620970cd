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
        self._expiry: IDelayedCall | None = None
        self._next_check: IDelayedCall | None = None
        self.last_evidence: float | None = None
        self.lost_reason: str | None = None

    @property
    def running(self) -> bool:
        return self._expiry is not None

    def start(self) -> None:
        """The pair was just selected by a successful check: consent is fresh now."""
        if self.lost_reason is not None:
            return
        self.refreshed()
        if self._send_check is not None and self._next_check is None:
            self._schedule_check()

    def refreshed(self) -> None:
        """Evidence of consent arrived (RFC 7675 §5.1): push the expiry `timeout` ahead."""
        if self.lost_reason is not None:
            return
        self.last_evidence = self._clock.seconds()
        if self._expiry is not None and self._expiry.active():
            self._expiry.reset(self._timeout)
        else:
            self._expiry = self._clock.callLater(self._timeout, self._expired)

    def revoke(self, reason: str) -> None:
        """RFC 7675 §5.2: an authenticated 403 (or a DTLS fatal alert) ends consent at once."""
        self._lose(reason)

    def stop(self) -> None:
        """Cancel the timers without reporting anything (the agent is closing)."""
        for call in (self._expiry, self._next_check):
            if call is not None and call.active():
                call.cancel()
        self._expiry = None
        self._next_check = None

    def release(self) -> None:
        """The agent is closed for good: stop, and let go of its callbacks (a cycle otherwise)."""
        self.stop()
        self._on_lost = _ignore
        self._send_check = None

    def next_interval(self) -> float:
        # RFC 7675 §5.1: randomised between 0.8 and 1.2 times the interval, never below 4 s.
        return max(self._min_interval, self._interval * (0.8 + 0.4 * self._random_fraction()))

    def _schedule_check(self) -> None:
        self._next_check = self._clock.callLater(self.next_interval(), self._check_due)

    def _check_due(self) -> None:
        self._next_check = None
        if self.lost_reason is not None or self._send_check is None:
            return
        self._send_check()
        if self.lost_reason is None:
            self._schedule_check()

    def _expired(self) -> None:
        self._expiry = None
        self._lose(f"no consent for {self._timeout:g} s (RFC 7675 §5.1)")

    def _lose(self, reason: str) -> None:
        if self.lost_reason is not None:
            return
        self.lost_reason = reason
        self.stop()
        self._on_lost(reason)


def _ignore(reason: str) -> None:
    """A closed agent's consent: nobody listens any more."""
