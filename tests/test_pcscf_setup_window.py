"""The bound on calls in setup, sans-IO (``epcscf.pcscf.setup_window``): which part of a setup
counts, the window sized by Little's law from the measured throughput, and the 503 the gate
answers beyond it — on a ``task.Clock`` with the call model's own ``Call``."""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.task import Clock
from twisted.trial import unittest

from epcscf.pcscf.admission import NewWorkGate, OverloadController, OverloadSettings
from epcscf.pcscf.call_model import Call, CallLeg
from epcscf.pcscf.call_state import CallDirection, CallState
from epcscf.pcscf.dialogs import Side
from epcscf.pcscf.registration import Registrations
from epcscf.pcscf.setup_window import SetupPhase, SetupWindow, WindowSettings, phase
from epcscf.sip.proxy_policy import ProxiedRequest, ProxyState
from tests.support.fakes import FakeWsFlow
from tests.test_pcscf_admission import request


@dataclass
class Media:
    """What the window reads of a call's media: whether ICE is past its checks."""

    ice_settled: bool = False


class Setup:
    """One admitted initial INVITE and, once routed, its call."""

    def __init__(self, clock: Clock, number: int) -> None:
        self.flow = FakeWsFlow(f"flow-{number}")
        self.context = ProxiedRequest(request("INVITE"), self.flow)  # type: ignore[arg-type]
        self.clock = clock
        self.call: Call | None = None

    def routed(self) -> "Setup":
        """The call manager made a call of it and is gathering (OFFER_RECEIVED)."""
        self.call = Call("c", CallDirection.ORIGINATING, self.flow, self.clock.seconds(), self.clock)  # type: ignore[arg-type]
        self.call.media = Media()  # type: ignore[assignment]
        self.context.attached = CallLeg(self.call, Side.WIC, initial=True)
        self.context.state = ProxyState.FORWARDING
        return self

    def at(self, state: CallState, settled: bool = False) -> "Setup":
        assert self.call is not None
        self.call.state = state
        self.call.media.ice_settled = settled  # type: ignore[union-attr]
        return self


class PhaseTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def test_the_edges_part_is_routing_and_from_the_answer_until_ice_is_up(self) -> None:
        setup = Setup(self.clock, 1)
        self.assertIs(phase(setup.context), SetupPhase.EDGE)  # being routed
        self.assertIs(phase(setup.routed().context), SetupPhase.EDGE)  # gathering, rewriting the offer
        self.assertIs(phase(setup.at(CallState.OFFER_FORWARDED).context), SetupPhase.CALLEE)  # ringing
        self.assertIs(phase(setup.at(CallState.EARLY).context), SetupPhase.EDGE)  # early answer, ICE checks
        self.assertIs(phase(setup.at(CallState.CONFIRMED).context), SetupPhase.EDGE)
        self.assertIs(phase(setup.at(CallState.CONFIRMED, settled=True).context), SetupPhase.DONE)
        self.assertIs(phase(setup.at(CallState.TERMINATED).context), SetupPhase.DONE)

    def test_a_request_answered_before_it_became_a_call_is_done(self) -> None:
        setup = Setup(self.clock, 1)
        setup.context.state = ProxyState.COMPLETED  # e.g. 488 for an unusable offer
        self.assertIs(phase(setup.context), SetupPhase.DONE)


class WindowTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.number = 0

    def window(self, **settings: object) -> SetupWindow:
        return SetupWindow(WindowSettings(**settings), self.clock)  # type: ignore[arg-type]

    def offer(self, window: SetupWindow) -> Setup | None:
        self.number += 1
        setup = Setup(self.clock, self.number)
        return setup.routed() if window.admit(setup.context) else None

    def test_new_calls_beyond_the_window_are_refused_until_one_is_through(self) -> None:
        window = self.window(target=0.25, min_calls=3)
        admitted = [self.offer(window) for _ in range(3)]
        self.assertNotIn(None, admitted)
        self.assertIsNone(self.offer(window))
        self.assertEqual((window.in_setup, window.refused), (3, 1))
        admitted[0].at(CallState.CONFIRMED, settled=True)  # type: ignore[union-attr]
        self.assertIsNone(self.offer(window))  # a full window looks again only every REFRESH
        self.clock.advance(SetupWindow.REFRESH)
        self.assertIsNotNone(self.offer(window))  # and then sees the slot freed
        self.assertEqual(window.in_setup, 3)

    def full_of_answered_calls(self, window: SetupWindow, reads: list[int]) -> list[Setup]:
        """``window.limit`` calls answered, ICE under way (the edge's work), their media's
        ``ice_settled`` reads counted in ``reads``."""

        class CountedMedia:
            settled = False

            @property
            def ice_settled(self) -> bool:
                reads[0] += 1
                return self.settled

        admitted = [self.offer(window) for _ in range(window.limit)]
        for setup in admitted:
            setup.at(CallState.CONFIRMED)  # type: ignore[union-attr]
            setup.call.media = CountedMedia()  # type: ignore[union-attr]
        self.clock.advance(SetupWindow.FULL_REFRESH)
        window.refresh()
        self.assertEqual((window.in_setup, reads[0]), (window.limit, window.limit))  # a full look reads every call
        return admitted  # type: ignore[return-value]

    def test_a_full_window_reads_its_oldest_calls_not_every_call_to_find_a_freed_place(self) -> None:
        window = self.window(target=0.25, min_calls=50)
        reads = [0]
        admitted = self.full_of_answered_calls(window, reads)
        admitted[0].call.media.settled = True  # type: ignore[union-attr]  # the oldest is through
        self.clock.advance(SetupWindow.REFRESH)
        reads[0] = 0
        self.assertIsNotNone(self.offer(window))  # its place is seen...
        self.assertEqual(reads[0], 2)  # ...from the head: it, and the next one still in setup
        self.assertIsNone(self.offer(window))
        self.assertEqual(window.in_setup, 50)

    def test_a_head_stuck_in_setup_costs_a_few_reads_a_look_and_every_call_is_read_in_turn(self) -> None:
        window = self.window(target=0.25, min_calls=50)
        reads = [0]
        admitted = self.full_of_answered_calls(window, reads)
        admitted[30].call.media.settled = True  # type: ignore[union-attr]  # not at the head
        looks = 0
        while True:
            self.clock.advance(SetupWindow.REFRESH)
            reads[0] = 0
            looks += 1
            if self.offer(window) is not None:
                break
            self.assertLessEqual(reads[0], SetupWindow.LOOK_CALLS)
        self.assertEqual(looks, 30 // SetupWindow.LOOK_CALLS + 1)  # found in turn, before the next full look

    def test_the_probes_ticks_read_every_call_once_a_full_refresh_and_still_measure_the_throughput(self) -> None:
        window = self.window(target=0.25, min_calls=50)
        reads = [0]
        admitted = self.full_of_answered_calls(window, reads)
        reads[0] = 0
        ticks = int(1.0 / 0.05)  # a second of the load probe at [overload] lag_interval = 0.05
        for _ in range(ticks):
            self.clock.advance(0.05)
            window.tick()
        full_looks = round(1.0 / SetupWindow.FULL_REFRESH)  # a second's worth (ticks drift: one fewer may fit)
        self.assertIn(reads[0], (50 * (full_looks - 1), 50 * full_looks))  # not 50 at each of the 20 ticks
        for setup in admitted:  # every call through its setup while no INVITE comes
            setup.call.media.settled = True  # type: ignore[union-attr]
        for _ in range(int(SetupWindow.PERIOD / 0.05) + round(SetupWindow.FULL_REFRESH / 0.05)):
            self.clock.advance(0.05)
            window.tick()
        self.assertEqual(window.in_setup, 0)
        self.assertGreater(window.throughput, 0.0)  # measured on the probe's clock alone

    def test_calls_waiting_for_their_callee_do_not_count_and_come_back_with_the_answer(self) -> None:
        window = self.window(target=0.25, min_calls=2)
        first, second = self.offer(window), self.offer(window)
        assert first is not None and second is not None
        first.at(CallState.OFFER_FORWARDED)
        second.at(CallState.OFFER_FORWARDED)
        self.clock.advance(SetupWindow.REFRESH)  # the window's next look at the calls' states
        third = self.offer(window)  # both ring: neither is the edge's work
        self.assertIsNotNone(third)
        self.assertEqual((window.in_setup, window.waiting), (1, 2))
        first.at(CallState.CONFIRMED)  # answered: the edge rewrites the answer and runs ICE
        self.clock.advance(SetupWindow.CALLEE_REFRESH)
        window.refresh()
        self.assertEqual((window.in_setup, window.waiting), (2, 1))
        self.assertIsNone(self.offer(window))

    def test_the_window_is_throughput_times_target_and_never_below_its_minimum(self) -> None:
        window = self.window(target=0.25, min_calls=5)
        self.assertEqual(window.limit, 5)
        for _ in range(8):  # 100 calls/s through their setup, for 4 s
            for _ in range(50):
                setup = self.offer(window)
                assert setup is not None
                setup.at(CallState.CONFIRMED, settled=True)
                self.clock.advance(0.01)
                window.refresh()
        self.assertAlmostEqual(window.throughput, 100, delta=5)
        self.assertEqual(window.limit, int(window.throughput * 0.25))
        self.clock.advance(5)  # idle: nothing finishes any more
        for _ in range(10):
            self.clock.advance(SetupWindow.PERIOD)
            window.refresh()
        self.assertEqual(window.limit, 5)

    def test_a_configured_capacity_caps_the_window(self) -> None:
        self.assertEqual(self.window(target=0.25, min_calls=5, max_calls=4).limit, 4)
        fixed = self.window(target=0.0, max_calls=7)
        self.assertEqual(fixed.limit, 7)
        self.assertEqual(sum(self.offer(fixed) is not None for _ in range(10)), 7)
        off = self.window(target=0.0, max_calls=0)
        self.assertFalse(off.enabled)
        self.assertEqual(sum(self.offer(off) is not None for _ in range(100)), 100)

    def test_a_call_stuck_in_setup_is_forgotten_after_max_age(self) -> None:
        window = self.window(target=0.25, min_calls=1, max_age=10.0)
        self.assertIsNotNone(self.offer(window))
        self.assertIsNone(self.offer(window))
        self.clock.advance(10.0)
        self.assertIsNotNone(self.offer(window))

    def test_reconfigure_resizes_the_window(self) -> None:
        window = self.window(target=0.25, min_calls=1)
        self.assertIsNotNone(self.offer(window))
        self.assertIsNone(self.offer(window))
        window.reconfigure(WindowSettings(target=0.25, min_calls=2))
        self.assertEqual(window.limit, 2)
        self.assertIsNotNone(self.offer(window))


class BusyNodeTests(unittest.TestCase):
    """Only a busy node shrinks its window: WICs whose round trips keep their calls in the edge's
    phases longer than ``setup_target`` must not starve an idle node of calls."""

    RATE = 100.0  # new INVITEs a second
    IN_SETUP = 0.5  # seconds each spends in the edge's phases (twice the target: far-away WICs)

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.used = 0.0  # the node's CPU used + waited for, as ``reactor_thread_usage`` counts it
        self.number = 0
        self.pending: list[tuple[float, Setup]] = []

    def window(self, with_usage: bool = True) -> SetupWindow:
        return SetupWindow(WindowSettings(target=0.25, min_calls=5), self.clock, (lambda: self.used) if with_usage else None)

    def offer_for(self, window: SetupWindow, seconds: float, demand: float) -> tuple[int, int]:
        """``RATE`` new INVITEs a second for ``seconds`` while the node wants ``demand`` of a CPU;
        each admitted one leaves the edge's phases ``IN_SETUP`` later.  (admitted, refused)."""
        admitted = refused = 0
        step = 1.0 / self.RATE
        for _ in range(int(seconds * self.RATE)):
            self.clock.advance(step)
            self.used += demand * step
            now = self.clock.seconds()
            while self.pending and self.pending[0][0] <= now:
                self.pending.pop(0)[1].at(CallState.CONFIRMED, settled=True)
            self.number += 1
            setup = Setup(self.clock, self.number)
            if window.admit(setup.context):
                admitted += 1
                self.pending.append((now + self.IN_SETUP, setup.routed()))
            else:
                refused += 1
        return admitted, refused

    def test_an_idle_node_opens_its_window_to_calls_its_wics_keep_in_setup_longer_than_the_target(self) -> None:
        window = self.window()
        self.offer_for(window, 10.0, demand=0.3)
        admitted, refused = self.offer_for(window, 5.0, demand=0.3)
        self.assertEqual((admitted, refused), (500, 0))
        self.assertGreaterEqual(window.limit, self.RATE * self.IN_SETUP)
        # Little's law alone, the same calls: the window shrinks with the throughput it refuses.
        little = self.window(with_usage=False)
        self.pending.clear()
        self.offer_for(little, 10.0, demand=0.3)
        admitted, refused = self.offer_for(little, 5.0, demand=0.3)
        self.assertGreater(refused, admitted)

    def test_a_busy_node_sizes_its_window_by_littles_law_again(self) -> None:
        window = self.window()
        self.offer_for(window, 10.0, demand=0.3)
        self.offer_for(window, 2 * SetupWindow.PERIOD + 0.05, demand=1.0)  # a whole period busy
        self.assertEqual(window.limit, max(5, int(window.throughput * 0.25)))
        admitted, refused = self.offer_for(window, 5.0, demand=1.0)
        self.assertGreater(refused, admitted)

    def test_an_idle_window_comes_back_to_its_minimum_once_the_calls_stop(self) -> None:
        window = self.window()
        self.offer_for(window, 10.0, demand=0.3)
        self.assertGreater(window.limit, 5)
        for _ in range(10):  # no INVITEs; the admitted calls finish
            self.offer_for(window, 0.0, demand=0.0)
            self.clock.advance(SetupWindow.PERIOD)
            for _, setup in self.pending:
                setup.at(CallState.CONFIRMED, settled=True)
            window.refresh()
        self.assertEqual(window.limit, 5)


class GateTests(unittest.TestCase):
    """``NewWorkGate`` with a window: only new INVITEs pass through it."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.window = SetupWindow(WindowSettings(target=0.25, min_calls=1), self.clock)
        controller = OverloadController(OverloadSettings(retry_after=7), self.clock)
        self.gate = NewWorkGate(controller, Registrations(self.clock), self.window)
        self.flow = FakeWsFlow("flow-1")

    def check(self, method: str, to_tag: str | None = None) -> object:
        return self.gate(ProxiedRequest(request(method, to_tag), self.flow))  # type: ignore[arg-type]

    def test_a_full_window_refuses_new_invites_with_503_and_retry_after(self) -> None:
        self.assertIsNone(self.check("INVITE"))
        refusal = self.check("INVITE")
        self.assertIsNotNone(refusal)
        self.assertEqual(refusal.reason, "calls_in_setup")  # type: ignore[attr-defined]
        response = refusal.response  # type: ignore[attr-defined]
        self.assertEqual((response.status, response.headers.get("Retry-After")), (503, "7"))
        # What finishes admitted work, and new work that is not a call, is not the window's.
        for method, to_tag in (("INVITE", "b1"), ("BYE", "b1"), ("ACK", None), ("CANCEL", None), ("MESSAGE", None)):
            self.assertIsNone(self.check(method, to_tag), method)
