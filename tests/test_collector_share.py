"""What a call leaves for the cyclic collector to traverse while it lingers (docs/performance.md,
"The collector's share of a call").

Every young and middle collection traverses each tracked object that outlived the one before it.
A settled transaction lingers 64*T1 (RFC 3261 §17.1.1.2, §17.2.2; RFC 6026 §7.1, §7.2) with its timer
armed, so every object its timer is made of is traversed again and again for 32 s.  These tests
count, after a full collection (which stops tracking tuples of numbers and strings), the objects
the collector still tracks per lingering transaction, and check that the timers still fire when
the RFC says.
"""

from __future__ import annotations

import asyncio
import gc
import random
from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from epcscf.event_loop import EdgeReactor
from epcscf.sip import transaction_machine, transaction_server
from epcscf.sip.params import clear_memos
from epcscf.sip.timers import TimerQueue
from epcscf.sip.transaction import ClientTransaction, State, TimerSettings
from tests.test_sip_transaction_fakes import harness, request, response, run_until

LINGERING = 200


def tracked_now() -> int:
    clear_memos()  # the parsers' memos of header texts (bounded) are not the transactions'
    gc.collect()
    return len(gc.get_objects())


class LingeringTransactionTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = harness()
        self.addCleanup(self.h.layer.close)
        # What the harness records (each call, each send) is not the subject: it keeps nothing.
        self.h.user.calls = _Discard()
        self.h.udp.sent, self.h.udp.sent_at = _Discard(), _Discard()

    def tracked_per_transaction(self, settle: Any) -> float:
        """Objects the collector tracks per transaction left lingering by ``settle(i)``."""
        settle(-1)  # the first of a kind may make the layer's tables and queues: not counted
        before = tracked_now()
        for i in range(LINGERING):
            settle(i)
        return (tracked_now() - before) / LINGERING

    def settled_clients(self, method: str) -> tuple[list[ClientTransaction], float]:
        """``LINGERING`` client transactions of ``method`` answered 200 on UDP, and the objects the
        collector tracks per transaction."""
        transactions: list[ClientTransaction] = []

        def answered(i: int) -> None:
            sent = request(method, branch=f"z9hG4bK.{method}{i}", call_id=f"{method}{i}")
            transactions.append(self.h.layer.send_request(sent, self.h.udp, self.h.user))
            self.h.layer.receive(response(sent, 200), self.h.udp)

        tracked = self.tracked_per_transaction(answered)
        return transactions[1:], tracked

    def test_an_accepted_invite_client_transaction_is_two_tracked_objects_until_timer_m(self) -> None:
        transactions, tracked = self.settled_clients("INVITE")  # RFC 6026 §7.2: Accepted, Timer M
        # The transaction and its table of timers; before, its Timer M (a QueuedCall, its bound
        # method, arguments and heap tuple), its Timers A and B left in the heap, its due-now list
        # and a bound method to end it made 8 or more.
        self.assertLessEqual(tracked, 2.5)
        run_until(self.h.clock, TimerSettings().m - 0.001)
        self.assertTrue(all(t.state is State.ACCEPTED for t in transactions))
        run_until(self.h.clock, TimerSettings().m + 0.001)  # RFC 6026 §7.2: Timer M = 64*T1
        self.assertTrue(all(t.terminated for t in transactions))
        self.assertEqual(self.h.layer.transactions(), [])
        self.assertEqual(self.h.layer.pending_timers(), 0)

    def test_a_completed_non_invite_client_transaction_is_two_tracked_objects_until_timer_k(self) -> None:
        transactions, tracked = self.settled_clients("BYE")  # RFC 3261 §17.1.2.2: Completed, Timer K
        self.assertLessEqual(tracked, 2.5)
        run_until(self.h.clock, TimerSettings().t4 - 0.001)
        self.assertTrue(all(t.state is State.COMPLETED for t in transactions))
        run_until(self.h.clock, TimerSettings().t4 + 0.001)  # Timer K = T4
        self.assertTrue(all(t.terminated for t in transactions))
        self.assertEqual(self.h.layer.pending_timers(), 0)

    def test_a_completed_non_invite_server_transaction_is_one_tracked_object_until_timer_j(self) -> None:
        self.h.user.respond_with = 200

        def completed(i: int) -> None:
            # RFC 3261 §17.2.2: Completed, Timer J = 64*T1 on UDP
            self.h.layer.receive(request("BYE", branch=f"z9hG4bK.s{i}", call_id=f"s{i}", from_tag=f"a{i}"), self.h.udp)

        # The transaction alone; before, its matching fields (a NamedTuple, which the collector never
        # stops tracking) and its Timer J entry (a list holding the transaction) made 3.
        self.assertLessEqual(self.tracked_per_transaction(completed), 1.5)
        transactions = self.h.user.server_transactions[1:]
        self.assertEqual(len(transactions), LINGERING)
        self.assertTrue(all(t.state is State.COMPLETED for t in transactions))
        self.h.layer.receive(request("BYE", branch="z9hG4bK.s7", call_id="s7", from_tag="a7"), self.h.udp)
        self.assertEqual(len(self.h.user.server_transactions), LINGERING + 1)  # absorbed (§17.2.2)
        run_until(self.h.clock, TimerSettings().j - 0.001)
        self.assertTrue(all(t.state is State.COMPLETED for t in transactions))
        run_until(self.h.clock, TimerSettings().j + 0.001)
        self.assertTrue(all(t.terminated for t in transactions))
        self.assertEqual(self.h.layer.transactions(), [])


