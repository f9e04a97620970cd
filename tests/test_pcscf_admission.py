"""Admission control, sans-IO (``epcscf.pcscf.admission``): the load state table with its
hysteresis, the probe, what counts as new work, and the per-source limits — all on a
``task.Clock``."""

from __future__ import annotations

from dataclasses import replace

from twisted.internet.task import Clock
from twisted.trial import unittest

from epcscf.pcscf.admission import (
    TRANSITIONS,
    AdmissionChain,
    LoadProbe,
    LoadState,
    NewWorkGate,
    OverloadController,
    OverloadSettings,
    Refusal,
    Sample,
    is_new_work,
)
from epcscf.pcscf.limits import AuthFailures, FlowRateLimiter, FlowVerdict, answer_refused_message
from epcscf.pcscf.registration import Registrations
from epcscf.sip.message import Request, Response, make_response
from epcscf.sip.proxy import ProxiedRequest, Reject
from tests.support.fakes import FakeWsFlow

SETTINGS = OverloadSettings(lag_high=0.2, lag_low=0.05, high_samples=2, recover=0.25, min_new_per_second=0)
HIGH, MID, LOW = 0.3, 0.1, 0.01  # lags (seconds) of each kind under SETTINGS


def request(method: str, to_tag: str | None = None, to: str = "sip:bob@ims.localdomain", auth: bool = False) -> Request:
    req = Request(method, to)
    req.headers.add("Via", "SIP/2.0/WS abc.invalid;branch=z9hG4bK1234")
    req.headers.add("From", "<sip:alice@ims.localdomain>;tag=a1")
    req.headers.add("To", f"<{to}>" + (f";tag={to_tag}" if to_tag else ""))
    req.headers.add("Call-ID", "call-1")
    req.headers.add("CSeq", f"1 {method}")
    if auth:
        req.headers.add("Authorization", 'Digest username="alice", response="bad"')
    return req


def context(req: Request, flow: object) -> ProxiedRequest:
    return ProxiedRequest(req, flow)  # type: ignore[arg-type]


def ws_flow(flow_id: str = "flow-1") -> FakeWsFlow:
    return FakeWsFlow(flow_id)


class LoadStateTableTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.controller = OverloadController(SETTINGS, self.clock)
        self.changes: list[LoadState] = []
        self.controller.on_change = self.changes.append

    def feed(self, lag: float, times: int = 1, step: float = 0.05) -> LoadState:
        for _ in range(times):
            self.clock.advance(step)
            state = self.controller.sample(lag)
        return state

    def test_the_table_has_a_row_for_every_state_and_sample(self) -> None:
        self.assertEqual(set(TRANSITIONS), {(state, sample) for state in LoadState for sample in Sample})

    def test_samples_are_classified_by_the_thresholds(self) -> None:
        self.assertEqual(self.controller.classify(HIGH, 0), Sample.HIGH)
        self.assertEqual(self.controller.classify(0.2, 0), Sample.HIGH)
        self.assertEqual(self.controller.classify(MID, 0), Sample.MID)
        self.assertEqual(self.controller.classify(LOW, 0), Sample.LOW)

    def test_one_late_timer_is_not_overload(self) -> None:
        self.assertIs(self.feed(HIGH), LoadState.NORMAL)
        self.assertIs(self.feed(LOW), LoadState.NORMAL)
        self.assertIs(self.feed(HIGH), LoadState.NORMAL)
        self.assertEqual(self.changes, [])

    def test_high_samples_in_a_row_mean_overload(self) -> None:
        self.feed(HIGH, 2)
        self.assertIs(self.controller.state, LoadState.OVERLOADED)
        self.assertEqual(self.changes, [LoadState.OVERLOADED])

    def test_the_hysteresis_band_keeps_overload(self) -> None:
        self.feed(HIGH, 2)
        self.assertIs(self.feed(MID, 20), LoadState.OVERLOADED)  # a whole second between the thresholds

    def test_back_to_normal_only_after_recover_seconds_of_calm(self) -> None:
        self.feed(HIGH, 2)
        self.assertIs(self.feed(LOW, 5), LoadState.OVERLOADED)  # 0.20 s of calm: not yet
        self.assertIs(self.feed(MID), LoadState.OVERLOADED)  # calm interrupted: starts again
        self.assertIs(self.feed(LOW, 5), LoadState.OVERLOADED)
        self.assertIs(self.feed(LOW, 1), LoadState.NORMAL)  # 0.25 s of calm
        self.assertEqual(self.changes, [LoadState.OVERLOADED, LoadState.NORMAL])

    def test_pending_requests_count_when_watched(self) -> None:
        controller = OverloadController(replace(SETTINGS, max_pending=100), self.clock)
        self.assertEqual(controller.classify(LOW, 100), Sample.HIGH)
        self.assertEqual(controller.classify(LOW, 90), Sample.MID)  # hysteresis down to 80 %
        self.assertEqual(controller.classify(LOW, 79), Sample.LOW)
        self.assertEqual(self.controller.classify(LOW, 10**6), Sample.LOW)  # not watched by default

    def test_new_work_is_refused_only_while_overloaded(self) -> None:
        self.assertIsNone(self.controller.admit_new())
        self.feed(HIGH, 2)
        self.assertEqual(self.controller.admit_new(), "overloaded")

    def test_while_overloaded_new_work_is_let_in_at_half_the_rate_just_admitted(self) -> None:
        for _ in range(20):  # 100 new calls a second for a second
            for _ in range(5):
                self.assertIsNone(self.controller.admit_new())
            self.feed(LOW)
        self.feed(HIGH, 2)
        throttle = self.controller.throttle
        assert throttle is not None
        self.assertAlmostEqual(throttle.rate, 50, delta=3)
        self.assertEqual(self.controller.admit_new(), "overloaded")  # nothing saved up
        admitted = 0
        for _ in range(20):  # a second more of 100 offers a second
            self.clock.advance(0.05)
            admitted += sum(self.controller.admit_new() is None for _ in range(5))
        self.assertLessEqual(admitted, 52)

    def test_the_throttle_follows_the_lag_decrease_while_high_increase_while_low(self) -> None:
        self.feed(HIGH, 2)
        throttle = self.controller.throttle
        assert throttle is not None
        throttle.rate = 40.0
        self.feed(HIGH, 4)  # 0.2 s: one decrease
        self.assertAlmostEqual(throttle.rate, 40 * OverloadController.DECREASE)
        rate = throttle.rate
        self.feed(MID, 4)
        self.assertEqual(throttle.rate, rate)  # held in the band
        self.feed(LOW, 4)
        self.assertAlmostEqual(throttle.rate, rate + max(1.0, rate * OverloadController.INCREASE))
        self.feed(LOW, 2)
        self.assertIsNone(self.controller.throttle)  # calm long enough: NORMAL, no throttle

    def test_the_throttle_never_goes_under_its_floor(self) -> None:
        controller = OverloadController(replace(SETTINGS, min_new_per_second=10), self.clock)
        for _ in range(2):
            self.clock.advance(0.05)
            controller.sample(HIGH)
        throttle = controller.throttle
        assert throttle is not None
        self.assertEqual(throttle.rate, 10)  # nothing admitted lately: the floor
        for _ in range(40):
            self.clock.advance(0.05)
            controller.sample(HIGH)
        self.assertEqual(throttle.rate, 10)

    def test_new_work_rate_cap_is_a_token_bucket(self) -> None:
        controller = OverloadController(replace(SETTINGS, max_new_per_second=10), self.clock)
        admitted = [controller.admit_new() for _ in range(15)]
        self.assertEqual(admitted.count(None), 10)  # a second's worth at once
        self.assertEqual(admitted[-1], "new_work_rate")
        self.clock.advance(0.1)
        self.assertIsNone(controller.admit_new())  # one more token after 1/10 s
        self.assertEqual(controller.admit_new(), "new_work_rate")


class LoadProbeTests(unittest.TestCase):
    def test_probe_reports_how_late_its_timer_ran(self) -> None:
        clock = Clock()
        samples: list[tuple[float, int]] = []
        probe = LoadProbe(clock, 0.05, lambda lag, pending: samples.append((round(lag, 6), pending)), lambda: 7)
        probe.start()
        clock.advance(0.05)
        clock.advance(0.05 + 0.3)  # the reactor was busy for 0.3 s past the due time
        self.assertEqual(samples, [(0.0, 7), (0.3, 7)])
        probe.stop()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_probe_drives_the_controller_into_overload_within_two_intervals(self) -> None:
        clock = Clock()
        controller = OverloadController(SETTINGS, clock)
        probe = LoadProbe(clock, 0.05, controller.sample)
        probe.start()
        clock.advance(0.05 + 0.25)
        self.assertIs(controller.state, LoadState.NORMAL)
        clock.advance(0.05 + 0.25)
        self.assertIs(controller.state, LoadState.OVERLOADED)
        probe.stop()


class NewWorkTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.registrations = Registrations(self.clock)
        self.flow = ws_flow()
        self.addCleanup(self.registrations.close)

    def bind(self, aor: str) -> None:
        register = request("REGISTER", to=aor)
        register.headers.add("Contact", "<sip:alice@abc.invalid;transport=ws>;expires=600")
        ok = make_response(register, 200, to_tag="t")
        ok.headers.add("Contact", "<sip:alice@abc.invalid;transport=ws>;expires=600")
        self.registrations.record(register, ok, self.flow.id)

    def test_initial_requests_are_new_work_in_dialog_ack_and_cancel_are_not(self) -> None:
        for method in ("INVITE", "SUBSCRIBE", "MESSAGE", "OPTIONS", "REFER"):
            self.assertTrue(is_new_work(request(method), self.flow, self.registrations), method)
        for method in ("INVITE", "BYE", "UPDATE", "INFO", "SUBSCRIBE", "NOTIFY", "PRACK"):
            self.assertFalse(is_new_work(request(method, to_tag="b1"), self.flow, self.registrations), method)
        for method in ("ACK", "CANCEL"):
            self.assertFalse(is_new_work(request(method), self.flow, self.registrations), method)

    def test_core_side_initial_requests_are_new_work_too(self) -> None:
        core = FakeWsFlow("udp-core", transport="UDP")
        self.assertTrue(is_new_work(request("INVITE"), core, self.registrations))
        self.assertFalse(is_new_work(request("INVITE", to_tag="b1"), core, self.registrations))
        self.assertTrue(is_new_work(request("REGISTER", to="sip:alice@ims.localdomain"), core, self.registrations))

    def test_a_register_is_new_unless_its_aor_is_bound_on_this_flow(self) -> None:
        alice = "sip:alice@ims.localdomain"
        self.assertTrue(is_new_work(request("REGISTER", to=alice), self.flow, self.registrations))
        self.bind(alice)
        self.assertFalse(is_new_work(request("REGISTER", to=alice), self.flow, self.registrations))  # a refresh
        self.assertTrue(is_new_work(request("REGISTER", to="sip:carol@ims.localdomain"), self.flow, self.registrations))
        self.assertTrue(is_new_work(request("REGISTER", to=alice), ws_flow("flow-2"), self.registrations))

    def test_gate_refuses_new_work_with_503_retry_after_and_a_to_tag_while_overloaded(self) -> None:
        controller = OverloadController(replace(SETTINGS, retry_after=7), self.clock)
        gate = NewWorkGate(controller, self.registrations)
        self.assertIsNone(gate(context(request("INVITE"), self.flow)))
        controller.sample(HIGH)
        controller.sample(HIGH)
        refusal = gate(context(request("INVITE"), self.flow))
        assert refusal is not None
        self.assertEqual((refusal.reason, refusal.response.status), ("overloaded", 503))
        self.assertEqual(refusal.response.headers.get("Retry-After"), "7")
        self.assertIn(";tag=", refusal.response.headers.get("To") or "")
        self.assertIsNone(gate(context(request("BYE", to_tag="b1"), self.flow)))
        self.assertIsNone(gate(context(request("ACK"), self.flow)))

    def test_gate_draws_retry_after_over_the_configured_spread(self) -> None:
        # [overload] retry_after_spread holds for every overload 503, not only the stateless ones.
        draws = iter([0.0, 0.34, 0.67, 0.99, 0.5])
        settings = replace(SETTINGS, max_new_per_second=1, retry_after=5, retry_after_spread=2)
        controller = OverloadController(settings, self.clock, uniform=lambda: next(draws))
        gate = NewWorkGate(controller, self.registrations)
        self.assertIsNone(gate(context(request("MESSAGE"), self.flow)))  # the one token
        refusals = [gate(context(request("MESSAGE"), self.flow)) for _ in range(5)]
        delays = [refusal.response.headers.get("Retry-After") for refusal in refusals if refusal is not None]
        self.assertEqual(delays, ["5", "6", "7", "7", "6"])
        # SIGHUP: the new settings' range, no spread: always retry_after.
        controller.reconfigure(replace(settings, retry_after=9, retry_after_spread=0))
        refusal = gate(context(request("MESSAGE"), self.flow))
        assert refusal is not None
        self.assertEqual(refusal.response.headers.get("Retry-After"), "9")


    def test_the_answer_to_a_challenge_finishes_a_registration_already_let_in(self) -> None:
        controller = OverloadController(SETTINGS, self.clock)
        gate = NewWorkGate(controller, self.registrations)
        alice = "sip:alice@ims.localdomain"
        first = request("REGISTER", to=alice)
        self.assertIsNone(gate(context(first, self.flow)))  # NORMAL: let in, then challenged
        gate.register_answered(context(first, self.flow), make_response(first, 401, to_tag="t"))
        controller.sample(HIGH)
        controller.sample(HIGH)
        answer = request("REGISTER", to=alice, auth=True)
        self.assertIsNone(gate(context(answer, self.flow)))  # finishes admitted work
        self.assertIsNotNone(gate(context(request("REGISTER", to=alice), self.flow)))  # a new attempt
        self.assertIsNotNone(gate(context(answer, ws_flow("flow-2"))))  # not challenged on that flow
        gate.register_answered(context(answer, self.flow), make_response(answer, 403, to_tag="t"))
        self.assertIsNotNone(gate(context(answer, self.flow)))  # the attempt ended
        gate.register_answered(context(first, self.flow), make_response(first, 401, to_tag="t"))
        self.clock.advance(NewWorkGate.CHALLENGE_TTL)
        self.assertFalse(gate._answers_a_challenge(context(answer, self.flow)))  # too late

    def test_a_register_with_made_up_credentials_is_new_work(self) -> None:
        controller = OverloadController(SETTINGS, self.clock)
        gate = NewWorkGate(controller, self.registrations)
        controller.sample(HIGH)
        controller.sample(HIGH)
        self.assertIsNotNone(gate(context(request("REGISTER", to="sip:alice@ims.localdomain", auth=True), self.flow)))


