"""Which transaction a message belongs to: RFC 3261 §17.1.3, §17.2.3 (and RFC 2543
fallback), §9.2 CANCEL matching, §8.2.2.2 merged requests; layer bookkeeping."""

from __future__ import annotations

from twisted.trial import unittest

from epcscf.sip.message import Headers, Request
from epcscf.sip.transaction import State, TimerSettings, TransactionLayer

from tests.support.fakes import FakeConnection
from tests.test_sip_transaction_fakes import harness, request, response, run_until


class ResponseMatchingTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = harness()
        self.addCleanup(self.h.layer.close)

    def test_response_matches_on_branch_and_cseq_method(self) -> None:
        # §17.1.3: an INVITE and its CANCEL share the branch; the CSeq method tells them apart.
        invite = request("INVITE", branch="z9hG4bK.b1")
        cancel = request("CANCEL", branch="z9hG4bK.b1")
        invite_tx = self.h.layer.send_request(invite, self.h.udp, self.h.user)
        self.h.layer.receive(response(invite, 180), self.h.udp)
        cancel_tx = self.h.layer.send_request(cancel, self.h.udp, self.h.user)
        self.h.layer.receive(response(cancel, 200), self.h.udp)
        self.assertEqual(cancel_tx.state, State.COMPLETED)
        self.assertEqual(invite_tx.state, State.PROCEEDING)
        self.h.layer.receive(response(invite, 487), self.h.udp)
        self.assertEqual(invite_tx.state, State.COMPLETED)
        self.assertEqual(self.h.user.kinds(), ["response"] * 3)

    def test_response_from_another_branch_is_stray(self) -> None:
        self.h.layer.send_request(request("INVITE", branch="z9hG4bK.b1"), self.h.udp, self.h.user)
        self.h.layer.receive(response(request("INVITE", branch="z9hG4bK.other"), 200), self.h.udp)
        self.assertEqual(self.h.user.calls, [(0.0, "stray", 200)])

    def test_response_with_unreadable_cseq_is_dropped(self) -> None:
        invite = request("INVITE", branch="z9hG4bK.b1")
        transaction = self.h.layer.send_request(invite, self.h.udp, self.h.user)
        broken = response(invite, 200)
        broken.headers.set("CSeq", "one INVITE")
        self.h.layer.receive(broken, self.h.udp)
        self.assertEqual(self.h.user.calls, [])
        self.assertEqual(transaction.state, State.CALLING)


class RequestMatchingTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = harness()
        self.addCleanup(self.h.layer.close)

    def test_same_branch_from_another_sent_by_is_another_transaction(self) -> None:
        # §17.2.3: branch AND sent-by AND method.
        self.h.layer.receive(request("INVITE", sent_by="10.0.0.1:5060"), self.h.udp)
        self.h.layer.receive(request("INVITE", sent_by="10.0.0.2:5060"), self.h.udp)
        self.h.layer.receive(request("INVITE", sent_by="10.0.0.1:5060"), self.h.udp)
        self.assertEqual(self.h.user.kinds(), ["request", "request"])
        self.assertEqual(len(self.h.layer.transactions()), 2)

    def test_sent_by_host_compares_case_insensitively(self) -> None:
        self.h.layer.receive(request("OPTIONS", sent_by="Proxy.Example.com"), self.h.udp)
        self.h.layer.receive(request("OPTIONS", sent_by="proxy.example.COM"), self.h.udp)
        self.assertEqual(self.h.user.kinds(), ["request"])

    def test_cancel_is_its_own_transaction_and_finds_the_invite(self) -> None:
        # §9.2: the CANCEL matches the INVITE as if it were that INVITE.
        invite = request("INVITE", branch="z9hG4bK.inv")
        self.h.layer.receive(invite, self.h.udp)
        invite_tx = self.h.user.server_transactions[0]
        invite_tx.respond(response(invite, 180))
        cancel = request("CANCEL", branch="z9hG4bK.inv")
        self.h.layer.receive(cancel, self.h.udp)
        self.assertEqual(self.h.user.kinds(), ["request", "request"])
        cancel_tx = self.h.user.server_transactions[1]
        self.assertIsNot(cancel_tx, invite_tx)
        self.assertFalse(cancel_tx.is_invite)
        self.assertIs(self.h.layer.find_invite_server_transaction(cancel), invite_tx)

    def test_cancel_with_another_branch_or_sent_by_matches_nothing(self) -> None:
        self.h.layer.receive(request("INVITE", branch="z9hG4bK.inv"), self.h.udp)
        self.assertIsNone(self.h.layer.find_invite_server_transaction(request("CANCEL", branch="z9hG4bK.x")))
        self.assertIsNone(
            self.h.layer.find_invite_server_transaction(request("CANCEL", branch="z9hG4bK.inv", sent_by="10.9.9.9"))
        )

    def test_cancel_does_not_find_a_finished_invite(self) -> None:
        invite = request("INVITE", branch="z9hG4bK.inv")
        self.h.layer.receive(invite, self.h.tcp)
        self.h.user.server_transactions[0].respond(response(invite, 486))
        self.h.layer.receive(request("ACK", branch="z9hG4bK.inv"), self.h.tcp)  # I = 0 on TCP
        self.assertIsNone(self.h.layer.find_invite_server_transaction(request("CANCEL", branch="z9hG4bK.inv")))

    def test_ack_matching_no_transaction_goes_to_the_tu(self) -> None:
        self.h.layer.receive(request("ACK", branch="z9hG4bK.ack", to_tag="bob1"), self.h.udp)
        self.assertEqual(self.h.user.calls, [(0.0, "ack", "ACK")])
        self.assertEqual(self.h.layer.transactions(), [])

    def test_request_with_unreadable_cseq_is_answered_400(self) -> None:
        broken = request("OPTIONS")
        broken.headers.set("CSeq", "1")
        self.h.layer.receive(broken, self.h.udp)
        self.assertEqual(self.h.user.calls, [])
        (answer,) = self.h.udp.messages()
        self.assertRegex(answer.start_line(), r"^SIP/2.0 400 Bad Request \(CSeq: .*\)$")
        self.assertEqual(self.h.layer.transactions(), [])

    def test_ack_with_unreadable_via_is_dropped_silently(self) -> None:
        broken = request("ACK")
        broken.headers.replace_all("Via", ["garbage"])
        self.h.layer.receive(broken, self.h.udp)
        self.assertEqual(self.h.udp.sent, [])
        self.assertEqual(self.h.user.calls, [])

    def test_request_without_via_is_dropped(self) -> None:
        bare = Request("OPTIONS", "sip:x@example.com", Headers.from_pairs([("CSeq", "1 OPTIONS")]))
        self.h.layer.receive(bare, self.h.udp)
        self.assertEqual(self.h.udp.sent, [])
        self.assertEqual(self.h.user.calls, [])


class Rfc2543MatchingTests(unittest.TestCase):
    """§17.2.3: requests whose branch lacks the magic cookie (or that have none)."""

    def setUp(self) -> None:
        self.h = harness()
        self.addCleanup(self.h.layer.close)

    def test_rfc2543_invite_retransmission_is_absorbed(self) -> None:
        invite = request("INVITE", branch=None)
        self.h.layer.receive(invite, self.h.udp)
        transaction = self.h.user.server_transactions[0]
        ringing = response(invite, 180)
        transaction.respond(ringing)
        self.h.layer.receive(request("INVITE", branch=None), self.h.udp)
        self.assertEqual(self.h.user.kinds(), ["request"])
        self.assertEqual(self.h.udp.messages(), [ringing, ringing])

    def test_rfc2543_request_uri_compares_as_a_uri(self) -> None:
        self.h.layer.receive(request("INVITE", branch="1", uri="sip:bob@example.com"), self.h.udp)
        self.h.layer.receive(request("INVITE", branch="1", uri="sip:bob@EXAMPLE.com"), self.h.udp)
        self.assertEqual(self.h.user.kinds(), ["request"])

    def test_rfc2543_other_call_id_cseq_from_tag_or_uri_is_a_new_transaction(self) -> None:
        self.h.layer.receive(request("INVITE", branch="old1"), self.h.udp)
        for variant in (
            request("INVITE", branch="old1", call_id="other@example.com"),
            request("INVITE", branch="old1", cseq=2),
            request("INVITE", branch="old1", from_tag="mallory"),
            request("INVITE", branch="old1", uri="sip:carol@example.com"),
            request("INVITE", branch="old2"),  # top Via differs
        ):
            self.h.layer.receive(variant, self.h.udp)
        self.assertEqual(self.h.user.kinds(), ["request"] * 6)

    def test_rfc2543_ack_matches_on_the_to_tag_of_our_response(self) -> None:
        invite = request("INVITE", branch=None)
        self.h.layer.receive(invite, self.h.udp)
        transaction = self.h.user.server_transactions[0]
        transaction.respond(response(invite, 486, to_tag="ours"))
        self.h.layer.receive(request("ACK", branch=None, to_tag="someone-else"), self.h.udp)
        self.assertEqual(transaction.state, State.COMPLETED)
        self.assertEqual(self.h.user.kinds(), ["request", "ack"])
        self.h.layer.receive(request("ACK", branch=None, to_tag="ours"), self.h.udp)
        self.assertEqual(transaction.state, State.CONFIRMED)
        self.assertEqual(self.h.user.kinds(), ["request", "ack"])

    def test_rfc2543_cancel_finds_the_invite(self) -> None:
        self.h.layer.receive(request("INVITE", branch=None), self.h.udp)
        invite_tx = self.h.user.server_transactions[0]
        cancel = request("CANCEL", branch=None)
        self.h.layer.receive(cancel, self.h.udp)
        self.assertEqual(self.h.user.kinds(), ["request", "request"])  # the CANCEL is new
        self.assertIs(self.h.layer.find_invite_server_transaction(cancel), invite_tx)
        self.assertIsNone(self.h.layer.find_invite_server_transaction(request("CANCEL", branch=None, cseq=7)))

    def test_rfc2543_non_invite_retransmission_is_absorbed_and_removed_after_timer_j(self) -> None:
        self.h.layer.receive(request("OPTIONS", branch=None), self.h.udp)
        transaction = self.h.user.server_transactions[0]
        transaction.respond(response(transaction.request, 200))
        self.h.layer.receive(request("OPTIONS", branch=None), self.h.udp)
        self.assertEqual(self.h.user.kinds(), ["request"])
        self.assertEqual(self.h.udp.start_lines(), ["SIP/2.0 200 OK"] * 2)
        run_until(self.h.clock, 32)
        self.assertEqual(self.h.layer.transactions(), [])