class FixedDelayOrderTests(unittest.TestCase):
    def test_entries_of_different_delays_due_together_fire_in_the_order_armed(self) -> None:
        # As the heap's entries do: a timer armed earlier for the same instant runs first
        # (Timer F armed at 0 for 32 s before a Timer E armed at 28 s for T2 = 4 s, §17.1.2.2).
        clock, fired = Clock(), []
        queue = TimerQueue(clock)

        class Owner:
            def fixed_timer_fired(self, token: str) -> None:
                fired.append((token, clock.seconds()))

        owner = Owner()
        queue.call_fixed(4, owner, "E (the first 4 s entry)")
        queue.call_fixed(32, owner, "F")
        clock.advance(4)
        clock.advance(24)
        queue.call_fixed(4, owner, "E")
        clock.advance(4)
        self.assertEqual(fired, [("E (the first 4 s entry)", 4.0), ("F", 32.0), ("E", 32.0)])


class SameScheduleTests(unittest.TestCase):
    def run_scenario(self) -> tuple[list[Any], list[float], list[float]]:
        """Client and server transactions on UDP and TCP, answered (or not) at random times:
        what the TU was told, when, and when each transport sent."""
        rng = random.Random(7)
        h = harness()
        self.addCleanup(h.layer.close)
        h.udp.sent, h.tcp.sent = _Discard(), _Discard()
        events: list[tuple[Any, ...]] = []
        for i in range(400):
            start, method, connection = rng.uniform(0, 20), rng.choice(["INVITE", "BYE", "OPTIONS"]), rng.choice([h.udp, h.tcp])
            events.append((start, "send", i, method, connection))
            events += [(start + rng.uniform(0, 40), "respond", i, method, connection, rng.choice([100, 180, 200, 486]))
                       for _ in range(rng.choice([0, 1, 2, 3]))]
            events.append((rng.uniform(0, 20), "receive", i, rng.choice(["INVITE", "BYE"]), connection))
        events.sort(key=lambda event: event[0])
        sent = {}
        for event in events:
            run_until(h.clock, event[0])
            if event[1] == "send":
                sent[event[2]] = request(event[3], branch=f"z9hG4bK.c{event[2]}", call_id=f"c{event[2]}")
                h.layer.send_request(sent[event[2]], event[4], h.user)
            elif event[1] == "respond":
                h.layer.receive(response(sent[event[2]], event[5]), event[4])
            else:
                received = request(event[3], branch=f"z9hG4bK.s{event[2]}", call_id=f"s{event[2]}", from_tag=f"f{event[2]}")
                h.layer.receive(received, event[4])
                h.layer.receive(received, event[4])  # a retransmission, absorbed
        for transaction in h.user.server_transactions[:300]:
            if not transaction.terminated and transaction.request is not None:
                transaction.respond(response(transaction.request, rng.choice([180, 200, 486])))
        run_until(h.clock, 400)
        self.assertEqual(h.layer.pending_timers(), 0)
        return h.user.calls, h.udp.sent_at, h.tcp.sent_at

    def test_a_retransmitting_client_transaction_keeps_its_schedule_among_many(self) -> None:
        # §17.1.2.2: E at T1, 2*T1, 4*T1, then T2, until F = 64*T1; each transaction on its own
        # schedule though they share the queue's entries of one delay.
        h = harness()
        self.addCleanup(h.layer.close)
        first = h.layer.send_request(request("OPTIONS", branch="z9hG4bK.o1"), h.udp, h.user)
        run_until(h.clock, 0.25)
        second = h.layer.send_request(request("OPTIONS", branch="z9hG4bK.o2", call_id="o2"), h.udp, h.user)
        run_until(h.clock, 100)
        times = h.udp.times()
        self.assertEqual([t for t in times if t % 1 in (0.0, 0.5)][:7], [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5])
        self.assertEqual([t for t in times if t % 1 in (0.25, 0.75)][:7], [0.25, 0.75, 1.75, 3.75, 7.75, 11.75, 15.75])
        self.assertEqual(h.user.calls, [(32.0, "timeout", "OPTIONS"), (32.25, "timeout", "OPTIONS")])
        self.assertTrue(first.terminated and second.terminated)

    def test_timers_on_fixed_entries_fire_as_they_did_on_the_heap(self) -> None:
        # The same scenario with every transaction timer a QueuedCall of the heap (what the
        # machine does on a clock that is not a TimerQueue) and as call_fixed entries: the same
        # retransmissions, timeouts and absorptions at the same instants (RFC 3261 §17).
        fixed = self.run_scenario()

        class NotATimerQueue:
            pass

        self.patch(transaction_machine, "TimerQueue", NotATimerQueue)
        self.patch(transaction_server, "TimerQueue", NotATimerQueue)
        heap = self.run_scenario()
        self.assertGreater(len(fixed[0]), 1000)
        self.assertEqual(fixed, heap)