class AdmissionChainTests(unittest.TestCase):
    def test_first_refusal_wins_is_counted_and_becomes_a_reject(self) -> None:
        chain = AdmissionChain()
        refused: list[str] = []
        chain.on_refused = refused.append
        req = request("INVITE")
        answer = make_response(req, 503)
        chain.add("never", lambda ctx: None)
        chain.add("always", lambda ctx: Refusal("always", answer))
        chain.add_first("drain", lambda ctx: Refusal("draining", answer))
        self.assertEqual(chain.names(), ["drain", "never", "always"])
        decision = chain(context(req, ws_flow()))
        self.assertIsInstance(decision, Reject)
        self.assertEqual(refused, ["draining"])
        chain.remove("drain")
        chain(context(req, ws_flow()))
        self.assertEqual(refused, ["draining", "always"])
        chain.remove("always")
        self.assertIsNone(chain(context(req, ws_flow())))


class AuthFailureTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.failures = AuthFailures(replace(SETTINGS, auth_failures=3, auth_window=60, auth_lockout=300), self.clock)
        self.aor = "sip:alice@ims.localdomain"

    def answered(self, status: int, auth: bool = True, stale: bool = False) -> None:
        req = request("REGISTER", to=self.aor, auth=auth)
        response = make_response(req, status, to_tag="t")
        if status == 401:
            response.headers.add("WWW-Authenticate", 'Digest realm="x", nonce="n"' + (", stale=true" if stale else ""))
        self.failures.register_answered(req, response)

    def check(self) -> Refusal | None:
        return self.failures(context(request("REGISTER", to=self.aor), ws_flow()))

    def test_the_normal_first_challenge_and_stale_nonces_do_not_count(self) -> None:
        for _ in range(5):
            self.answered(401, auth=False)
            self.answered(401, stale=True)
        self.assertIsNone(self.check())

    def test_too_many_failures_lock_the_aor_with_a_local_403_until_the_lockout_ends(self) -> None:
        self.answered(401)
        self.answered(403)
        self.assertIsNone(self.check())
        self.answered(401)
        refusal = self.check()
        assert refusal is not None
        self.assertEqual((refusal.reason, refusal.response.status), ("auth_failures", 403))
        other = self.failures(context(request("REGISTER", to="sip:bob@ims.localdomain"), ws_flow()))
        self.assertIsNone(other)
        self.assertIsNone(self.failures(context(request("INVITE", to=self.aor), ws_flow())))
        self.clock.advance(299)
        self.assertIsNotNone(self.check())
        self.clock.advance(1)
        self.assertIsNone(self.check())

    def test_failures_outside_the_window_and_before_a_success_are_forgotten(self) -> None:
        self.answered(401)
        self.answered(401)
        self.clock.advance(61)
        self.answered(401)
        self.assertIsNone(self.check())
        self.answered(200)
        self.answered(401)
        self.answered(401)
        self.assertIsNone(self.check())


