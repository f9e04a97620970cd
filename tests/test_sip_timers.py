"""TimerQueue: many transaction timers on one reactor call, fired at their exact deadlines."""

from __future__ import annotations

from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.internet.task import Clock
from twisted.trial import unittest

from epcscf.sip.timers import TimerQueue


class TimerQueueTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.queue = TimerQueue(self.clock)
        self.fired: list[tuple[str, float]] = []

    def note(self, name: str) -> None:
        self.fired.append((name, self.clock.seconds()))

    def test_entries_fire_at_their_deadlines_in_order_on_one_reactor_call(self) -> None:
        self.queue.callLater(32, self.note, "F")
        self.queue.callLater(0.5, self.note, "E")
        self.queue.callLater(4, self.note, "E2")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0.49)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.01)
        self.assertEqual(self.fired, [("E", 0.5)])
        self.clock.advance(3.5)
        self.assertEqual(self.fired[-1], ("E2", 4.0))
        self.clock.advance(27.99)
        self.assertEqual(len(self.fired), 2)
        self.clock.advance(0.01)
        self.assertEqual(self.fired[-1], ("F", 32.0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_same_deadline_fires_in_arming_order(self) -> None:
        for name in "abc":
            self.queue.callLater(1, self.note, name)
        self.clock.advance(1)
        self.assertEqual([name for name, _ in self.fired], ["a", "b", "c"])

    def test_cancelled_entries_never_fire_and_leave_nothing_scheduled(self) -> None:
        calls = [self.queue.callLater(32, self.note, str(i)) for i in range(500)]
        for call in calls:
            self.assertTrue(call.active())
            call.cancel()
            self.assertFalse(call.active())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.queue.pending(), 0)
        self.clock.advance(100)
        self.assertEqual(self.fired, [])
        self.assertRaises(AlreadyCancelled, calls[0].reset, 1)

    def test_dead_entries_are_compacted_while_others_stay_armed(self) -> None:
        keep = self.queue.callLater(40, self.note, "keep")
        for i in range(1000):
            self.queue.callLater(32, self.note, str(i)).cancel()
        self.assertLess(len(self.queue._heap), 200)
        self.assertEqual(self.queue.pending(), 1)
        self.clock.advance(40)
        self.assertEqual(self.fired, [("keep", 40.0)])
        self.assertFalse(keep.active())
        self.assertRaises(AlreadyCalled, keep.reset, 1)

    def test_cancelling_the_earliest_entry_still_fires_the_later_one_on_time(self) -> None:
        early = self.queue.callLater(1, self.note, "early")
        self.queue.callLater(5, self.note, "late")
        early.cancel()
        self.clock.advance(4.99)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.01)
        self.assertEqual(self.fired, [("late", 5.0)])

    def test_reset_moves_an_entry(self) -> None:
        call = self.queue.callLater(10, self.note, "moved")
        self.clock.advance(2)
        call.reset(1)
        self.assertEqual(call.getTime(), 3.0)
        self.clock.advance(1)
        self.assertEqual(self.fired, [("moved", 3.0)])
        self.clock.advance(20)
        self.assertEqual(len(self.fired), 1)  # the old deadline does not fire it again

    def test_a_callback_may_arm_and_cancel_timers(self) -> None:
        later = self.queue.callLater(9, self.note, "cancelled by first")

        def first() -> None:
            self.note("first")
            later.cancel()
            self.queue.callLater(0.5, self.note, "armed by first")

        self.queue.callLater(1, first)
        self.clock.advance(1)
        self.clock.advance(0.5)
        self.assertEqual(self.fired, [("first", 1.0), ("armed by first", 1.5)])
        self.clock.advance(10)
        self.assertEqual(len(self.fired), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_failing_callback_is_logged_and_the_others_still_fire(self) -> None:
        def broken() -> None:
            raise RuntimeError("boom")

        self.queue.callLater(1, broken)
        self.queue.callLater(1, self.note, "after")
        self.clock.advance(1)
        self.assertEqual(self.fired, [("after", 1.0)])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class FixedDelayOwner:
    """What ``call_fixed`` calls back: records the token and when."""

    def __init__(self, clock: Clock, fired: list[tuple[str, float]]) -> None:
        self.clock, self.fired = clock, fired

    def fixed_timer_fired(self, token: str) -> None:
        self.fired.append((token, self.clock.seconds()))


class FixedDelayTests(unittest.TestCase):
    """``call_fixed``: the 64*T1 and T4 timers of settled transactions, one deque per delay."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.queue = TimerQueue(self.clock)
        self.fired: list[tuple[str, float]] = []
        self.owner = FixedDelayOwner(self.clock, self.fired)

    def note(self, name: str) -> None:
        self.fired.append((name, self.clock.seconds()))

    def test_fixed_delay_entries_fire_at_their_deadlines_among_the_heap_entries(self) -> None:
        self.queue.call_fixed(32, self.owner, "J1")
        self.clock.advance(1)
        self.queue.call_fixed(32, self.owner, "J2")
        self.queue.call_fixed(5, self.owner, "I")
        self.queue.callLater(20, self.note, "G")
        self.queue.callLater(32, self.note, "F")  # the same deadline as J2, armed after it
        self.assertEqual(self.queue.pending(), 5)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(5)
        self.assertEqual(self.fired, [("I", 6.0)])
        self.clock.advance(15)
        self.assertEqual(self.fired[1:], [("G", 21.0)])
        self.clock.advance(10.99)
        self.assertEqual(len(self.fired), 2)
        self.clock.advance(0.01)
        self.assertEqual(self.fired[2:], [("J1", 32.0)])
        self.clock.advance(1)
        self.assertEqual(self.fired[3:], [("F", 33.0), ("J2", 33.0)])  # on a tie the heap's first
        self.assertEqual(self.queue.pending(), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_cancelled_entry_lets_go_of_its_owner_and_never_fires(self) -> None:
        import weakref

        owner = FixedDelayOwner(self.clock, self.fired)
        held = weakref.ref(owner)
        entry = self.queue.call_fixed(128, owner, "H")
        keep = self.queue.call_fixed(128, self.owner, "L")
        self.queue.cancel_fixed(entry)
        self.queue.cancel_fixed(entry)  # twice: nothing more
        del owner
        self.assertIsNone(held())  # the deque keeps only the deadline until it comes up
        self.assertEqual(self.queue.pending(), 1)
        self.clock.advance(128)
        self.assertEqual(self.fired, [("L", 128.0)])
        self.queue.cancel_fixed(keep)  # after it fired: nothing
        self.assertEqual(self.queue.pending(), 0)

    def test_cancelling_every_entry_leaves_nothing_scheduled(self) -> None:
        entries = [self.queue.call_fixed(32, self.owner, str(i)) for i in range(100)]
        call = self.queue.callLater(1, self.note, "A")
        for entry in entries:
            self.queue.cancel_fixed(entry)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # still armed for A
        call.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.queue._fixed, {})
        self.clock.advance(100)
        self.assertEqual(self.fired, [])

    def test_a_callback_may_arm_a_fixed_timer_that_is_already_due(self) -> None:
        def again(name: str) -> None:
            self.note(name)
            self.queue.call_fixed(0, self.owner, "zero")  # due now: run in the same turn

        self.queue.callLater(2, again, "A")
        self.clock.advance(2)
        self.assertEqual(self.fired, [("A", 2.0), ("zero", 2.0)])
        self.assertEqual(self.clock.getDelayedCalls(), [])