class _Discard(list):  # type: ignore[type-arg]
    """A recorder's list that keeps nothing (what the harness records is not the subject)."""

    def append(self, item: Any) -> None:
        pass


class ReactorTimerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.addCleanup(self.loop.close)
        self.reactor = EdgeReactor(self.loop)

    def test_a_reactor_timer_is_one_delayed_call_and_its_callable(self) -> None:
        # Twisted gave every DelayedCall two new bound methods of the reactor (its canceller and
        # resetter), traversed by every collection for as long as the timer lived.
        calls = [self.reactor.callLater(30, _nothing)]
        before = tracked_now()
        calls += [self.reactor.callLater(30, _nothing) for _ in range(LINGERING)]
        self.assertLessEqual((tracked_now() - before) / LINGERING, 1.1)
        for call in calls:
            call.cancel()
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_reactor_timers_still_fire_move_and_cancel(self) -> None:
        fired: list[str] = []
        self.reactor.callLater(0, fired.append, "now")
        self.reactor.callLater(0, fired.append, "cancelled").cancel()
        moved = self.reactor.callLater(60, fired.append, "moved")
        due = moved.getTime()
        moved.reset(30)
        self.assertLess(abs(moved.getTime() - (due - 30)), 1)
        self.reactor.runUntilCurrent()
        self.assertEqual(fired, ["now"])
        self.assertEqual(self.reactor.getDelayedCalls(), [moved])
        moved.reset(0)
        self.reactor.runUntilCurrent()
        self.assertEqual(fired, ["now", "moved"])
        self.assertEqual(self.reactor.getDelayedCalls(), [])


def _nothing() -> None:
    pass
