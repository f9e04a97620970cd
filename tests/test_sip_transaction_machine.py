"""The transaction tables themselves (``transaction_machine``) and ``TimerSettings``."""

from __future__ import annotations

from twisted.trial import unittest

from epcscf.sip.transaction_machine import (
    INVITE_CLIENT,
    INVITE_SERVER,
    NON_INVITE_CLIENT,
    NON_INVITE_SERVER,
    TIMER_LIFETIME,
    Action,
    Event,
    State,
    TimerSettings,
    TransactionStateError,
)
from epcscf.sip.transaction_client import ClientTransaction
from epcscf.sip.transaction_server import ServerTransaction

RESPONSES = {Event.RESPONSE_1XX, Event.RESPONSE_2XX, Event.RESPONSE_3XX_6XX}
REQUESTS = {Event.REQUEST_RETRANSMISSION, Event.ACK}


class TimerSettingsTests(unittest.TestCase):
    def test_rfc_3261_defaults_and_64_t1_timers(self) -> None:
        timers = TimerSettings()
        self.assertEqual((timers.t1, timers.t2, timers.t4, timers.d), (0.5, 4.0, 5.0, 32.0))
        self.assertEqual({timers.b, timers.f, timers.h, timers.j, timers.l, timers.m}, {32.0})

    def test_ts_24_229_values_toward_a_ue(self) -> None:
        timers = TimerSettings(t1=2.0, t2=16.0, t4=17.0, d=130.0)
        self.assertEqual(timers.b, 128.0)
        self.assertEqual(timers.m, 128.0)

    def test_timer_d_toward_a_ue_is_above_64_t1_and_never_under_32_s(self) -> None:
        self.assertEqual(TimerSettings.toward_ue(2.0, 16.0, 17.0), TimerSettings(t1=2.0, t2=16.0, t4=17.0, d=130.0))
        self.assertGreater(TimerSettings.toward_ue(2.0, 16.0, 17.0).d, 128.0)  # TS 24.229 Table 7.7.1
        self.assertEqual(TimerSettings.toward_ue(0.1, 4.0, 5.0).d, 32.0)  # RFC 3261 §17.1.1.2

    def test_bad_values_are_refused_with_a_clear_message(self) -> None:
        with self.assertRaisesRegex(ValueError, "timer T1 must be positive"):
            TimerSettings(t1=0)
        with self.assertRaisesRegex(ValueError, r"T2 \(0.1\) must not be shorter than T1 \(0.5\)"):
            TimerSettings(t2=0.1)
        with self.assertRaisesRegex(ValueError, "timer D"):
            TimerSettings(d=-1)


class TableTests(unittest.TestCase):
    def test_the_network_cannot_cause_an_illegal_transition(self) -> None:
        # Every live state of a client machine accepts every response; of a server
        # machine, every request retransmission and ACK (INVITE) — no peer can make us raise.
        for table, events in (
            (INVITE_CLIENT, RESPONSES),
            (NON_INVITE_CLIENT, RESPONSES),
            (INVITE_SERVER, REQUESTS),
            (NON_INVITE_SERVER, {Event.REQUEST_RETRANSMISSION}),
        ):
            for state, transitions in table.items():
                if state is State.TERMINATED:
                    continue
                self.assertLessEqual(events, set(transitions), f"{state} misses network events")

    def test_every_transition_that_sends_can_take_a_transport_error(self) -> None:
        # A failed send becomes TRANSPORT_ERROR once the transition is done (§17.1.4,
        # §17.2.4), so the state it leads to must accept that event.
        sending = {
            Action.SEND_ACK,
            Action.RETRANSMIT_REQUEST,
            Action.SEND_RESPONSE,
            Action.SEND_TRYING,
            Action.RESEND_LAST_RESPONSE,
        }
        for table in (INVITE_CLIENT, NON_INVITE_CLIENT, INVITE_SERVER, NON_INVITE_SERVER):
            for state, transitions in table.items():
                for event, transition in transitions.items():
                    if sending & set(transition.actions):
                        self.assertIn(
                            Event.TRANSPORT_ERROR,
                            table[transition.next_state],
                            f"{state} --{event}--> {transition.next_state} sends but cannot fail",
                        )

    def test_terminated_is_final(self) -> None:
        for table in (INVITE_CLIENT, NON_INVITE_CLIENT, INVITE_SERVER, NON_INVITE_SERVER):
            for transition in table[State.TERMINATED].values():
                self.assertIs(transition.next_state, State.TERMINATED)
                self.assertEqual(transition.actions, (Action.DISCARD_RESPONSE,))

    def test_every_timer_event_has_a_lifetime_and_fires_only_where_it_lives(self) -> None:
        timers = {e for e in Event if e.name.startswith("TIMER_")}
        self.assertLessEqual(timers, set(TIMER_LIFETIME))
        for table in (INVITE_CLIENT, NON_INVITE_CLIENT, INVITE_SERVER, NON_INVITE_SERVER):
            for state, transitions in table.items():
                for event in transitions:
                    if event in timers:
                        self.assertIn(state, TIMER_LIFETIME[event], f"{event} handled in {state}")

    def test_every_action_is_implemented_by_its_machine(self) -> None:
        for table, cls in (
            (INVITE_CLIENT, ClientTransaction),
            (NON_INVITE_CLIENT, ClientTransaction),
            (INVITE_SERVER, ServerTransaction),
            (NON_INVITE_SERVER, ServerTransaction),
        ):
            for transitions in table.values():
                for transition in transitions.values():
                    for action in transition.actions:
                        self.assertTrue(callable(getattr(cls, "_" + action.value, None)), f"{cls.__name__} lacks {action}")

    def test_state_error_names_machine_state_and_event(self) -> None:
        error = TransactionStateError("INVITE client", State.ACCEPTED, Event.TIMER_A)
        self.assertEqual(str(error), "INVITE client transaction in state Accepted cannot handle Timer A")
        self.assertEqual((error.state, error.event), (State.ACCEPTED, Event.TIMER_A))
