"""RFC 7675 consent freshness on a task.Clock."""

from __future__ import annotations

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
