"""RFC 7675 consent freshness on a task.Clock."""

from __future__ import annotations

import random
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock
from twisted.trial import unittest

from epcscf.ice.consent import ConsentFreshness


class ConsentFreshnessTests(unittest.TestCase):
    def make(self, fraction: float = 0.5, sends: bool = True, **kwargs: float) -> ConsentFreshness:
        self.clock = Clock()
        self.lost: list[tuple[float, str]] = []
        self.checks: list[float] = []
        return ConsentFreshness(
            self.clock,
            timeout=kwargs.get("timeout", 30.0),
            interval=kwargs.get("interval", 5.0),
            min_interval=kwargs.get("min_interval", 4.0),
            on_lost=lambda reason: self.lost.append((self.clock.seconds(), reason)),
            send_check=(lambda: self.checks.append(self.clock.seconds())) if sends else None,
            random_fraction=lambda: fraction,
        )

    def test_checks_every_interval_and_expiry_30_s_after_last_evidence(self) -> None:
        consent = self.make()
        consent.start()
        self.clock.pump([1.0] * 12)
        self.assertEqual(self.checks, [5.0, 10.0])
        consent.refreshed()  # at 12 s
        self.clock.pump([1.0] * 41)
        self.assertEqual(len(self.lost), 1)
        self.assertEqual(self.lost[0][0], 42.0)
        self.assertIn("30 s", self.lost[0][1])
        # RFC 7675 §5.1: no more checks once consent is lost.
        self.assertEqual(self.checks[-1], 40.0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_interval_is_randomised_0_8_to_1_2_and_never_below_4_s(self) -> None:
        self.assertEqual(self.make(fraction=0.0).next_interval(), 4.0)
        self.assertAlmostEqual(self.make(fraction=1.0).next_interval(), 6.0)
        self.assertEqual(self.make(fraction=0.0, interval=4.5).next_interval(), 4.0)
        self.assertAlmostEqual(self.make(fraction=0.0, interval=1.0, min_interval=0.0).next_interval(), 0.8)

    def test_revoke_is_immediate_and_reported_once(self) -> None:
        consent = self.make()
        consent.start()
        self.clock.advance(1)
        consent.revoke("403")
        consent.revoke("again")
        self.clock.advance(100)
        self.assertEqual(self.lost, [(1.0, "403")])
        self.assertEqual(self.checks, [])

    def test_monitor_only_sends_nothing(self) -> None:
        consent = self.make(sends=False)
        consent.start()
        self.clock.advance(29.9)
        consent.refreshed()
        self.clock.advance(29.9)
        self.assertEqual(self.lost, [])
        self.clock.advance(0.1)
        self.assertEqual(len(self.lost), 1)
        self.assertEqual(self.checks, [])

    def test_stop_cancels_without_report(self) -> None:
        consent = self.make()
        consent.start()
        consent.stop()
        self.clock.advance(100)
        self.assertEqual((self.lost, self.checks, self.clock.getDelayedCalls()), ([], [], []))


class _TwoTimerConsent:
    """The consent freshness before it had one timer (an expiry reset on each evidence, and a
    check timer): the reference the one-timer version must match, instant for instant."""

    def __init__(self, clock: Clock, timeout: float, interval: float, fraction: Callable[[], float],
                 on_lost: Callable[[str], None], send_check: Callable[[], None] | None) -> None:
        self.clock, self.timeout, self.interval, self.fraction = clock, timeout, interval, fraction
        self.on_lost, self.send_check = on_lost, send_check
        self.expiry: IDelayedCall | None = None
        self.next_check: IDelayedCall | None = None
        self.lost = False

    def start(self) -> None:
        self.refreshed()
        if self.send_check is not None and self.next_check is None:
            self.next_check = self.clock.callLater(max(4.0, self.interval * (0.8 + 0.4 * self.fraction())), self.check_due)

    def refreshed(self) -> None:
        if self.lost:
            return
        if self.expiry is not None and self.expiry.active():
            self.expiry.reset(self.timeout)
        else:
            self.expiry = self.clock.callLater(self.timeout, self.expired)

    def check_due(self) -> None:
        self.next_check = None
        if self.lost or self.send_check is None:
            return
        self.send_check()
        self.next_check = self.clock.callLater(max(4.0, self.interval * (0.8 + 0.4 * self.fraction())), self.check_due)

    def expired(self) -> None:
        self.lost = True
        if self.next_check is not None and self.next_check.active():
            self.next_check.cancel()
        self.on_lost("expired")


class OneTimerTests(unittest.TestCase):
    def test_one_clock_call_at_a_time(self) -> None:
        clock = Clock()
        consent = ConsentFreshness(clock, timeout=30.0, on_lost=lambda reason: None, send_check=lambda: None)
        consent.start()
        for step in range(40):
            self.assertEqual(len(clock.getDelayedCalls()), 1)
            if step % 3 == 0:
                consent.refreshed()
            clock.advance(1.0)
        consent.stop()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_checks_and_expiry_at_the_instants_of_two_timers(self) -> None:
        """Random evidence (none, some, often) with and without checks: the same checks sent and
        the same loss, at the same instants, as the two-timer version."""
        rng = random.Random(7675)
        for trial in range(60):
            sends = trial % 3 != 0
            gaps = [rng.choice((0.5, 1.0, 2.5, 4.0, 7.0, 13.0, 29.0)) for _ in range(rng.randrange(1, 12))]
            fractions = [rng.random() for _ in range(40)]
            seen: list[list[tuple[float, str]]] = []
            for make in (self._one_timer, self._two_timers):
                clock = Clock()
                events: list[tuple[float, str]] = []
                draw = iter(fractions)
                consent = make(clock, lambda: next(draw), lambda reason: events.append((clock.seconds(), "lost")),
                               (lambda: events.append((clock.seconds(), "check"))) if sends else None)
                consent.start()
                for gap in gaps:
                    clock.pump([gap / 10] * 10)
                    consent.refreshed()
                clock.pump([0.5] * 140)
                seen.append([(round(at, 6), what) for at, what in events])
            self.assertEqual(seen[0], seen[1], (trial, gaps))
            self.assertEqual(seen[0][-1][1], "lost")

    @staticmethod
    def _one_timer(clock: Clock, fraction: Callable[[], float], on_lost: Callable[[str], None],
                   send_check: Callable[[], None] | None) -> ConsentFreshness:
        return ConsentFreshness(clock, timeout=30.0, on_lost=on_lost, send_check=send_check, random_fraction=fraction)

    @staticmethod
    def _two_timers(clock: Clock, fraction: Callable[[], float], on_lost: Callable[[str], None],
                    send_check: Callable[[], None] | None) -> _TwoTimerConsent:
        return _TwoTimerConsent(clock, 30.0, 5.0, fraction, on_lost, send_check)