class FlowRateTests(unittest.TestCase):
    def test_burst_then_rate_then_close_for_a_flow_that_keeps_flooding(self) -> None:
        clock = Clock()
        limiter = FlowRateLimiter(
            replace(SETTINGS, flow_messages_per_second=10, flow_burst=5, flow_close_after=4, flow_window=10), clock
        )
        verdicts = [limiter.arrived("f") for _ in range(8)]
        self.assertEqual(verdicts[:5], [FlowVerdict.ADMIT] * 5)
        self.assertEqual(verdicts[5:], [FlowVerdict.REFUSE] * 3)
        self.assertIs(limiter.arrived("other"), FlowVerdict.ADMIT)  # per flow
        clock.advance(0.1)
        self.assertIs(limiter.arrived("f"), FlowVerdict.ADMIT)  # one token per 1/10 s
        self.assertIs(limiter.arrived("f"), FlowVerdict.CLOSE)  # the fourth refusal in the window
        clock.advance(1)
        self.assertIs(limiter.arrived("f"), FlowVerdict.DROP)  # closing: nothing more is looked at
        limiter.forget("f")
        limiter.forget("other")
        self.assertEqual(len(limiter), 0)

    def test_resting_sources_are_forgotten_and_busy_ones_kept(self) -> None:
        # A fuzzer's sources (one per UDP port or TCP connection) must not outlive their burst.
        clock = Clock()
        limiter = FlowRateLimiter(replace(SETTINGS, flow_messages_per_second=10, flow_burst=5, flow_close_after=3,
                                          flow_window=30), clock)
        for number in range(1000):
            limiter.arrived(f"fuzz{number}")
        for _ in range(9):
            limiter.arrived("flooding")  # 5 admitted, then 3 refusals: told to close
        self.assertIs(limiter.arrived("flooding"), FlowVerdict.DROP)
        clock.advance(0.05)
        limiter.sweep()  # not yet: at most one sweep per SWEEP_INTERVAL
        self.assertEqual(len(limiter), 1001)
        clock.advance(limiter.SWEEP_INTERVAL)
        limiter.sweep()
        self.assertEqual(len(limiter), 1)  # full buckets forgotten; the flooding one is still closing
        self.assertIs(limiter.arrived("flooding"), FlowVerdict.DROP)
        clock.advance(30)
        limiter.sweep()
        self.assertEqual(len(limiter), 0)
        self.assertIs(limiter.arrived("fuzz1"), FlowVerdict.ADMIT)  # a forgotten source starts afresh

    def test_a_source_with_spent_tokens_is_kept_by_the_sweep(self) -> None:
        clock = Clock()
        limiter = FlowRateLimiter(replace(SETTINGS, flow_messages_per_second=0.01, flow_burst=2, flow_close_after=0), clock)
        limiter.arrived("slow")
        limiter.arrived("slow")
        clock.advance(limiter.SWEEP_INTERVAL)
        limiter.sweep()
        self.assertIs(limiter.arrived("slow"), FlowVerdict.REFUSE)  # its bucket was not refilled by a sweep

    def test_refusals_are_counted_per_window(self) -> None:
        clock = Clock()
        limiter = FlowRateLimiter(replace(SETTINGS, flow_messages_per_second=1, flow_burst=1, flow_close_after=3), clock)
        limiter.arrived("f")
        for _ in range(4):
            self.assertIs(limiter.arrived("f"), FlowVerdict.REFUSE)
            self.assertIs(limiter.arrived("f"), FlowVerdict.REFUSE)
            clock.advance(10)  # a new window, and tokens again
            self.assertIs(limiter.arrived("f"), FlowVerdict.ADMIT)

    def test_a_refused_request_gets_503_an_ack_or_a_response_nothing(self) -> None:
        answer = answer_refused_message(request("MESSAGE"), 5)
        assert answer is not None
        self.assertEqual((answer.status, answer.headers.get("Retry-After")), (503, "5"))
        self.assertIsNone(answer_refused_message(request("ACK"), 5))
        self.assertIsNone(answer_refused_message(make_response(request("MESSAGE"), 200), 5))
        self.assertIsInstance(make_response(request("MESSAGE"), 200), Response)
