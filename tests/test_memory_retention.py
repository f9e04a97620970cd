"""What a finished exchange leaves behind: only what its remaining timers need, then nothing.

A transaction lingers 64*T1 after its final response to absorb retransmissions (RFC 3261
§17.1.1.2, §17.2.1, §17.2.2; RFC 6026 §7.1, §7.2: 128 s with the WIC-side T1 of 2 s), a closed
WebSocket stays named by ended calls and transactions, and an ended call stays in the
console's history for ``keep_ended`` seconds.  These tests check with weak references and
``gc.collect()`` that the big things (the SIP messages with their SDP, the Autobahn protocol,
the call and its media) are let go as soon as nothing needs them, and that the history
empties by itself once the traffic stops.  What Python frees, glibc keeps in the process
unless asked (``epcscf.ops.heap``): the last tests check that it is asked, once per burst.
"""

from __future__ import annotations

import dataclasses
import gc
import weakref
from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet import task
from twisted.internet.task import deferLater
from twisted.trial import unittest

from epcscf.ops.heap import HeapTrimmer, glibc_heap
from epcscf.pcscf.calls import CallManager, CallSettings
from epcscf.sip.connection import Address, ConnectionLost
from epcscf.sip.message import Request, Response
from epcscf.sip.transaction import State, TimerSettings, TransactionLayer
from epcscf.sip.transaction_server import SentResponse
from epcscf.ws.connection import CloseReason, WsConnection
from tests import test_calls_manager
from tests.test_calls_media import CallMediaTestCase
from tests.support.fakes import FakeConnection, FakeServerTransaction
from tests.test_calls_manager import ADDRESSES, FakeMedia, FakeProxy, invite, response_to
from tests.test_sip_transaction_fakes import Recorder, request, response

SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" * 8


def with_sdp(message: Request | Response) -> Request | Response:
    message.headers.add("Content-Type", "application/sdp")
    message.body = SDP
    message.headers.set("Content-Length", str(len(SDP)))
    return message


class TransactionRetentionTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.tu = Recorder(self.clock)
        self.layer = TransactionLayer(self.clock, self.tu, lambda connection: TimerSettings())
        self.connection = FakeConnection(clock=self.clock)

    def receive(self, message: Request) -> weakref.ref:
        held = weakref.ref(message)
        self.layer.receive(message, self.connection)
        return held

    def forget_sent(self) -> None:
        # The fake connection records what was sent; a real one keeps nothing.
        self.connection.clear()
        gc.collect()

    def busy_invite_lingering(self) -> tuple[Any, bytes]:
        """An INVITE answered 486 with a body: its transaction in Completed, holding only the bytes."""
        self.receive(request("INVITE"))
        [transaction] = self.tu.server_transactions
        assert transaction.request is not None
        busy = with_sdp(response(transaction.request, 486))
        busy_held, wire = weakref.ref(busy), busy.serialize()
        transaction.respond(busy)
        del busy
        self.forget_sent()
        self.assertIsNone(busy_held())  # the parsed Response is gone, its bytes stay
        self.assertEqual(transaction.last_response, wire)  # its bytes alone
        self.assertEqual(SentResponse.from_wire(wire), SentResponse(486, wire))
        return transaction, wire

    def test_accepted_invite_server_transaction_lets_go_of_the_invite_and_its_2xx(self) -> None:
        invite_held = self.receive(with_sdp(request("INVITE")))
        [transaction] = self.tu.server_transactions
        assert transaction.request is not None
        ok = with_sdp(response(transaction.request, 200))
        ok_held = weakref.ref(ok)
        transaction.respond(ok)
        del ok
        self.forget_sent()
        self.assertIs(transaction.state, State.ACCEPTED)
        self.assertIsNone(invite_held())
        self.assertIsNone(ok_held())
        # RFC 6026 §7.1: it still absorbs the INVITE retransmission and passes the ACK up.
        self.receive(with_sdp(request("INVITE")))
        self.assertEqual(self.connection.sent, [])
        self.receive(request("ACK", to_tag="bob1"))
        self.assertEqual(self.tu.kinds(), ["request", "ack"])
        self.clock.advance(TimerSettings().l)
        self.assertEqual(self.layer.transactions(), [])

    def test_completed_server_transactions_keep_only_the_response_they_repeat(self) -> None:
        bye_held = self.receive(request("BYE"))
        [transaction] = self.tu.server_transactions
        assert transaction.request is not None
        transaction.respond(response(transaction.request, 200))
        self.forget_sent()
        self.assertIs(transaction.state, State.COMPLETED)
        self.assertIsNone(bye_held())
        # RFC 3261 §17.2.2: a retransmission gets the last response again.
        self.receive(request("BYE"))
        self.assertEqual([m.start_line() for m in self.connection.messages()], ["SIP/2.0 200 OK"])

    def test_a_udp_invite_completed_keeps_only_the_bytes_of_its_final_and_still_absorbs(self) -> None:
        transaction, wire = self.busy_invite_lingering()
        # RFC 3261 §17.2.1: a retransmitted INVITE gets the same final, byte for byte
        self.receive(request("INVITE"))
        self.assertEqual([m.serialize() for m in self.connection.messages()], [wire])
        # and the ACK is absorbed: Confirmed, nothing for the TU
        self.receive(request("ACK", cseq_method="ACK"))
        self.assertIs(transaction.state, State.CONFIRMED)
        self.assertEqual(self.tu.kinds(), ["request"])

    def test_a_lingering_transaction_lets_go_of_the_parsed_top_via_and_is_still_matched(self) -> None:
        self.receive(request("INVITE"))
        [transaction] = self.tu.server_transactions
        assert transaction.request is not None
        via = transaction.identity.via  # type: ignore[union-attr]
        transaction.respond(response(transaction.request, 486))
        self.forget_sent()
        # only RFC 2543 matching would read the parsed Via (and the rest of the request's fields)
        self.assertNotIn(transaction.identity, gc.get_referrers(via))
        self.assertEqual(transaction.identity.key, ("z9hG4bK.1", "127.0.0.1:5070", "INVITE"))
        self.receive(request("INVITE"))  # RFC 3261 §17.2.1: still matched on branch and sent-by
        self.assertEqual([m.start_line() for m in self.connection.messages()], ["SIP/2.0 486 Busy Here"])
        self.receive(request("ACK", cseq_method="ACK"))
        self.assertIs(transaction.state, State.CONFIRMED)
        self.assertEqual(self.tu.kinds(), ["request"])
        self.clock.advance(TimerSettings().t4)  # Timer I
        self.assertEqual(self.layer.transactions(), [])
        self.assertFalse(self.layer.is_merged_request(request("INVITE", branch="z9hG4bK.2")))  # the merge key is gone too

    def test_a_reliable_completed_transaction_keeps_bytes_and_still_resends_a_response_object(self) -> None:
        # RFC 3261 §18.2.2: on a stream whose connection closed the transport sends a Response to
        # the Via's sent-by, so a retransmitted request there gets the final parsed back.
        self.connection.transport = "TCP"
        _, wire = self.busy_invite_lingering()
        self.receive(request("INVITE"))
        [again] = self.connection.messages()
        self.assertIsInstance(again, Response)
        self.assertEqual(again.serialize(), wire)
        self.assertEqual(again.headers.get("Via"), "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK.1")

    def test_a_settled_transaction_runs_its_64_t1_timer_from_the_layer_fixed_delay_queue(self) -> None:
        self.receive(request("BYE"))
        [transaction] = self.tu.server_transactions
        assert transaction.request is not None
        transaction.respond(response(transaction.request, 200))
        # no QueuedCall and no entry in the machine's own timer dict: one deque entry of the layer
        self.assertEqual(transaction._timers, {})
        self.assertEqual(transaction.timer_deadlines(), {"Timer J": TimerSettings().j})
        self.assertEqual(self.layer.pending_timers(), 1)
        self.clock.advance(TimerSettings().j - 0.001)
        self.assertIs(transaction.state, State.COMPLETED)
        self.clock.advance(0.001)  # RFC 3261 §17.2.2: Timer J ends it
        self.assertIs(transaction.state, State.TERMINATED)
        self.assertEqual(self.layer.transactions(), [])
        self.assertEqual(self.layer.pending_timers(), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_lingering_transactions_arm_timers_of_their_own_and_not_each_other_s(self) -> None:
        # A lingering transaction holds the shared empty timer table and due list, not its own
        # (120 B less each); arming a timer again, from the heap (Timer G on UDP) or at once
        # (Timer I on a reliable transport), must give it its own, never touch the other's.
        udp_busy, _ = self.busy_invite_lingering()  # ACKed at once: Confirmed, then ended by Timer I
        self.tu.server_transactions.clear()
        self.receive(request("INVITE", branch="z9hG4bK.udp"))
        [on_udp] = self.tu.server_transactions
        assert on_udp.request is not None
        on_udp.respond(response(on_udp.request, 486))  # Completed: Timer G (heap) and H (queue)
        tcp = FakeConnection("TCP", id="tcp:1", clock=self.clock)
        self.layer.receive(request("INVITE", branch="z9hG4bK.tcp"), tcp)
        on_tcp = self.tu.server_transactions[1]
        assert on_tcp.request is not None
        on_tcp.respond(response(on_tcp.request, 486))  # Completed: Timer H only
        self.assertEqual(list(on_tcp.timer_deadlines()), ["Timer H"])
        self.assertEqual(sorted(on_udp.timer_deadlines()), ["Timer G", "Timer H"])
        self.clock.advance(TimerSettings().t1)  # Timer G fires and is armed again (RFC 3261 §17.2.1)
        self.assertEqual(sorted(on_udp.timer_deadlines()), ["Timer G", "Timer H"])
        self.assertEqual(list(on_tcp.timer_deadlines()), ["Timer H"])
        # RFC 3261 §17.2.1: the ACK over TCP → Confirmed, Timer I = 0 → over at once
        self.layer.receive(request("ACK", branch="z9hG4bK.tcp", cseq_method="ACK"), tcp)
        self.assertIs(on_tcp.state, State.TERMINATED)
        self.assertIs(on_udp.state, State.COMPLETED)
        self.assertEqual(sorted(on_udp.timer_deadlines()), ["Timer G", "Timer H"])
        self.clock.advance(TimerSettings().h)
        self.assertIs(on_udp.state, State.TERMINATED)
        self.assertEqual(self.layer.transactions(), [])
        self.assertEqual(self.layer.pending_timers(), 0)
        self.assertIs(udp_busy.state, State.TERMINATED)

    def test_an_acked_reliable_invite_is_let_go_at_once_not_at_timer_h(self) -> None:
        self.connection.transport = "TCP"
        transaction, _ = self.busy_invite_lingering()
        self.assertEqual(list(transaction.timer_deadlines()), ["Timer H"])
        held = weakref.ref(transaction)
        del transaction
        # RFC 3261 §17.2.1: the ACK moves it to Confirmed, and Timer I is zero on a reliable transport
        self.receive(request("ACK", cseq_method="ACK"))
        self.tu.server_transactions.clear()
        gc.collect()
        self.assertIsNone(held())  # Timer H's entry let go of it
        self.assertEqual(self.layer.transactions(), [])
        self.assertEqual(self.layer.pending_timers(), 0)
        self.clock.advance(TimerSettings().h)
        self.assertEqual(self.tu.kinds(), ["request"])

    def test_timer_h_still_ends_an_unacked_invite_and_timer_i_a_confirmed_one(self) -> None:
        transaction, wire = self.busy_invite_lingering()
        self.clock.advance(TimerSettings().h)  # RFC 3261 §17.2.1: no ACK within Timer H
        self.assertIs(transaction.state, State.TERMINATED)
        # Timer G resent the final (UDP) until then, byte for byte
        self.assertTrue(self.connection.messages())
        self.assertTrue(all(m.serialize() == wire for m in self.connection.messages()))
        self.tu.server_transactions.clear()
        second, _ = self.busy_invite_lingering()
        self.receive(request("ACK", cseq_method="ACK"))
        self.assertEqual(list(second.timer_deadlines()), ["Timer I"])
        self.clock.advance(TimerSettings().t4)
        self.assertIs(second.state, State.TERMINATED)
        self.assertEqual(self.layer.pending_timers(), 0)

    def test_closing_the_layer_cancels_the_fixed_delay_timers(self) -> None:
        self.busy_invite_lingering()
        self.layer.close()
        self.assertEqual(self.layer.pending_timers(), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_rfc2543_ack_still_matches_an_accepted_invite_without_its_response(self) -> None:
        self.receive(request("INVITE", branch="1"))
        [transaction] = self.tu.server_transactions
        assert transaction.request is not None
        transaction.respond(response(transaction.request, 200))
        self.forget_sent()
        # RFC 3261 §17.2.3: without a magic cookie the ACK matches on the To tag of our response.
        self.receive(request("ACK", branch="1", to_tag="bob1"))
        self.assertEqual(self.tu.kinds(), ["request", "ack"])

    def test_accepted_invite_client_transaction_lets_go_of_the_invite(self) -> None:
        sent = with_sdp(request("INVITE", branch="z9hG4bK.client"))
        sent_held = weakref.ref(sent)
        transaction = self.layer.send_request(sent, self.connection, self.tu)
        del sent
        ok = with_sdp(response(transaction.request, 200))  # type: ignore[arg-type]
        transaction.receive_response(ok)
        del ok
        self.forget_sent()
        self.assertIs(transaction.state, State.ACCEPTED)
        self.assertIsNone(sent_held())
        self.assertIsNone(transaction.last_response)
        self.assertEqual(transaction.key, ("z9hG4bK.client", "INVITE"))

    def test_completed_invite_client_transaction_acks_retransmissions_without_the_invite(self) -> None:
        sent = with_sdp(request("INVITE", branch="z9hG4bK.client"))
        sent_held = weakref.ref(sent)
        transaction = self.layer.send_request(sent, self.connection, self.tu)
        busy = response(sent, 486)
        del sent
        self.connection.clear()
        transaction.receive_response(busy)
        transaction.receive_response(response(busy, 486))  # retransmission
        acks = self.connection.messages()
        self.assertEqual([m.start_line() for m in acks], ["ACK sip:bob@example.com SIP/2.0"] * 2)
        self.assertEqual(acks[0].serialize(), acks[1].serialize())  # RFC 3261 §17.1.1.3
        del acks
        self.forget_sent()
        self.assertIsNone(sent_held())


class FakeSender:
    def send_frame(self, payload: bytes, binary: bool) -> None:
        pass

    def close_websocket(self, code: int, reason: str) -> None:
        pass


class WebSocketRetentionTests(unittest.TestCase):
    def test_closed_connection_lets_go_of_its_protocol(self) -> None:
        sender = FakeSender()
        held = weakref.ref(sender)
        connection = WsConnection(sender, "WS", Address("127.0.0.1", 8080), Address("127.0.0.1", 50000), None, 0.0)
        del sender
        connection.mark_closed(CloseReason(1006, "", clean=False, by_us=False))
        gc.collect()
        self.assertIsNone(held())
        self.assertRaises(ConnectionLost, connection.send_raw, b"x")
        connection.close()  # still harmless


class CallHistoryRetentionTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.medias: list[FakeMedia] = []
        self.manager = CallManager(self.clock, ADDRESSES, self._media, CallSettings(keep_ended=60), FakeProxy())
        self.wic = FakeConnection("WSS", id="wss-1")

    def _media(self, call: Any) -> FakeMedia:
        media = FakeMedia([])
        self.medias.append(media)
        return media

    def test_an_ended_call_is_forgotten_after_keep_ended_without_anyone_looking(self) -> None:
        from epcscf.sip.proxy import Branch, Forward, ProxiedRequest

        received = invite(True)
        context = ProxiedRequest(received.copy(), self.wic, FakeServerTransaction(received, self.wic))
        forward = Forward(context.request, None, [], ADDRESSES.core_sent_by)
        self.manager.originating_invite(context, "<sip:alice@example.com>", forward)
        context.branches.append(Branch(context.request, [], connection=FakeConnection("UDP", id="udp-1")))
        busy = response_to(context.request, 486)
        self.manager.response(context, busy)
        [call] = self.manager.ended_calls()
        call_held, media_held = weakref.ref(call), weakref.ref(self.medias.pop())
        del call, context, busy, forward, received
        self.clock.advance(61)  # no new call ends and nobody reads the history
        gc.collect()
        self.assertIsNone(call_held())
        self.assertIsNone(media_held())
        self.assertEqual(self.clock.getDelayedCalls(), [])


class UnansweredHistoryTests(unittest.TestCase):
    """``[calls] history_unanswered``: a call that never got a 2xx is kept a shorter time than an
    answered one, and the one pruning timer is brought forward for it."""

    # the call manager's own test harness (not imported by name: trial would run its tests here)
    setUp = test_calls_manager.CallManagerTests.setUp
    originate = test_calls_manager.CallManagerTests.originate
    respond = test_calls_manager.CallManagerTests.respond
    confirmed_originating_call = test_calls_manager.CallManagerTests.confirmed_originating_call

    def test_a_refused_call_goes_after_keep_unanswered_an_answered_one_after_keep_ended(self) -> None:
        self.manager.settings = dataclasses.replace(self.manager.settings, keep_ended=600, keep_unanswered=30)
        _, answered = self.confirmed_originating_call()
        self.manager.release(answered.call_id)
        self.clock.advance(5)
        context, _ = self.originate()
        self.respond(context, response_to(context.request, 486))
        self.assertEqual([call.summary()["cause_code"] for call in self.manager.ended_calls()],
                         ["released", "final-486"])
        self.clock.advance(30)  # the timer was armed for the answered call (600 s): moved to 30 s
        self.assertEqual([call.summary()["cause_code"] for call in self.manager.ended_calls()], ["released"])
        self.assertEqual([call.getTime() for call in self.clock.getDelayedCalls()], [600.0])
        self.clock.advance(565)
        self.assertEqual(self.manager.ended_calls(), [])
        self.assertEqual(self.manager.history._by_call_id, {})  # the stray-2xx index forgets them too
        self.assertEqual(self.clock.getDelayedCalls(), [])


class FakeHeap:
    def __init__(self) -> None:
        self.free = 0
        self.trimmed = 0

    def free_bytes(self) -> int:
        return self.free

    def trim(self) -> None:
        self.trimmed += 1  # glibc keeps counting trimmed pages as free: ``free`` unchanged


class HeapTrimmerTests(unittest.TestCase):
    MIB = 1 << 20

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.heap = FakeHeap()
        self.cpu_seconds = 0.0  # the process's CPU time, as HeapTrimmer reads it
        self.trimmer = HeapTrimmer(self.clock, self.heap, interval=10.0, threshold=16 * self.MIB,
                                   cpu=lambda: self.cpu_seconds, busy_share=0.25)
        self.trimmer.startService()
        self.addCleanup(self.trimmer.stopService)

    def test_a_burst_of_freed_memory_is_handed_back_once(self) -> None:
        self.heap.free = 8 * self.MIB  # below the threshold: steady state
        self.clock.advance(10)
        self.assertEqual(self.heap.trimmed, 0)
        self.heap.free = 60 * self.MIB  # a burst ended
        self.clock.advance(10)
        self.assertEqual(self.heap.trimmed, 1)
        self.clock.advance(60)  # nothing new freed: no trim every 10 s
        self.assertEqual(self.heap.trimmed, 1)

    def test_reused_memory_lowers_the_floor_for_the_next_burst(self) -> None:
        self.heap.free = 60 * self.MIB
        self.clock.advance(10)
        self.heap.free = 10 * self.MIB  # the next burst reuses the free chunks
        self.clock.advance(10)
        self.heap.free = 40 * self.MIB  # and frees them again
        self.clock.advance(10)
        self.assertEqual(self.heap.trimmed, 2)

    def test_stopping_cancels_the_timer(self) -> None:
        self.trimmer.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_busy_node_trims_only_once_it_is_quiet(self) -> None:
        self.heap.free = 60 * self.MIB  # plenty freed, but the node works: 5 s of CPU in 10 s
        self.cpu_seconds += 5.0
        self.clock.advance(10)
        self.cpu_seconds += 3.0
        self.clock.advance(10)
        self.assertEqual((self.heap.trimmed, self.trimmer.deferred_trims), (0, 2))
        self.cpu_seconds += 0.5  # the burst is over: 5 % of a CPU
        self.clock.advance(10)
        self.assertEqual((self.heap.trimmed, self.trimmer.deferred_trims), (1, 2))


class QuietTimeClearingTests(unittest.TestCase):
    """After a burst, the memos it filled are emptied before the trim (what pins a burst's memory)."""

    def test_the_text_memos_are_emptied_just_before_a_trim_only(self) -> None:
        clock, heap, cleared = task.Clock(), FakeHeap(), []
        trimmer = HeapTrimmer(clock, heap, interval=10.0, threshold=1 << 20, cpu=lambda: 0.0,
                              before_trim=lambda: cleared.append(heap.trimmed))
        trimmer.startService()
        self.addCleanup(trimmer.stopService)
        clock.advance(10)
        self.assertEqual(cleared, [])  # nothing freed: nothing to clear
        heap.free = 8 << 20
        clock.advance(10)
        self.assertEqual(cleared, [0])  # before the first trim

    def test_clear_memos_forgets_every_text_memo(self) -> None:
        import sys

        from epcscf.sip import params
        from epcscf.sip.uri import parse_name_addr

        text = "".join(["<sip:fuzz@example.com>", ";tag=", "1x"])  # one object of our own
        alone = sys.getrefcount(text)
        parse_name_addr(text)
        self.assertGreater(sys.getrefcount(text), alone)  # the memo keeps it (and its parse)
        params.clear_memos()
        self.assertEqual(sys.getrefcount(text), alone)


class GlibcHeapTests(unittest.TestCase):
    def test_freed_c_memory_is_handed_back_by_a_trim(self) -> None:
        heap = glibc_heap()
        self.assertIsNotNone(heap, "this machine runs glibc >= 2.33 (Debian 12)")
        assert heap is not None
        heap.trim()
        # Blocks above pymalloc's 512 bytes come from malloc; keep every 16th so that the
        # freed ones are holes in the middle of the heap, not at its top.
        blocks = [bytes(4000 + i % 7) for i in range(16000)]
        kept = blocks[::16]
        rss_full = _rss_kib()
        free_before = heap.free_bytes()
        del blocks
        gc.collect()
        self.assertGreater(heap.free_bytes() - free_before, 40 * (1 << 20))
        rss_freed = _rss_kib()
        heap.trim()
        self.assertLess(_rss_kib(), rss_freed - 30 * 1024, f"RSS {rss_full} KiB full, {rss_freed} freed")
        del kept


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class MediaRetentionTests(CallMediaTestCase):
    """Real sockets (the harness of ``test_calls_media``): a WIC with ICE, DTLS and SRTP."""

    async def test_a_closed_call_media_leaves_nothing_of_the_call_reachable(self) -> None:
        media, wic, _, _ = await self.originating_call()
        await self.assert_media_both_ways(media, wic)
        stream = media.streams[0]
        held = {
            "CallMedia": weakref.ref(media),
            "MediaSession": weakref.ref(stream.session),
            "IceAgent": weakref.ref(stream.agent),
            "DtlsEndpoint": weakref.ref(stream.session._dtls),
        }
        await media.close()
        self.medias.remove(media)
        del media, stream
        await deferLater(global_reactor, 0.05, lambda: None)  # the sockets' last callbacks
        gc.collect()
        self.assertEqual([name for name, ref in held.items() if ref() is not None], [])
