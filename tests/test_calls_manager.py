"""CallManager state-machine paths with fakes: the SIP side of TS 24.371 §7.4 without sockets."""

from __future__ import annotations

import gc
from typing import Any

from twisted.internet import defer, task
from twisted.trial import unittest

from epcscf.ice import IceClosed
from epcscf.pcscf import call_sdp
from epcscf.pcscf.call_model import PackedTimeline, call_leg
from epcscf.pcscf.call_state import CallState
from epcscf.pcscf.calls import CallManager, CallSettings, MediaRejected
from epcscf.pcscf.edge import EdgeAddresses
from epcscf.sip.connection import Address
from epcscf.sip.message import Headers, Request, Response
from epcscf.sip.proxy import Branch, Forward, ProxiedRequest, Reject
from epcscf.sip.proxy_rules import make_local_response
from epcscf.sip.uri import SipUri, UriError, parse_uri
from tests.support.fakes import FakeConnection, FakeServerTransaction

ADDRESSES = EdgeAddresses("192.0.2.10", 5060, "udp", "192.0.2.11", 443, "wss")
WIC_OFFER = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\n"
ELEMENT_ADDRESS = Address("192.0.2.10", 5060)
PEER_ADDRESS = Address("198.51.100.1", 5060)
CORE_SDP = b"v=0\r\no=- 2 1 IN IP4 198.51.100.20\r\ns=-\r\nc=IN IP4 198.51.100.20\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n"


