"""Client transactions: RFC 3261 §17.1.1 (Figure 5, with RFC 6026 §7.2) and §17.1.2 (Figure 6)."""

from __future__ import annotations

from twisted.trial import unittest

from epcscf.sip.headers import all_vias, cseq, to_tag
from epcscf.sip.message import Request
from epcscf.sip.transaction import ClientTransaction, State, TimerSettings

from tests.support.fakes import FakeConnection
from tests.test_sip_transaction_fakes import harness, request, response, run_until

WIC_TIMERS = TimerSettings(t1=2.0, t2=16.0, t4=17.0, d=130.0)  # TS 24.229 Table 7.7.1 toward a UE


class InviteClientTransactionTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = harness()
        self.addCleanup(self.h.layer.close)
        self.invite = request("INVITE", branch="z9hG4bK.out1")

    def send(self, connection: FakeConnection | None = None, timers: TimerSettings | None = None) -> ClientTransaction:
        return self.h.layer.send_request(self.invite, connection or self.h.udp, self.h.user, timers)

    def test_invite_client_timer_a_doubles_until_timer_b(self) -> None:
        # §17.1.1.2: retransmit at T1, 2*T1, 4*T1 ... (no T2 cap) until Timer B = 64*T1.
        transaction = self.send()
        self.assertEqual(transaction.state, State.CALLING)
        run_until(self.h.clock, 100)
        self.assertEqual(self.h.udp.times(), [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5])
        self.assertTrue(all(m is self.invite for m in self.h.udp.messages()))
        self.assertEqual(self.h.user.calls, [(32.0, "timeout", "INVITE")])
        self.assertTrue(transaction.terminated)
        self.assertEqual(self.h.layer.transactions(), [])

    def test_invite_client_timer_b_is_64_t1_of_the_settings_given(self) -> None:
        self.send(timers=WIC_TIMERS)
        run_until(self.h.clock, 200)
        self.assertEqual(self.h.udp.times(), [0, 2, 6, 14, 30, 62, 126])
        self.assertEqual(self.h.user.calls, [(128.0, "timeout", "INVITE")])

    def test_invite_client_on_reliable_transport_never_retransmits(self) -> None:
        # Table 4: Timer A is not armed on a reliable transport; Timer B still is.
        self.send(self.h.tcp)
        run_until(self.h.clock, 100)
        self.assertEqual(self.h.tcp.times(), [0])
        self.assertEqual(self.h.user.calls, [(32.0, "timeout", "INVITE")])
        self.assertEqual(self.h.layer.transactions(), [])

    def test_invite_client_provisional_stops_timer_a_and_timer_b(self) -> None:
        transaction = self.send()
        run_until(self.h.clock, 0.7)
        self.h.layer.receive(response(self.invite, 180), self.h.udp)
        self.assertEqual(transaction.state, State.PROCEEDING)
        run_until(self.h.clock, 1000)
        self.assertEqual(self.h.udp.times(), [0, 0.5])
        self.assertEqual(self.h.user.calls, [(0.7, "response", 180)])
        self.assertEqual(self.h.layer.transactions(), [transaction])  # Timer C is the proxy's

    def test_invite_client_acks_non_2xx_itself_with_the_same_branch(self) -> None:
        # §17.1.1.3: same Request-URI, Call-ID, From, CSeq number; To from the response;
        # one Via equal to the INVITE's top Via; the INVITE's Route.
        self.send()
        busy = response(self.invite, 486)
        self.h.layer.receive(busy, self.h.udp)
        ack = self.h.udp.messages()[-1]
        assert isinstance(ack, Request)
        self.assertEqual(ack.method, "ACK")
        self.assertEqual(ack.uri, self.invite.uri)
        self.assertEqual([str(v) for v in all_vias(ack)], ["SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK.out1"])
        self.assertEqual(ack.headers.get_all("route"), ["<sip:edge.example.com;lr>"])
        self.assertEqual(to_tag(ack), "bob1")
        self.assertEqual(ack.headers.get("from"), self.invite.headers.get("from"))
        self.assertEqual(ack.call_id, self.invite.call_id)
        self.assertEqual(str(cseq(ack)), "1 ACK")
        self.assertEqual(ack.headers.get("max-forwards"), "69")
        self.assertEqual(self.h.user.calls, [(0.0, "response", 486)])

    def test_invite_client_retransmitted_final_is_acked_again_not_passed_up(self) -> None:
        transaction = self.send()
        busy = response(self.invite, 486)
        self.h.layer.receive(busy, self.h.udp)
        run_until(self.h.clock, 2)
        self.h.layer.receive(busy, self.h.udp)
        self.assertEqual(transaction.state, State.COMPLETED)
        self.assertEqual(self.h.udp.start_lines()[1:], ["ACK sip:bob@example.com SIP/2.0"] * 2)
        self.assertEqual(self.h.user.kinds(), ["response"])

    def test_invite_client_timer_d_is_32_seconds_on_udp(self) -> None:
        transaction = self.send()
        run_until(self.h.clock, 1)
        self.h.layer.receive(response(self.invite, 404), self.h.udp)
        run_until(self.h.clock, 32.99)
        self.assertEqual(transaction.state, State.COMPLETED)
        run_until(self.h.clock, 33)
        self.assertTrue(transaction.terminated)
        self.assertEqual(self.h.layer.transactions(), [])
        self.assertEqual(self.h.clock.getDelayedCalls(), [])

    def test_invite_client_timer_d_is_configurable_for_ts_24_229(self) -> None:
        transaction = self.send(timers=WIC_TIMERS)
        self.h.layer.receive(response(self.invite, 404), self.h.udp)
        run_until(self.h.clock, 129.99)
        self.assertEqual(transaction.state, State.COMPLETED)
        run_until(self.h.clock, 130)
        self.assertTrue(transaction.terminated)

    def test_invite_client_timer_d_is_zero_on_reliable_transport(self) -> None:
        transaction = self.send(self.h.tcp)
        self.h.layer.receive(response(self.invite, 486), self.h.tcp)
        self.assertTrue(transaction.terminated)
        self.assertEqual(self.h.tcp.start_lines()[-1], "ACK sip:bob@example.com SIP/2.0")
        self.assertEqual(self.h.user.kinds(), ["response"])
        self.assertEqual(self.h.layer.transactions(), [])

    def test_invite_client_2xx_moves_to_accepted_and_passes_every_2xx_until_timer_m(self) -> None:
        # RFC 6026 §7.2: Accepted; every 2xx goes to the TU; no ACK from the transaction.
        transaction = self.send()
        run_until(self.h.clock, 0.2)
        self.h.layer.receive(response(self.invite, 200), self.h.udp)
        self.assertEqual(transaction.state, State.ACCEPTED)
        run_until(self.h.clock, 4)
        self.h.layer.receive(response(self.invite, 200), self.h.udp)
        self.h.layer.receive(response(self.invite, 200, to_tag="fork2"), self.h.udp)
        self.h.layer.receive(response(self.invite, 180), self.h.udp)  # absorbed
        self.assertEqual(self.h.user.calls, [(0.2, "response", 200), (4.0, "response", 200), (4.0, "response", 200)])
        self.assertEqual(self.h.udp.times(), [0])  # neither retransmission nor ACK
        run_until(self.h.clock, 32.19)
        self.assertEqual(transaction.state, State.ACCEPTED)
        run_until(self.h.clock, 32.2)  # Timer M = 64*T1
        self.assertTrue(transaction.terminated)
        self.h.layer.receive(response(self.invite, 200), self.h.udp)
        self.assertEqual(self.h.user.calls[-1], (32.2, "stray", 200))

    def test_invite_client_first_send_failure_is_reported_on_the_next_turn(self) -> None:
        # §17.1.4: the TU hears of it after send_request has returned.
        self.h.udp.connected = False
        transaction = self.send()
        self.assertEqual(self.h.user.calls, [])
        self.h.clock.advance(0)
        self.assertEqual(self.h.user.calls, [(0.0, "transport failed", "peer closed the connection")])
        self.assertTrue(transaction.terminated)
        self.assertEqual(self.h.layer.transactions(), [])
        self.assertEqual(self.h.clock.getDelayedCalls(), [])

    def test_invite_client_retransmission_failure_terminates(self) -> None:
        transaction = self.send()
        self.h.udp.connected = False
        run_until(self.h.clock, 10)
        self.assertEqual(self.h.user.calls, [(0.5, "transport failed", "peer closed the connection")])
        self.assertTrue(transaction.terminated)
        self.assertEqual(self.h.clock.getDelayedCalls(), [])

    def test_invite_client_ack_send_failure_informs_tu(self) -> None:
        transaction = self.send()
        self.h.udp.connected = False
        self.h.layer.receive(response(self.invite, 486), self.h.udp)
        self.assertEqual(self.h.user.kinds(), ["response", "transport failed"])
        self.assertTrue(transaction.terminated)
        self.assertEqual(self.h.clock.getDelayedCalls(), [])


class NonInviteClientTransactionTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = harness()
        self.addCleanup(self.h.layer.close)
        self.register = request("REGISTER", branch="z9hG4bK.reg1", uri="sip:example.com")

    def send(self, connection: FakeConnection | None = None, timers: TimerSettings | None = None) -> ClientTransaction:
        return self.h.layer.send_request(self.register, connection or self.h.udp, self.h.user, timers)

    def test_non_invite_client_timer_e_doubles_up_to_t2_until_timer_f(self) -> None:
        # §17.1.2.2: E = T1, 2*T1 ... capped at T2 = 4 s; F = 64*T1 → timeout.
        transaction = self.send()
        self.assertEqual(transaction.state, State.TRYING)
        run_until(self.h.clock, 100)
        self.assertEqual(self.h.udp.times(), [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5])
        self.assertEqual(self.h.user.calls, [(32.0, "timeout", "REGISTER")])
        self.assertEqual(self.h.layer.transactions(), [])

    def test_non_invite_client_timer_e_is_t2_in_proceeding(self) -> None:
        transaction = self.send()
        run_until(self.h.clock, 0.2)
        self.h.layer.receive(response(self.register, 100, to_tag=None), self.h.udp)
        self.assertEqual(transaction.state, State.PROCEEDING)
        run_until(self.h.clock, 100)
        self.assertEqual(self.h.udp.times(), [0, 0.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5])
        self.assertEqual(self.h.user.calls, [(0.2, "response", 100), (32.0, "timeout", "REGISTER")])

    def test_non_invite_client_timer_f_toward_a_ue_is_128_seconds(self) -> None:
        self.send(timers=WIC_TIMERS)
        run_until(self.h.clock, 200)
        self.assertEqual(self.h.udp.times(), [0, 2, 6, 14, 30, 46, 62, 78, 94, 110, 126])
        self.assertEqual(self.h.user.calls, [(128.0, "timeout", "REGISTER")])

    def test_non_invite_client_timer_k_is_t4_and_absorbs_retransmitted_finals(self) -> None:
        transaction = self.send()
        run_until(self.h.clock, 1)
        ok = response(self.register, 200)
        self.h.layer.receive(ok, self.h.udp)
        self.assertEqual(transaction.state, State.COMPLETED)
        self.h.layer.receive(ok, self.h.udp)
        run_until(self.h.clock, 5.99)
        self.assertEqual(transaction.state, State.COMPLETED)
        self.assertEqual(self.h.udp.times(), [0, 0.5])  # no retransmission once Completed
        run_until(self.h.clock, 6)  # Timer K = T4
        self.assertTrue(transaction.terminated)
        self.assertEqual(self.h.user.calls, [(1.0, "response", 200)])
        self.assertEqual(self.h.layer.transactions(), [])

    def test_non_invite_client_on_reliable_transport(self) -> None:
        # Table 4: no Timer E; K = 0; F still 64*T1.
        transaction = self.send(self.h.tcp)
        run_until(self.h.clock, 10)
        self.assertEqual(self.h.tcp.times(), [0])
        self.h.layer.receive(response(self.register, 401), self.h.tcp)
        self.assertTrue(transaction.terminated)
        self.assertEqual(self.h.layer.transactions(), [])
        self.assertEqual(self.h.clock.getDelayedCalls(), [])
        self.assertEqual(self.h.user.calls, [(10.0, "response", 401)])

    def test_non_invite_client_reliable_timer_f(self) -> None:
        self.send(self.h.tcp)
        run_until(self.h.clock, 100)
        self.assertEqual(self.h.user.calls, [(32.0, "timeout", "REGISTER")])

    def test_non_invite_client_transport_failure_on_retransmission(self) -> None:
        transaction = self.send()
        run_until(self.h.clock, 1)
        self.h.udp.connected = False
        run_until(self.h.clock, 10)
        self.assertEqual(self.h.user.calls, [(1.5, "transport failed", "peer closed the connection")])
        self.assertTrue(transaction.terminated)


class SendRequestValidationTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = harness()
        self.addCleanup(self.h.layer.close)

    def test_ack_is_not_a_client_transaction(self) -> None:
        with self.assertRaisesRegex(ValueError, "ACK is not a client transaction"):
            self.h.layer.send_request(request("ACK"), self.h.udp, self.h.user)

    def test_request_needs_an_rfc_3261_branch(self) -> None:
        with self.assertRaisesRegex(ValueError, "z9hG4bK"):
            self.h.layer.send_request(request("OPTIONS", branch="old"), self.h.udp, self.h.user)

    def test_cseq_method_must_match(self) -> None:
        with self.assertRaisesRegex(ValueError, "CSeq header with method OPTIONS"):
            self.h.layer.send_request(request("OPTIONS", cseq_method="INVITE"), self.h.udp, self.h.user)

    def test_branch_reuse_is_refused(self) -> None:
        self.h.layer.send_request(request("OPTIONS"), self.h.udp, self.h.user)
        with self.assertRaisesRegex(ValueError, "already used"):
            self.h.layer.send_request(request("OPTIONS"), self.h.udp, self.h.user)
        self.assertEqual(len(self.h.layer.transactions()), 1)