class MergedRequestTests(unittest.TestCase):
    """§8.2.2.2: the same request arriving twice by different paths."""

    def setUp(self) -> None:
        self.h = harness()
        self.addCleanup(self.h.layer.close)

    def test_same_from_tag_call_id_cseq_with_another_branch_is_merged(self) -> None:
        first = request("INVITE", branch="z9hG4bK.path1", sent_by="10.0.0.1")
        self.h.layer.receive(first, self.h.udp)
        self.assertFalse(self.h.layer.is_merged_request(first))
        self.assertFalse(self.h.layer.is_merged_request(request("INVITE", branch="z9hG4bK.path1", sent_by="10.0.0.1")))
        second = request("INVITE", branch="z9hG4bK.path2", sent_by="10.0.0.2")
        self.h.layer.receive(second, self.h.udp)
        self.assertTrue(self.h.layer.is_merged_request(second))

    def test_the_answer_is_the_same_when_the_tu_passes_the_request_s_own_transaction(self) -> None:
        first = request("INVITE", branch="z9hG4bK.path1", sent_by="10.0.0.1")
        self.h.layer.receive(first, self.h.udp)
        [own_first] = self.h.user.server_transactions
        self.assertFalse(self.h.layer.is_merged_request(first, own_first))
        second = request("INVITE", branch="z9hG4bK.path2", sent_by="10.0.0.2")
        self.h.layer.receive(second, self.h.udp)
        own_second = self.h.user.server_transactions[1]
        self.assertTrue(self.h.layer.is_merged_request(second, own_second))
        # A transaction that is not the request's own is not trusted for its identity.
        self.assertTrue(self.h.layer.is_merged_request(second, own_first))

    def test_a_request_with_a_to_tag_is_never_merged(self) -> None:
        self.h.layer.receive(request("INFO", branch="z9hG4bK.p1", to_tag="t"), self.h.udp)
        self.assertFalse(self.h.layer.is_merged_request(request("INFO", branch="z9hG4bK.p2", to_tag="t")))

    def test_other_cseq_or_call_id_is_not_merged(self) -> None:
        self.h.layer.receive(request("INVITE", branch="z9hG4bK.p1"), self.h.udp)
        self.assertFalse(self.h.layer.is_merged_request(request("INVITE", branch="z9hG4bK.p2", cseq=2)))
        self.assertFalse(self.h.layer.is_merged_request(request("INVITE", branch="z9hG4bK.p2", call_id="x@y")))

    def test_not_merged_once_the_first_transaction_is_over(self) -> None:
        first = request("MESSAGE", branch="z9hG4bK.p1")
        self.h.layer.receive(first, self.h.tcp)
        self.h.user.server_transactions[0].respond(response(first, 200))  # J = 0 on TCP
        self.assertFalse(self.h.layer.is_merged_request(request("MESSAGE", branch="z9hG4bK.p2")))

    def test_a_merged_request_stays_merged_while_either_of_two_siblings_is_ongoing(self) -> None:
        # Two transactions on one merge key (the second answered 482 by a UAS, still lingering),
        # then either ends: a third copy is merged as long as one of them is ongoing.
        first = request("MESSAGE", branch="z9hG4bK.p1")
        second = request("MESSAGE", branch="z9hG4bK.p2")
        self.h.layer.receive(first, self.h.udp)
        self.h.layer.receive(second, self.h.tcp)
        [own_first, own_second] = self.h.user.server_transactions
        self.assertTrue(self.h.layer.is_merged_request(second, own_second))
        own_second.respond(response(second, 482))  # Timer J = 0 on TCP: over at once
        third = request("MESSAGE", branch="z9hG4bK.p3")
        self.assertTrue(self.h.layer.is_merged_request(third))
        self.assertFalse(self.h.layer.is_merged_request(first, own_first))
        own_first.respond(response(first, 200))  # UDP: lingers 64*T1 (Timer J), still ongoing
        self.assertTrue(self.h.layer.is_merged_request(third))
        self.h.clock.advance(TimerSettings().j)
        self.assertFalse(self.h.layer.is_merged_request(third))


