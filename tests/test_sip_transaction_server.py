"""Server transactions: RFC 3261 §17.2.1 (Figure 7, with RFC 6026 §7.1) and §17.2.2 (Figure 8)."""

from __future__ import annotations

from twisted.trial import unittest

from epcscf.sip.headers import to_tag
from epcscf.sip.message import Request, Response
from epcscf.sip.transaction import ServerTransaction, State, TransactionStateError

from tests.support.fakes import FakeConnection
from tests.test_sip_transaction_fakes import harness, request, response, run_until


class InviteServerTransactionTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = harness()
        self.addCleanup(self.h.layer.close)
        self.invite = request("INVITE", extra=[("Timestamp", "54")])

    def receive_invite(self, connection: FakeConnection | None = None) -> ServerTransaction:
        self.h.layer.receive(self.invite, connection or self.h.udp)
        return self.h.user.server_transactions[-1]

    def ack(self, to_tag: str = "bob1") -> Request:
        return request("ACK", to_tag=to_tag)

    def test_invite_server_sends_100_trying_when_the_tu_is_silent_for_200ms(self) -> None:
        transaction = self.receive_invite()
        self.assertEqual(self.h.user.calls, [(0.0, "request", "INVITE")])
        run_until(self.h.clock, 0.19)
        self.assertEqual(self.h.udp.sent, [])
        run_until(self.h.clock, 10)
        self.assertEqual(self.h.udp.times(), [0.2])
        trying = self.h.udp.messages()[0]
        assert isinstance(trying, Response)
        self.assertEqual(trying.status, 100)
        self.assertIsNone(to_tag(trying))  # §8.2.6.1: a 100 gets no To tag
        self.assertEqual(trying.headers.get("timestamp"), "54")  # §8.2.6.1
        self.assertIs(transaction.last_response, trying)
        self.assertEqual(transaction.state, State.PROCEEDING)

    def test_invite_server_sends_no_automatic_100_when_the_tu_answered(self) -> None:
        # A proxy sends its own 100 at once (§16.2); the transaction then stays quiet.
        transaction = self.receive_invite()
        transaction.respond(response(self.invite, 100, to_tag=None))
        run_until(self.h.clock, 10)
        self.assertEqual(self.h.udp.times(), [0])

    def test_invite_server_tu_answering_inside_request_received_stops_the_100(self) -> None:
        self.h.user.respond_with = 486
        transaction = self.receive_invite()
        run_until(self.h.clock, 0.6)
        self.assertEqual(self.h.udp.times(), [0, 0.5])  # the 486, then Timer G; no 100 at 0.2
        self.assertEqual(self.h.udp.start_lines(), ["SIP/2.0 486 Busy Here"] * 2)
        self.assertEqual(transaction.state, State.COMPLETED)

    def test_invite_server_absorbs_an_ack_before_any_final(self) -> None:
        transaction = self.receive_invite()
        self.h.layer.receive(self.ack(), self.h.udp)
        self.assertEqual(transaction.state, State.PROCEEDING)
        self.assertEqual(self.h.user.kinds(), ["request"])

    def test_invite_server_retransmitted_invite_gets_last_provisional_again(self) -> None:
        transaction = self.receive_invite()
        self.h.layer.receive(self.invite, self.h.udp)  # before any response: absorbed
        self.assertEqual(self.h.udp.sent, [])
        ringing = response(self.invite, 180)
        transaction.respond(ringing)
        run_until(self.h.clock, 1)
        self.h.layer.receive(self.invite, self.h.udp)
        self.assertEqual(self.h.udp.timed(), [(0, ringing), (1.0, ringing)])
        self.assertEqual(self.h.user.kinds(), ["request"])  # the TU saw the INVITE once

    def test_invite_server_timer_g_retransmits_non_2xx_until_timer_h(self) -> None:
        # §17.2.1: G = T1 doubling up to T2; H = 64*T1 ends the wait for an ACK.
        transaction = self.receive_invite()
        busy = response(self.invite, 486)
        transaction.respond(busy)
        self.assertEqual(transaction.state, State.COMPLETED)
        run_until(self.h.clock, 100)
        self.assertEqual(self.h.udp.times(), [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5])
        # the same bytes each time (after the first send: as they went out, see SentResponse)
        self.assertTrue(all(m.serialize() == busy.serialize() for m in self.h.udp.messages()))
        self.assertTrue(transaction.terminated)
        self.assertEqual(self.h.layer.transactions(), [])
        self.assertEqual(self.h.user.kinds(), ["request"])

    def test_invite_server_timer_h_ends_the_transaction_at_64_t1(self) -> None:
        transaction = self.receive_invite()
        transaction.respond(response(self.invite, 486))
        run_until(self.h.clock, 31.99)
        self.assertEqual(transaction.state, State.COMPLETED)
        run_until(self.h.clock, 32)
        self.assertTrue(transaction.terminated)

    def test_invite_server_retransmitted_invite_in_completed_gets_the_final_again(self) -> None:
        transaction = self.receive_invite()
        busy = response(self.invite, 486)
        transaction.respond(busy)
        run_until(self.h.clock, 0.3)
        self.h.layer.receive(self.invite, self.h.udp)
        self.assertEqual([(at, m.serialize()) for at, m in self.h.udp.timed()], [(0, busy.serialize()), (0.3, busy.serialize())])

    def test_invite_server_absorbs_the_ack_for_non_2xx_and_timer_i_is_t4(self) -> None:
        transaction = self.receive_invite()
        transaction.respond(response(self.invite, 486))
        run_until(self.h.clock, 1)
        self.h.layer.receive(self.ack(), self.h.udp)
        self.assertEqual(transaction.state, State.CONFIRMED)
        self.h.layer.receive(self.ack(), self.h.udp)  # retransmitted ACK: absorbed
        self.h.layer.receive(self.invite, self.h.udp)  # late INVITE: absorbed
        run_until(self.h.clock, 5.99)
        self.assertEqual(transaction.state, State.CONFIRMED)
        self.assertEqual(self.h.udp.times(), [0, 0.5])  # Timer G stopped by the ACK
        run_until(self.h.clock, 6)  # Timer I = T4
        self.assertTrue(transaction.terminated)
        self.assertEqual(self.h.user.kinds(), ["request"])  # the ACK never reached the TU
        self.assertEqual(self.h.layer.transactions(), [])

    def test_invite_server_on_reliable_transport(self) -> None:
        # Table 4: no Timer G; Timer I = 0 → Terminated as the ACK arrives.
        transaction = self.receive_invite(self.h.tcp)
        transaction.respond(response(self.invite, 603))
        run_until(self.h.clock, 20)
        self.assertEqual(self.h.tcp.times(), [0])
        self.h.layer.receive(self.ack(), self.h.tcp)
        self.assertTrue(transaction.terminated)
        self.assertEqual(self.h.layer.transactions(), [])
        self.assertEqual(self.h.clock.getDelayedCalls(), [])

    def test_invite_server_on_reliable_transport_timer_h_still_runs(self) -> None:
        transaction = self.receive_invite(self.h.tcp)
        transaction.respond(response(self.invite, 603))
        run_until(self.h.clock, 31.99)
        self.assertEqual(transaction.state, State.COMPLETED)
        run_until(self.h.clock, 32)
        self.assertTrue(transaction.terminated)

    def test_invite_server_2xx_moves_to_accepted_until_timer_l(self) -> None:
        # RFC 6026 §7.1: INVITE retransmissions absorbed, the TU's 2xx retransmissions
        # sent, ACKs passed to the TU, Timer L = 64*T1.
        transaction = self.receive_invite()
        ok = response(self.invite, 200)
        transaction.respond(ok)
        self.assertEqual(transaction.state, State.ACCEPTED)
        run_until(self.h.clock, 0.5)
        self.h.layer.receive(self.invite, self.h.udp)
        self.assertEqual(self.h.udp.times(), [0])  # no 2xx retransmission of its own
        transaction.respond(ok)
        self.h.layer.receive(self.ack(), self.h.udp)
        self.assertEqual(self.h.udp.times(), [0, 0.5])
        self.assertEqual(self.h.user.calls, [(0.0, "request", "INVITE"), (0.5, "ack", "ACK")])
        run_until(self.h.clock, 31.99)
        self.assertEqual(transaction.state, State.ACCEPTED)
        run_until(self.h.clock, 32)
        self.assertTrue(transaction.terminated)
        self.assertEqual(self.h.layer.transactions(), [])

    def test_invite_server_ack_for_2xx_with_new_branch_goes_to_the_tu(self) -> None:
        transaction = self.receive_invite()
        transaction.respond(response(self.invite, 200))
        self.h.layer.receive(request("ACK", branch="z9hG4bK.ack2xx", to_tag="bob1"), self.h.udp)
        self.assertEqual(self.h.user.kinds(), ["request", "ack"])
        self.assertEqual(transaction.state, State.ACCEPTED)

    def test_invite_server_refuses_a_provisional_after_the_final(self) -> None:
        transaction = self.receive_invite()
        transaction.respond(response(self.invite, 486))
        with self.assertRaises(TransactionStateError) as caught:
            transaction.respond(response(self.invite, 180))
        self.assertEqual(str(caught.exception), "INVITE server transaction in state Completed cannot handle 1xx from TU")
        with self.assertRaisesRegex(TransactionStateError, "state Accepted cannot handle 300-699 from TU"):
            other = request("INVITE", branch="z9hG4bK.2")
            self.h.layer.receive(other, self.h.udp)
            self.h.user.server_transactions[-1].respond(response(other, 200))
            self.h.user.server_transactions[-1].respond(response(other, 500))

    def test_respond_rejects_a_status_out_of_range(self) -> None:
        transaction = self.receive_invite()
        with self.assertRaisesRegex(ValueError, "status code 99"):
            transaction.respond(Response(99, "Odd"))

    def test_invite_server_transport_error_terminates_and_later_responses_are_dropped(self) -> None:
        transaction = self.receive_invite()
        self.h.udp.connected = False
        transaction.respond(response(self.invite, 180))
        self.assertTrue(transaction.terminated)
        self.assertEqual(transaction.failure_reason, "peer closed the connection")
        self.assertEqual(self.h.layer.transactions(), [])
        self.assertEqual(self.h.clock.getDelayedCalls(), [])
        transaction.respond(response(self.invite, 200))  # the TU did not know: no error
        self.assertTrue(transaction.terminated)

    def test_invite_server_automatic_100_failure_terminates(self) -> None:
        transaction = self.receive_invite()
        self.h.udp.connected = False
        run_until(self.h.clock, 1)
        self.assertTrue(transaction.terminated)
        self.assertEqual(self.h.layer.transactions(), [])

    def test_tu_failure_is_answered_with_500(self) -> None:
        self.h.user.fail_on_request = True
        transaction = self.receive_invite()
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(self.h.udp.start_lines(), ["SIP/2.0 500 Server Internal Error"])
        self.assertEqual(transaction.state, State.COMPLETED)


class NonInviteServerTransactionTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = harness()
        self.addCleanup(self.h.layer.close)
        self.options = request("OPTIONS", branch="z9hG4bK.opt")

    def receive(self, connection: FakeConnection | None = None) -> ServerTransaction:
        self.h.layer.receive(self.options, connection or self.h.udp)
        return self.h.user.server_transactions[-1]

    def test_non_invite_server_sends_no_100_of_its_own(self) -> None:
        transaction = self.receive()
        self.assertEqual(transaction.state, State.TRYING)
        run_until(self.h.clock, 60)
        self.assertEqual(self.h.udp.sent, [])

    def test_non_invite_server_absorbs_retransmissions_then_repeats_the_last_response(self) -> None:
        transaction = self.receive()
        self.h.layer.receive(self.options, self.h.udp)  # Trying: discarded (§17.2.2)
        self.assertEqual(self.h.udp.sent, [])
        trying = response(self.options, 100, to_tag=None)
        transaction.respond(trying)
        self.assertEqual(transaction.state, State.PROCEEDING)
        self.h.layer.receive(self.options, self.h.udp)
        ok = response(self.options, 200)
        transaction.respond(ok)
        self.h.layer.receive(self.options, self.h.udp)
        self.assertEqual([m.serialize() for m in self.h.udp.messages()], [m.serialize() for m in (trying, trying, ok, ok)])
        self.assertEqual(self.h.user.kinds(), ["request"])

    def test_non_invite_server_timer_j_is_64_t1_on_udp(self) -> None:
        transaction = self.receive()
        run_until(self.h.clock, 2)
        transaction.respond(response(self.options, 200))
        self.assertEqual(transaction.state, State.COMPLETED)
        run_until(self.h.clock, 33.99)
        self.assertEqual(transaction.state, State.COMPLETED)
        run_until(self.h.clock, 34)
        self.assertTrue(transaction.terminated)
        self.assertEqual(self.h.udp.times(), [2])  # finals are never retransmitted on a timer
        self.assertEqual(self.h.layer.transactions(), [])

    def test_non_invite_server_timer_j_is_zero_on_reliable_transport(self) -> None:
        transaction = self.receive(self.h.tcp)
        transaction.respond(response(self.options, 200))
        self.assertTrue(transaction.terminated)
        self.assertEqual(self.h.layer.transactions(), [])
        self.assertEqual(self.h.clock.getDelayedCalls(), [])

    def test_non_invite_server_discards_a_second_final(self) -> None:
        # §17.2.2: other finals from the TU MUST be discarded in Completed.
        transaction = self.receive()
        transaction.respond(response(self.options, 200))
        transaction.respond(response(self.options, 500))
        self.assertEqual(self.h.udp.start_lines(), ["SIP/2.0 200 OK"])
        self.assertEqual(transaction.last_status, 200)

    def test_non_invite_server_refuses_a_provisional_after_the_final(self) -> None:
        transaction = self.receive()
        transaction.respond(response(self.options, 200))
        with self.assertRaisesRegex(
            TransactionStateError, "^non-INVITE server transaction in state Completed cannot handle 1xx from TU$"
        ):
            transaction.respond(response(self.options, 180))

    def test_non_invite_server_request_after_timer_j_is_a_new_transaction(self) -> None:
        transaction = self.receive()
        transaction.respond(response(self.options, 200))
        run_until(self.h.clock, 40)
        again = self.receive()
        self.assertIsNot(again, transaction)
        self.assertEqual(self.h.user.kinds(), ["request", "request"])

    def test_non_invite_server_transport_error_terminates(self) -> None:
        transaction = self.receive()
        self.h.udp.connected = False
        transaction.respond(response(self.options, 200))
        self.assertTrue(transaction.terminated)
        self.assertEqual(self.h.layer.transactions(), [])