class FakeMedia:
    """Marks every transformed body with the method that made it."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.on_failure: Any = None
        self.on_event: Any = None
        self.closed = False
        self.reject: MediaRejected | None = None

    def _do(self, name: str, sdp: bytes) -> bytes:
        self.log.append(name)
        if self.reject is not None:
            raise self.reject
        return b"v=0\r\n" + name.encode() + b"\r\n"

    def offer_from_wic(self, sdp: bytes) -> bytes:
        return self._do("offer_from_wic", sdp)

    def answer_from_core(self, sdp: bytes, fork: str | None) -> bytes:
        return self._do("answer_from_core", sdp)

    def offer_from_core(self, sdp: bytes) -> defer.Deferred:
        return defer.succeed(self._do("offer_from_core", sdp))

    def answer_from_wic(self, sdp: bytes) -> bytes:
        return self._do("answer_from_wic", sdp)

    def offer_failed(self) -> None:
        self.log.append("offer_failed")

    def add_trickle(self, sdpfrag: bytes) -> None:
        self.log.append("trickle")

    def stats(self) -> dict:
        return {}

    def close(self) -> defer.Deferred:
        self.closed = True
        return defer.succeed(None)


class FakeTransactions:
    def __init__(self) -> None:
        self.sent: list[tuple[Request, Any]] = []

    def send_request(self, request: Request, connection: Any, user: Any) -> None:
        self.sent.append((request, connection))


class FakeProxy:
    def __init__(self) -> None:
        self.transactions = FakeTransactions()
        self.cancelled: list[ProxiedRequest] = []
        self.responded: list[Response] = []

    def cancel_branches(self, context: ProxiedRequest) -> None:
        self.cancelled.append(context)

    def respond_upstream(self, context: ProxiedRequest, response: Response) -> None:
        self.responded.append(response)

    def send_request(self, request: Request, connection: Any, user: Any) -> None:
        self.transactions.send_request(request, connection, user)


def invite(from_wic: bool, body: bytes = WIC_OFFER) -> Request:
    request = Request("INVITE", "sip:bob@example.com")
    via = "SIP/2.0/WSS abc.invalid;branch=z9hG4bK1" if from_wic else "SIP/2.0/UDP 198.51.100.1;branch=z9hG4bK2"
    request.headers = Headers.from_pairs([
        ("Via", via),
        ("From", "<sip:alice@example.com>;tag=alice1" if from_wic else "<sip:carol@example.com>;tag=carol1"),
        ("To", "<sip:bob@example.com>"),
        ("Call-ID", "call-1"),
        ("CSeq", "10 INVITE"),
        ("Contact", "<sip:alice@abc.invalid;transport=ws;ob>" if from_wic else "<sip:carol@198.51.100.1>"),
        ("Max-Forwards", "70"),
    ])
    if body:
        request.headers.add("Content-Type", "application/sdp")
        request.body = body
    return request


def response_to(request: Request, status: int, body: bytes = b"", tag: str = "bob1", contact: str = "<sip:bob@198.51.100.20>") -> Response:
    response = make_local_response(request, status, to_tag=tag)
    response.headers.add("Contact", contact)
    response.headers.add(
        "Record-Route",
        "<sip:scscf.example.com;lr>, <sip:192.0.2.10:5060;transport=udp;lr>, <sip:tok@192.0.2.11:443;transport=wss;lr>",
    )
    if body:
        response.headers.add("Content-Type", "application/sdp")
        response.body = body
    return response


class CallManagerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.log: list[str] = []
        self.medias: list[FakeMedia] = []
        self.proxy = FakeProxy()

        def factory(call: Any) -> FakeMedia:
            media = FakeMedia(self.log)
            self.medias.append(media)
            return media

        self.manager = CallManager(self.clock, ADDRESSES, factory, CallSettings(keep_ended=60), self.proxy)
        self.wic = FakeConnection("WSS", PEER_ADDRESS, ELEMENT_ADDRESS, "wss-1")
        self.core = FakeConnection("UDP", PEER_ADDRESS, ELEMENT_ADDRESS, "udp-1")

    def originate(self, body: bytes = WIC_OFFER) -> tuple[ProxiedRequest, Any]:
        request = invite(True, body)
        context = ProxiedRequest(request.copy(), self.wic, FakeServerTransaction(request, self.wic))
        forward = Forward(context.request, None, [], ADDRESSES.core_sent_by)
        decision = self.successResultOf(defer.maybeDeferred(self.manager.originating_invite, context, "<sip:alice@example.com>", forward))
        context.branches.append(Branch(context.request, [], connection=self.core))
        return context, decision

    def respond(self, context: ProxiedRequest, response: Response) -> Response | None:
        for branch in context.branches:
            branch.final = response
        return self.successResultOf(defer.maybeDeferred(self.manager.response, context, response))

    def confirmed_originating_call(self) -> tuple[ProxiedRequest, Any]:
        context, decision = self.originate()
        self.respond(context, response_to(context.request, 200, CORE_SDP))
        return context, self.manager.calls()[0]

    # --- originating ---------------------------------------------------------------------------

    def test_originating_offer_is_transformed_and_forwarded_at_once(self) -> None:
        context, decision = self.originate()
        self.assertIsInstance(decision, Forward)
        self.assertEqual(decision.request.body, b"v=0\r\noffer_from_wic\r\n")
        self.assertEqual(decision.request.headers.get("Content-Length"), str(len(decision.request.body)))
        [call] = self.manager.calls()
        self.assertIs(call.state, CallState.OFFER_FORWARDED)
        self.assertIs(call_leg(context).call, call)  # type: ignore[union-attr]

    def test_unusable_offer_is_488_with_warning_and_frees_media(self) -> None:
        request = invite(True)
        context = ProxiedRequest(request.copy(), self.wic, FakeServerTransaction(request, self.wic))
        forward = Forward(context.request, None, [], ADDRESSES.core_sent_by)
        self.manager.media_factory = lambda call: self._rejecting(MediaRejected(488, 'no "fingerprint"'))
        decision = self.successResultOf(defer.maybeDeferred(self.manager.originating_invite, context, "x", forward))
        self.assertIsInstance(decision, Reject)
        self.assertEqual(decision.response.status, 488)
        self.assertEqual(decision.response.headers.get("Warning"), '399 epcscf "no \\"fingerprint\\""')
        self.assertEqual(self.manager.calls(), [])
        self.assertTrue(self.medias[-1].closed)
        self.assertIs(self.manager.ended_calls()[0].state, CallState.TERMINATED)
        self.assertEqual(self.manager.ended_calls()[0].summary()["cause_code"], "rejected-488")

    def _rejecting(self, error: MediaRejected) -> FakeMedia:
        media = FakeMedia(self.log)
        media.reject = error
        self.medias.append(media)
        return media

    def test_malformed_offer_is_400(self) -> None:
        self.manager.media_factory = lambda call: self._rejecting(MediaRejected(400, "line 2: bad o="))
        request = invite(True)
        context = ProxiedRequest(request.copy(), self.wic, FakeServerTransaction(request, self.wic))
        decision = self.successResultOf(defer.maybeDeferred(
            self.manager.originating_invite, context, "x", Forward(context.request)))
        self.assertEqual(decision.response.status, 400)

    def test_ports_exhausted_is_503_with_retry_after(self) -> None:
        def exhausted(call: Any) -> FakeMedia:
            raise RuntimeError("no free UDP port pair left")

        self.manager.media_factory = exhausted
        request = invite(True)
        context = ProxiedRequest(request.copy(), self.wic, FakeServerTransaction(request, self.wic))
        decision = self.successResultOf(defer.maybeDeferred(
            self.manager.originating_invite, context, "x", Forward(context.request)))
        self.assertEqual(decision.response.status, 503)
        self.assertEqual(decision.response.headers.get("Retry-After"), "30")
        self.assertEqual(self.manager.calls(), [])

    def test_non_sdp_body_is_415_with_accept(self) -> None:
        request = invite(True, b"")
        request.headers.add("Content-Type", "application/xml")
        request.body = b"<xml/>"
        context = ProxiedRequest(request.copy(), self.wic, FakeServerTransaction(request, self.wic))
        decision = self.manager.originating_invite(context, "x", Forward(context.request))
        self.assertEqual(decision.response.status, 415)
        self.assertEqual(decision.response.headers.get("Accept"), "application/sdp")
        self.assertEqual(self.manager.calls(), [])

    def test_wic_late_offer_core_offers_in_2xx_wic_answers_in_ack(self) -> None:
        context, decision = self.originate(b"")
        self.assertIsInstance(decision, Forward)
        self.assertEqual(decision.request.body, b"")
        ok = self.respond(context, response_to(context.request, 200, CORE_SDP))
        self.assertEqual(ok.body, b"v=0\r\noffer_from_core\r\n")
        _, _, ack = self.in_dialog("ACK", True, WIC_OFFER)
        self.assertEqual(ack.request.body, b"v=0\r\nanswer_from_wic\r\n")
        self.assertIs(self.manager.calls()[0].state, CallState.CONFIRMED)

    def test_early_answer_then_bodiless_200_repeats_the_webrtc_answer(self) -> None:
        # A WIC (JsSIP) ends a call whose 2xx has no SDP: the 200 repeats the 183's answer.
        context, _ = self.originate()
        early = self.respond(context, response_to(context.request, 183, CORE_SDP))
        self.assertEqual(early.body, b"v=0\r\nanswer_from_core\r\n")
        [call] = self.manager.calls()
        self.assertIs(call.state, CallState.EARLY)
        final = self.respond(context, response_to(context.request, 200))
        self.assertEqual(final.body, early.body)
        self.assertEqual(final.headers.get("Content-Type"), "application/sdp")
        self.assertIs(call.state, CallState.CONFIRMED)
        self.assertEqual(self.log.count("answer_from_core"), 1)

    def test_forked_answers_each_become_webrtc_answers(self) -> None:
        context, _ = self.originate()
        self.respond(context, response_to(context.request, 183, CORE_SDP, tag="fork1"))
        self.respond(context, response_to(context.request, 183, CORE_SDP, tag="fork2"))
        self.assertEqual(self.log.count("answer_from_core"), 2)

    def test_retransmitted_2xx_carries_the_same_webrtc_answer_and_other_forks_none(self) -> None:
        context, _ = self.originate()
        first = self.respond(context, response_to(context.request, 200, CORE_SDP))
        again = self.manager.stray_response(response_to(context.request, 200, CORE_SDP))
        self.assertEqual(again.body, first.body)
        other_fork = self.manager.stray_response(response_to(context.request, 200, CORE_SDP, tag="fork2"))
        self.assertEqual(other_fork.body, b"")  # never the core's SDP raw toward the WIC
        self.assertIsNone(other_fork.headers.get("Content-Type"))
        self.assertEqual(self.log.count("answer_from_core"), 1)

    def test_final_failure_frees_the_media(self) -> None:
        context, _ = self.originate()
        busy = self.respond(context, response_to(context.request, 486))
        self.assertEqual(busy.status, 486)
        self.assertTrue(self.medias[0].closed)
        self.assertEqual(self.manager.calls(), [])
        self.manager.transaction_ended(context)  # harmless afterwards
        self.assertEqual(len(self.manager.ended_calls()), 1)
        self.assertEqual(self.manager.ended_calls()[0].summary()["cause_code"], "final-486")

    def test_ended_calls_are_kept_for_keep_ended_seconds(self) -> None:
        context, _ = self.originate()
        self.respond(context, response_to(context.request, 486))
        self.clock.advance(59)
        self.assertEqual(len(self.manager.ended_calls()), 1)
        self.clock.advance(2)
        self.assertEqual(self.manager.ended_calls(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_an_ended_call_keeps_its_timeline_as_one_string(self) -> None:
        # What an ended call holds for [calls] history must not be ~60 small objects spread over
        # the memory of the burst that made it (docs/performance.md, "What pins a fuzz burst's memory").
        context, _ = self.originate()
        [live] = self.manager.calls()
        noted = [(entry.kind, entry.text) for entry in live.timeline]
        self.assertIsInstance(live.timeline, list)
        self.respond(context, response_to(context.request, 486))
        [ended] = self.manager.ended_calls()
        self.assertIsInstance(ended.timeline, PackedTimeline)
        held = [thing for thing in gc.get_referents(ended.timeline) if not isinstance(thing, type)]
        self.assertEqual([type(thing) for thing in held], [bytes])  # one object (bytes), whatever the entries
        entries = list(ended.timeline)
        self.assertEqual([(entry.kind, entry.text) for entry in entries[:len(noted)]], noted)
        self.assertEqual([entry.kind for entry in entries[-2:]], ["release", "sip-out"])  # the 486 noted after the end
        self.assertEqual(ended.timeline[-1], entries[-1])
        self.assertEqual(len(ended.timeline), len(entries))
        ended.note("sip-in", "a late 2xx \x1f\n\"quoted\"")  # a note after the end still works
        self.assertEqual(ended.timeline[-1].text, "a late 2xx \x1f\n\"quoted\"")
        self.assertIsInstance(ended.timeline, PackedTimeline)  # and still packed

    def test_cancel_before_answer_ends_the_call_on_the_487(self) -> None:
        context, _ = self.originate()
        self.manager.cancel_received(context)
        [call] = self.manager.calls()
        self.assertIs(call.state, CallState.CANCELLING)
        self.respond(context, response_to(context.request, 487))
        self.assertIs(call.state, CallState.TERMINATED)
        self.assertTrue(self.medias[0].closed)

    def test_cancel_200_race_confirms_the_call(self) -> None:
        # RFC 3261 §9.1: the 2xx wins; the WIC will ACK and BYE.
        context, _ = self.originate()
        self.manager.cancel_received(context)
        self.respond(context, response_to(context.request, 200, CORE_SDP))
        self.assertIs(self.manager.calls()[0].state, CallState.CONFIRMED)

    # --- release from the middle -----------------------------------------------------------------

    def test_ws_closed_on_confirmed_call_sends_bye_to_the_core_with_reason(self) -> None:
        # TS 23.228 §5.10; RFC 3326 Reason with our cause 480
        context, call = self.confirmed_originating_call()
        self.manager.flow_closed(self.wic)
        [(bye, connection)] = self.proxy.transactions.sent
        self.assertIs(connection, self.core)
        self.assertEqual(bye.method, "BYE")
        self.assertEqual(bye.uri, "sip:bob@198.51.100.20")
        self.assertEqual(bye.headers.get("Reason"), 'SIP;cause=480;text="WebSocket closed"')
        self.assertEqual(bye.headers.get("From"), "<sip:alice@example.com>;tag=alice1")
        self.assertEqual(bye.headers.get("To"), "<sip:bob@example.com>;tag=bob1")
        self.assertEqual(bye.headers.get("CSeq"), "11 BYE")
        self.assertEqual(bye.headers.get("Route"), "<sip:scscf.example.com;lr>")
        self.assertTrue(bye.headers.get("Via").startswith("SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK"))
        self.assertIs(call.state, CallState.TERMINATED)
        self.assertEqual(call.failing_layer, "ws")
        self.assertEqual(call.summary()["cause_code"], "ws-closed")
        self.assertTrue(self.medias[0].closed)
        self.assertEqual(self.manager.calls(), [])

    def test_ws_closed_on_early_call_cancels_downstream_and_answers_480(self) -> None:
        context, _ = self.originate()
        self.manager.flow_closed(self.wic)
        self.assertEqual(self.proxy.cancelled, [context])
        [answer] = self.proxy.responded
        self.assertEqual(answer.status, 480)
        self.assertEqual(answer.headers.get("Reason"), 'SIP;cause=480;text="WebSocket closed"')
        self.assertTrue(self.medias[0].closed)

    def test_ws_closed_while_media_is_prepared_answers_480_quietly(self) -> None:
        request = invite(True)
        context = ProxiedRequest(request.copy(), self.wic, FakeServerTransaction(request, self.wic))
        pending: defer.Deferred = defer.Deferred()

        def slow(call: Any) -> FakeMedia:
            media = FakeMedia(self.log)
            media.offer_from_wic = lambda sdp: pending  # type: ignore[method-assign]
            self.medias.append(media)
            return media

        self.manager.media_factory = slow
        decided = self.manager.originating_invite(context, "x", Forward(context.request))
        self.manager.flow_closed(self.wic)
        self.assertTrue(self.medias[0].closed)
        pending.errback(RuntimeError("the ICE agent was closed while gathering"))
        decision = self.successResultOf(decided)
        self.assertEqual(decision.response.status, 480)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(self.proxy.responded, [])  # nothing was forwarded, so nothing to cancel

    def test_2xx_racing_an_early_release_is_acked_and_byed(self) -> None:
        context, _ = self.originate()
        self.manager.flow_closed(self.wic)
        late = response_to(context.request, 200, CORE_SDP)
        self.assertIsNone(self.manager.stray_response(late))
        ack = self.core.sent[0]
        self.assertEqual((ack.method, ack.headers.get("CSeq")), ("ACK", "10 ACK"))
        [(bye, _)] = self.proxy.transactions.sent
        self.assertEqual(bye.method, "BYE")

    def test_consent_lost_sends_bye_both_ways(self) -> None:
        # RFC 7675 §5.1
        context, call = self.confirmed_originating_call()
        self.medias[0].on_failure("ice", "ICE consent lost")
        sent = self.proxy.transactions.sent
        self.assertEqual(sorted(connection.id for _, connection in sent), ["udp-1", "wss-1"])
        to_wic = next(bye for bye, connection in sent if connection is self.wic)
        self.assertEqual(to_wic.uri, "sip:alice@abc.invalid;transport=ws;ob")
        self.assertEqual(to_wic.headers.get("From"), "<sip:bob@example.com>;tag=bob1")
        self.assertEqual(to_wic.headers.get("To"), "<sip:alice@example.com>;tag=alice1")
        self.assertIsNone(to_wic.headers.get("Route"))
        self.assertTrue(to_wic.headers.get("Via").startswith("SIP/2.0/WSS 192.0.2.11:443;"))
        self.assertEqual(call.failing_layer, "ice")
        self.assertEqual(call.summary()["cause_code"], "consent-lost")

    def test_operator_release(self) -> None:
        self.confirmed_originating_call()
        self.assertEqual(self.manager.release("call-1", "maintenance"), 1)
        self.assertEqual(len(self.proxy.transactions.sent), 2)
        self.assertEqual(self.manager.release("call-1"), 0)

    # --- in-dialog -------------------------------------------------------------------------------

    def in_dialog(self, method: str, from_wic: bool, body: bytes = b"", content_type: str = "application/sdp",
                  parties: tuple[str, str] = ("<sip:alice@example.com>;tag=alice1", "<sip:bob@example.com>;tag=bob1"),
                  ) -> tuple[ProxiedRequest, Forward, Any]:
        """``parties``: (the WIC's, the core's) From/To values."""
        request = Request(method, "sip:x@example.com")
        wic_party, core_party = parties
        request.headers = Headers.from_pairs([
            ("Via", "SIP/2.0/UDP 198.51.100.1;branch=z9hG4bK9"),
            ("From", wic_party if from_wic else core_party),
            ("To", core_party if from_wic else wic_party),
            ("Call-ID", "call-1"),
            ("CSeq", f"20 {'INVITE' if method == 'ACK' else method}" if method != "ACK" else "10 ACK"),
        ])
        if body:
            request.headers.add("Content-Type", content_type)
            request.body = body
        context = ProxiedRequest(request, self.wic if from_wic else self.core, FakeServerTransaction(request, self.core))
        forward = Forward(request, None if from_wic else self.wic)
        decision = self.successResultOf(defer.maybeDeferred(self.manager.in_dialog_request, context, forward, from_wic))
        return context, forward, decision

    def test_core_reoffer_refused_keeps_old_media(self) -> None:
        # RFC 3261 §14.1
        self.confirmed_originating_call()
        context, forward, decision = self.in_dialog("INVITE", False, CORE_SDP)
        self.assertEqual(decision.request.body, b"v=0\r\noffer_from_core\r\n")
        refused = self.respond(context, response_to(context.request, 488))
        self.assertEqual(refused.status, 488)
        self.assertEqual(self.log[-1], "offer_failed")
        self.assertIs(self.manager.calls()[0].state, CallState.CONFIRMED)

    def test_wic_reoffer_answered_by_core(self) -> None:
        self.confirmed_originating_call()
        context, forward, decision = self.in_dialog("INVITE", True, WIC_OFFER)
        answer = self.respond(context, response_to(context.request, 200, CORE_SDP))
        self.assertEqual(answer.body, b"v=0\r\nanswer_from_core\r\n")
        self.assertEqual(self.manager.calls()[0].dialog.wic.cseq, 20)

    def test_update_without_sdp_passes_through(self) -> None:
        self.confirmed_originating_call()
        before = list(self.log)
        _, forward, decision = self.in_dialog("UPDATE", True)
        self.assertIs(decision, forward)
        self.assertEqual(self.log, before)

    def test_trickle_info_is_consumed(self) -> None:
        # RFC 8840
        self.confirmed_originating_call()
        _, _, decision = self.in_dialog("INFO", True, b"a=end-of-candidates\r\n", "application/trickle-ice-sdpfrag")
        self.assertIsInstance(decision, Reject)
        self.assertEqual(decision.response.status, 200)
        self.assertEqual(self.log[-1], "trickle")

    def test_bye_from_the_wic_releases_media(self) -> None:
        # RFC 3261 §15
        _, call = self.confirmed_originating_call()
        _, forward, decision = self.in_dialog("BYE", True)
        self.assertIs(decision, forward)
        self.assertTrue(self.medias[0].closed)
        self.assertIs(call.state, CallState.TERMINATED)
        self.assertEqual(self.manager.calls(), [])
        self.assertEqual(call.summary()["cause_code"], "bye-wic")

    def test_reoffer_answer_after_the_bye_is_relayed_without_its_sdp(self) -> None:
        # Found by benchmarks/fuzz.py: a BYE crossing a re-INVITE ends the call (its media is
        # released); the core's 200 to the re-INVITE still ends that transaction, never with
        # the core's SDP untransformed and never with a traceback.
        self.confirmed_originating_call()
        context, _, _ = self.in_dialog("INVITE", True, WIC_OFFER)
        self.in_dialog("BYE", True)
        self.assertEqual(self.manager.calls(), [])
        answer = self.respond(context, response_to(context.request, 200, CORE_SDP))
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.body, b"")
        self.assertIsNone(answer.headers.get("Content-Type"))

    def test_answer_to_an_invite_replaced_by_one_with_the_same_call_id_is_relayed_without_its_sdp(self) -> None:
        # Found by benchmarks/fuzz.py: a second initial INVITE with the same Call-ID and tag
        # replaces the first call; the first INVITE's answer must not reach its released media.
        first, _ = self.originate()
        self.originate()
        answer = self.respond(first, response_to(first.request, 200, CORE_SDP))
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.body, b"")
        [call] = self.manager.calls()
        self.assertIs(call.state, CallState.OFFER_FORWARDED)

    # --- terminating -------------------------------------------------------------------------------

    def terminate(self, body: bytes) -> tuple[ProxiedRequest, Any]:
        request = invite(False, body)
        context = ProxiedRequest(request.copy(), self.core, FakeServerTransaction(request, self.core))
        forward = Forward(context.request, self.wic, [], ADDRESSES.wic_sent_by)
        decision = self.successResultOf(defer.maybeDeferred(self.manager.terminating_invite, context, self.wic, forward))
        return context, decision

    def test_terminating_offer_and_answer(self) -> None:
        context, decision = self.terminate(CORE_SDP)
        self.assertEqual(decision.request.body, b"v=0\r\noffer_from_core\r\n")
        answer = self.respond(context, response_to(context.request, 200, WIC_OFFER, contact="<sip:bob@x.invalid;transport=ws>"))
        self.assertEqual(answer.body, b"v=0\r\nanswer_from_wic\r\n")
        [call] = self.manager.calls()
        self.assertIs(call.state, CallState.CONFIRMED)
        self.assertIs(self.manager.flow_for_call("call-1"), self.wic)
        # WS loss: BYE to the core, as the WIC (the callee) would have sent it.
        self.manager.flow_closed(self.wic)
        [(bye, connection)] = self.proxy.transactions.sent
        self.assertIs(connection, self.core)
        self.assertEqual(bye.uri, "sip:carol@198.51.100.1")
        self.assertEqual(bye.headers.get("From"), "<sip:bob@example.com>;tag=bob1")
        self.assertEqual(bye.headers.get("CSeq"), "1 BYE")
        # Routes toward the caller are the entries below ours in Record-Route: none here.
        self.assertIsNone(bye.headers.get("Route"))

    def test_terminating_late_offer(self) -> None:
        # RFC 3261 §13.2.1: offer in the WIC's 200, answer in the core's ACK.
        context, decision = self.terminate(b"")
        self.assertEqual(decision.request.body, b"")
        ok = self.respond(context, response_to(context.request, 200, WIC_OFFER))
        self.assertEqual(ok.body, b"v=0\r\noffer_from_wic\r\n")
        parties = ("<sip:bob@example.com>;tag=bob1", "<sip:carol@example.com>;tag=carol1")
        _, forward, decision = self.in_dialog("ACK", False, CORE_SDP, parties=parties)
        self.assertEqual(self.log[-1], "answer_from_core")
        self.assertEqual(decision.request.body, b"v=0\r\nanswer_from_core\r\n")

    def test_late_offer_2xx_still_being_rewritten_survives_the_end_of_the_transaction(self) -> None:
        # The proxy ends the INVITE server transaction as soon as the 2xx is handed over, while
        # the WIC's offer in it is still being turned into an IMS offer (ICE gathering).
        context, _ = self.terminate(b"")
        pending: defer.Deferred = defer.Deferred()
        self.medias[0].offer_from_wic = lambda sdp: pending  # type: ignore[method-assign]
        ok = response_to(context.request, 200, WIC_OFFER)
        for branch in context.branches or [Branch(context.request, [])]:
            branch.final = ok
        if not context.branches:
            context.branches.append(Branch(context.request, [], final=ok))
        rewritten = self.manager.response(context, ok)
        self.manager.transaction_ended(context)
        self.assertFalse(self.medias[0].closed)
        pending.callback(b"v=0\r\nlate\r\n")
        self.assertEqual(self.successResultOf(rewritten).body, b"v=0\r\nlate\r\n")
        self.assertIs(self.manager.calls()[0].state, CallState.CONFIRMED)

    def test_late_offer_2xx_of_a_call_released_while_gathering_is_acked_and_byed_quietly(self) -> None:
        # The WIC's INVITE had no SDP; the core's offer in the 2xx is being turned into a WebRTC
        # offer (ICE gathering) when the WebSocket closes: the release closes the ICE agent,
        # whose gathering fails with IceClosed.  That is the release, not an error: the 2xx is
        # ACKed and BYEd like any 2xx racing a release, and nothing is logged as a failure.
        context, _ = self.originate(b"")
        pending: defer.Deferred = defer.Deferred()
        self.medias[0].offer_from_core = lambda sdp: pending  # type: ignore[method-assign]
        ok = response_to(context.request, 200, CORE_SDP)
        for branch in context.branches:
            branch.final = ok
        rewritten = self.manager.response(context, ok)
        self.manager.flow_closed(self.wic)
        self.assertTrue(self.medias[0].closed)
        pending.errback(IceClosed("the ICE agent was closed while gathering"))
        self.assertIsNone(self.successResultOf(rewritten))
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(self.core.sent[0].method, "ACK")
        self.assertEqual([request.method for request, _ in self.proxy.transactions.sent], ["BYE"])
        self.assertEqual(self.manager.calls(), [])

    def test_provisional_offer_of_a_call_released_while_gathering_goes_on_without_sdp(self) -> None:
        context, _ = self.terminate(b"")
        pending: defer.Deferred = defer.Deferred()
        self.medias[0].offer_from_wic = lambda sdp: pending  # type: ignore[method-assign]
        ringing = response_to(context.request, 183, WIC_OFFER)
        rewritten = self.manager.response(context, ringing)
        self.manager.flow_closed(self.wic)
        pending.errback(IceClosed("the ICE agent was closed while gathering"))
        forwarded = self.successResultOf(rewritten)
        self.assertEqual((forwarded.status, forwarded.body), (183, b""))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_terminating_early_ws_loss_answers_480_to_the_core(self) -> None:
        context, _ = self.terminate(CORE_SDP)
        self.manager.flow_closed(self.wic)
        self.assertEqual(self.proxy.responded[0].status, 480)
        self.assertEqual(self.proxy.cancelled, [context])


class CallIdLookupTests(unittest.TestCase):
    """Calls are found by Call-ID, live ones and kept-ended ones (through an index of the
    history), and the index forgets a call with the history (``keep_ended``)."""

    setUp = CallManagerTests.setUp
    respond = CallManagerTests.respond

    def originate(self, call_id: str) -> ProxiedRequest:
        request = invite(True, WIC_OFFER)
        request.headers.set("Call-ID", call_id)
        context = ProxiedRequest(request.copy(), self.wic, FakeServerTransaction(request, self.wic))
        forward = Forward(context.request, None, [], ADDRESSES.core_sent_by)
        self.successResultOf(defer.maybeDeferred(self.manager.originating_invite, context, "<sip:alice@example.com>", forward))
        context.branches.append(Branch(context.request, [], connection=self.core))
        return context

    def test_find_returns_the_live_calls_of_one_call_id_only(self) -> None:
        contexts = [self.originate(f"call-{n}") for n in range(5)]
        self.respond(contexts[1], response_to(contexts[1].request, 486))  # call-1 ended
        self.assertEqual([call.call_id for call in self.manager.find("call-3")], ["call-3"])
        self.assertEqual(self.manager.find("call-1"), [])
        self.assertEqual(self.manager.find("no-such-call"), [])
        self.assertIs(self.manager.flow_for_call("call-4"), self.wic)

    def test_a_2xx_racing_an_early_release_is_matched_among_many_ended_calls(self) -> None:
        for n in range(20):
            context = self.originate(f"other-{n}")
            self.respond(context, response_to(context.request, 486))
        context = self.originate("late")
        self.manager.flow_closed(self.wic)
        self.assertIsNone(self.manager.stray_response(response_to(context.request, 200, CORE_SDP)))
        self.assertEqual([request.method for request, _ in self.proxy.transactions.sent], ["BYE"])

    def test_after_keep_ended_a_stray_2xx_finds_nothing_and_only_loses_its_body(self) -> None:
        context = self.originate("late")
        self.manager.flow_closed(self.wic)
        self.clock.advance(61)
        self.assertEqual(self.manager.ended_calls(), [])
        late = self.manager.stray_response(response_to(context.request, 200, CORE_SDP))
        self.assertIsNotNone(late)
        self.assertEqual(late.body, b"")
        self.assertEqual(self.core.sent, [])  # no ACK: the call is forgotten
        self.assertEqual(self.manager.history._by_call_id, {})  # the index forgets with the history


class ResponseRewrittenAtOnceTests(unittest.TestCase):
    """A response whose SDP step finishes at once (1xx or 2xx without SDP) is handled without a
    Deferred chain: the same response, call state and timeline as through the chain."""

    setUp = CallManagerTests.setUp
    originate = CallManagerTests.originate
    respond = CallManagerTests.respond

    def outcome(self, through_deferred: bool, statuses: tuple[int, ...], answer_refused: bool = False) -> list[Any]:
        rewrite = call_sdp.rewrite_response
        if through_deferred:  # the way of before: every rewrite as a Deferred
            call_sdp.rewrite_response = lambda *args: defer.maybeDeferred(rewrite, *args)  # type: ignore[assignment]
            self.addCleanup(setattr, call_sdp, "rewrite_response", rewrite)
        context, _ = self.originate()
        [call] = self.manager.calls()
        if answer_refused:
            def refuse(sdp: bytes, fork: str | None = None) -> bytes:
                raise MediaRejected(488, "no common codec")

            self.medias[0].answer_from_core = refuse  # type: ignore[method-assign]
        seen = []
        for status in statuses:
            response = response_to(context.request, status, CORE_SDP if status == 200 else b"")
            returned = self.manager.response(context, response)
            self.assertEqual(isinstance(returned, defer.Deferred), through_deferred, status)
            result = self.successResultOf(defer.maybeDeferred(lambda: returned))
            seen.append((None if result is None else (result.status, result.body), call.state))
        call_sdp.rewrite_response = rewrite
        self.clock.advance(1)  # a refused answer's release
        return seen + [call.state, call.release_cause, [(entry.kind, entry.text) for entry in call.timeline]]

    def test_provisional_responses_and_the_2xx_as_through_a_deferred(self) -> None:
        for statuses, refused in (((100, 180, 180, 200), False), ((180, 486), False), ((183, 200), False),
                                  ((180, 200), True)):
            at_once = self.outcome(False, statuses, refused)
            self.setUp()
            self.assertEqual(at_once, self.outcome(True, statuses, refused))
            self.setUp()

    def test_a_failure_while_handling_fails_the_same_way(self) -> None:
        def broken(*args: Any) -> bool:
            raise RuntimeError("broken rewrite")

        self.patch(call_sdp, "rewrite_response", broken)
        context, _ = self.originate()
        failure = self.failureResultOf(self.manager.response(context, response_to(context.request, 180)), RuntimeError)
        self.assertEqual(str(failure.value), "broken rewrite")


class OwnUriTests(unittest.TestCase):
    setUp = CallManagerTests.setUp

    def test_own_uris_read_from_the_shared_parse_as_from_a_copy(self) -> None:
        texts = ["sip:192.0.2.10:5060;transport=udp;lr", "sip:tok@192.0.2.11:443;transport=wss;lr", "sip:192.0.2.10;lr",
                 "sip:scscf.example.com;lr", "sip:192.0.2.10:5061;lr", "tel:+15551234567", "sips:192.0.2.11", "not a uri",
                 "sip:[2001:db8::1]:5060;lr", "<sip:192.0.2.10;lr>"]

        def by_copy(text: str) -> bool:
            try:
                parsed = parse_uri(text)
            except UriError:
                return False
            return isinstance(parsed, SipUri) and self.manager.addresses.is_own(parsed)

        self.assertEqual([self.manager.is_own_uri(text) for text in texts], [by_copy(text) for text in texts])
        self.assertIn(True, [by_copy(text) for text in texts])
        self.assertIn(False, [by_copy(text) for text in texts])

    def test_then_gives_what_maybe_deferred_and_add_callbacks_give(self) -> None:
        def on_failure(failure: Any) -> bool:
            failure.trap(MediaRejected)
            return False

        def rejected() -> bytes:
            raise MediaRejected(488, "no")

        def broken() -> bytes:
            raise KeyError("broken")

        for thunk in (lambda: b"v=0", rejected, lambda: defer.succeed(b"v=0"), lambda: defer.fail(MediaRejected(488, "x"))):
            expected = self.successResultOf(defer.maybeDeferred(thunk).addCallbacks(lambda body: body == b"v=0", on_failure))
            got = call_sdp.then_at_once(thunk, lambda body: body == b"v=0", on_failure)
            self.assertEqual(self.successResultOf(got) if isinstance(got, defer.Deferred) else got, expected)
        self.failureResultOf(defer.maybeDeferred(broken).addCallbacks(bool, on_failure), KeyError)
        self.assertRaises(KeyError, call_sdp.then_at_once, broken, bool, on_failure)  # the caller's errback gets it