class LayerLifecycleTests(unittest.TestCase):
    def test_nothing_is_left_after_a_proxied_call_attempt(self) -> None:
        # An INVITE in (UDP), the same INVITE out (UDP) with a new branch, 180, 486, ACKs.
        h = harness()
        h.user.respond_with = None
        invite_in = request("INVITE", branch="z9hG4bK.in")
        h.layer.receive(invite_in, h.udp)
        server = h.user.server_transactions[0]
        server.respond(response(invite_in, 100, to_tag=None))
        core = FakeConnection(remote=h.udp.local, id="udp:core", clock=h.clock)
        invite_out = request("INVITE", branch="z9hG4bK.out")
        client = h.layer.send_request(invite_out, core, h.user)
        h.layer.receive(response(invite_out, 180), core)
        h.layer.receive(response(invite_out, 486), core)
        server.respond(response(invite_in, 486))
        h.layer.receive(request("ACK", branch="z9hG4bK.in", to_tag="bob1"), h.udp)
        self.assertEqual((server.state, client.state), (State.CONFIRMED, State.COMPLETED))
        run_until(h.clock, 64)
        self.assertEqual(h.layer.transactions(), [])
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_close_cancels_every_timer(self) -> None:
        h = harness()
        h.layer.receive(request("INVITE", branch="z9hG4bK.a"), h.udp)
        h.layer.receive(request("OPTIONS", branch="old"), h.udp)
        h.layer.send_request(request("REGISTER", branch="z9hG4bK.r"), h.udp, h.user)
        h.udp.connected = False
        h.layer.send_request(request("MESSAGE", branch="z9hG4bK.m"), h.udp, h.user)
        self.assertEqual(len(h.layer.transactions()), 4)
        self.assertNotEqual(h.clock.getDelayedCalls(), [])
        transactions = h.layer.transactions()
        h.layer.close()
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertEqual(h.layer.transactions(), [])
        self.assertTrue(all(t.terminated for t in transactions))
        run_until(h.clock, 100)
        self.assertEqual(h.user.kinds(), ["request", "request"])  # no timeout, no failure

    def test_timers_are_chosen_per_connection(self) -> None:
        from epcscf.sip.transaction import TimerSettings
        from tests.test_sip_transaction_fakes import Recorder
        from twisted.internet.task import Clock

        clock = Clock()
        user = Recorder(clock)
        wic = FakeConnection("UDP", id="wic", clock=clock)
        core = FakeConnection("UDP", id="core", clock=clock)
        layer = TransactionLayer(clock, user, lambda c: TimerSettings(t1=2.0) if c.id == "wic" else TimerSettings())
        self.addCleanup(layer.close)
        layer.send_request(request("OPTIONS", branch="z9hG4bK.w"), wic, user)
        layer.send_request(request("OPTIONS", branch="z9hG4bK.c"), core, user)
        run_until(clock, 200)
        self.assertEqual(wic.times()[:3], [0, 2, 6])
        self.assertEqual(core.times()[:3], [0, 0.5, 1.5])
        self.assertEqual([when for when, kind, _ in user.calls], [32.0, 128.0])
