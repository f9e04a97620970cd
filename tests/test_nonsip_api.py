"""The sans-IO parts of the non-SIP front end: Janus frames and errors, JSEP with trickled
candidates made into one SDP (RFC 8838/8839), the hold offer (RFC 3264 §8.4), MESSAGE/INFO
handling (RFC 3428, RFC 6086)."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import task
from twisted.trial import unittest

from epcscf.nonsip import janus_api as api
from epcscf.nonsip.jsep import JsepError, TrickleBuffer, answer_direction, as_answer, next_version, parse_jsep, parse_trickle
from epcscf.pcscf.nonsip_messages import Messaging, TextBody
from epcscf.pcscf.nonsip_register import Credentials
from epcscf.pcscf.nonsip_subscribe import Subscriptions
from epcscf.pcscf.nonsip_transfer import Transfers, parse_refer_to, replaces_value
from epcscf.sdp import parse_sdpfrag
from epcscf.sip.message import Request, make_response
from epcscf.sip.parser import parse_message

OFFER = (
    "v=0\r\no=- 42 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendrecv\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\n"
)


class FrameTests(unittest.TestCase):
    def code_of(self, payload: bytes | str) -> int:
        with self.assertRaises(api.JanusError) as caught:
            api.parse_frame(payload)
        return caught.exception.code

    def test_bad_frames_get_the_janus_core_error_codes(self) -> None:
        self.assertEqual(self.code_of(b"{nope"), api.INVALID_JSON)
        self.assertEqual(self.code_of(b"\xff\xfe"), api.INVALID_JSON)
        self.assertEqual(self.code_of("[1, 2]"), api.INVALID_JSON_OBJECT)
        self.assertEqual(self.code_of('{"transaction": "t"}'), api.MISSING_REQUEST)
        self.assertEqual(self.code_of('{"janus": 5, "transaction": "t"}'), api.INVALID_ELEMENT_TYPE)
        self.assertEqual(self.code_of('{"janus": "create"}'), api.MISSING_MANDATORY_ELEMENT)
        self.assertEqual(self.code_of('{"janus": "keepalive", "transaction": "t", "session_id": "12"}'), api.INVALID_ELEMENT_TYPE)
        self.assertEqual(self.code_of('{"janus": "keepalive", "transaction": "t", "session_id": true}'), api.INVALID_ELEMENT_TYPE)
        self.assertEqual(self.code_of("[" * 100000), api.INVALID_JSON)

    def test_a_good_frame_and_the_reply_shapes(self) -> None:
        request = api.parse_frame('{"janus": "message", "transaction": "t1", "session_id": 7, "handle_id": 9, "body": {}}')
        self.assertEqual((request.verb, request.transaction, request.session_id, request.handle_id), ("message", "t1", 7, 9))
        self.assertEqual(api.error("t1", 7, 458, "No such session 7"),
                         {"janus": "error", "session_id": 7, "transaction": "t1", "error": {"code": 458, "reason": "No such session 7"}})
        event = api.plugin_event(7, 9, None, api.sip_result({"event": "ringing"}, "c1"), {"type": "answer", "sdp": "v=0"})
        self.assertEqual(event["plugindata"], {"plugin": "janus.plugin.sip", "data": {"sip": "event", "result": {"event": "ringing"}, "call_id": "c1"}})
        self.assertEqual((event["sender"], event["jsep"]["type"]), (9, "answer"))
        self.assertEqual(api.transaction_of(b'{"transaction": "x", "janus": 1}'), "x")
        self.assertIsNone(api.transaction_of(b"garbage"))


class JsepTests(unittest.TestCase):
    def test_jsep_must_be_an_offer_or_answer_with_a_session_description(self) -> None:
        for bad in (None, "v=0", {"type": "pranswer", "sdp": OFFER}, {"type": "offer", "sdp": "hello"}, {"type": "offer"}):
            with self.assertRaises(JsepError):
                parse_jsep(bad)
        self.assertTrue(parse_jsep({"type": "offer", "sdp": OFFER}).trickle)
        self.assertFalse(parse_jsep({"type": "offer", "sdp": OFFER, "trickle": False}).trickle)
        gathered = OFFER.replace("a=mid:0\r\n", "a=mid:0\r\na=candidate:1 1 udp 1 127.0.0.1 5000 typ host\r\n")
        self.assertFalse(parse_jsep({"type": "offer", "sdp": gathered}).trickle)

    def test_trickled_candidates_land_in_their_sections_with_end_of_candidates(self) -> None:
        buffer = TrickleBuffer()
        buffer.add(parse_trickle({"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host", "sdpMid": "1", "sdpMLineIndex": 0}))
        buffer.add(parse_trickle({"candidate": "candidate:2 1 udp 2122260223 127.0.0.1 5002 typ host", "sdpMLineIndex": 0}))
        buffer.add(parse_trickle({"candidate": "candidate:3 1 udp 1 127.0.0.1 5004 typ host", "sdpMLineIndex": 7}))  # no such section
        self.assertIsNone(parse_trickle({"completed": True}))
        sdp = buffer.complete_sdp(OFFER)
        audio, video = sdp.split("m=video")
        self.assertIn("a=candidate:2 1 udp 2122260223 127.0.0.1 5002 typ host", audio)  # by index
        self.assertIn("a=candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host", video)  # mid wins over index
        self.assertNotIn("5004", sdp)
        self.assertNotIn("a=end-of-candidates", sdp)
        buffer.add(None)
        self.assertEqual(buffer.complete_sdp(OFFER).count("a=end-of-candidates"), 2)
        for bad in ({"candidate": "evil\r\nm=audio"}, {"candidate": 5}, "candidate:1", {}):
            with self.assertRaises(JsepError):
                parse_trickle(bad)

    def test_late_candidates_make_an_rfc8840_fragment_of_their_sections(self) -> None:
        offer = OFFER.replace("t=0 0\r\n", "t=0 0\r\na=ice-ufrag:Ep9W\r\na=ice-pwd:Lk3ll9AbOLM1XbHSzn0BldiN\r\n")
        buffer = TrickleBuffer()
        self.assertIsNone(buffer.fragment(offer))  # nothing trickled: no INFO
        buffer.add(parse_trickle({"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host", "sdpMid": "1"}))
        fragment = parse_sdpfrag(buffer.fragment(offer))
        [entry] = fragment.entries
        self.assertEqual((entry.mid, entry.candidate.port), ("1", 5000))  # only the video section
        # the ICE generation the candidate belongs to (RFC 8840 §4.4.1)
        self.assertEqual((fragment.ice_ufrag, fragment.ice_pwd), ("Ep9W", "Lk3ll9AbOLM1XbHSzn0BldiN"))
        buffer.add(None)
        text = buffer.fragment(offer)
        self.assertEqual(text.count("a=end-of-candidates"), 2)  # gathering over: every section says so
        self.assertEqual([line.split(" ")[1] for line in text.splitlines() if line.startswith("m=")], ["9", "9"])

    def test_hold_offer_sets_every_direction_and_bumps_the_version(self) -> None:
        held = next_version(OFFER, "sendonly")
        self.assertIn("o=- 42 3 IN IP4", held)
        self.assertEqual(held.count("a=sendonly"), 2)  # also where no direction was written
        self.assertNotIn("a=sendrecv", held)
        resumed = next_version(held.replace("a=sendonly", "a=sendrecv"))
        self.assertIn("o=- 42 4 IN IP4", resumed)
        self.assertEqual(next_version(OFFER).split("\r\n")[4:], OFFER.split("\r\n")[4:])

    def test_a_re_offer_is_answered_with_the_mirrored_direction_and_a_settled_dtls_role(self) -> None:
        self.assertEqual(answer_direction(OFFER.replace("a=sendrecv", "a=sendonly")), "recvonly")
        self.assertEqual(answer_direction(OFFER.replace("a=sendrecv", "a=recvonly")), "sendonly")
        self.assertEqual(answer_direction(OFFER.replace("a=sendrecv", "a=inactive")), "inactive")
        self.assertIsNone(answer_direction(OFFER))
        offer = OFFER + "a=setup:actpass\r\n"
        self.assertIn("a=setup:passive", as_answer(offer, "v=0\r\na=setup:active\r\n"))  # RFC 5763 §5
        self.assertIn("a=setup:active", as_answer(offer, "v=0\r\na=setup:passive\r\n"))
        answer = OFFER + "a=setup:active\r\n"
        self.assertEqual(as_answer(answer, ""), answer)


class ConfigTests(unittest.TestCase):
    def test_a_wss_nonsip_listener_needs_the_ws_certificate_and_bad_values_are_refused(self) -> None:
        from tests.support.deployment import write_deployment_config

        from epcscf.config import ConfigError, load

        directory = os.path.abspath(self.mktemp())
        base = write_deployment_config(directory)
        for text, key in (("[nonsip]\nlisten = wss:127.0.0.1:0\n", "listen"),
                          ("[nonsip]\nlisten = udp:127.0.0.1:0\n", "listen"),
                          ("[nonsip]\nsession_timeout = soon\n", "session_timeout")):
            extra = os.path.join(directory, "extra.ini")
            with open(extra, "w") as handle:
                handle.write(text)
            with self.assertRaises(ConfigError) as caught:
                load([base, extra])
            self.assertIn(f"[nonsip] {key}", str(caught.exception))
        with open(extra, "w") as handle:
            handle.write("[nonsip]\nlisten = ws:127.0.0.1:0\nsession_timeout = 30\n")
        self.assertEqual(load([base, extra]).nonsip.session_timeout, 30.0)
        with open(extra, "w") as handle:  # shared by the workers like [ws] (tests.test_workers)
            handle.write("[service]\nworkers = 2\n[nonsip]\nlisten = ws:127.0.0.1:0\n")
        self.assertEqual(load([base, extra]).service.workers, 2)


class _FakeMessagingUa:
    """A ``MessagingUa`` that records what messaging sends, answers and emits."""

    def __init__(self, call_id: str | None) -> None:
        self.credentials = Credentials("sip:alice@ims.test", "alice", "ims.test", "alice", "", "", None)
        self.call_id = call_id
        self.events: list[Any] = []
        self.sent: list[Any] = []
        self.answers: list[Any] = []

    def emit(self, event: Any) -> None:
        self.events.append(event)

    def via(self) -> str:
        return "SIP/2.0/WS abc.invalid;branch=z9hG4bKtest"

    def send(self, request: Any, user: Any) -> Any:
        self.sent.append((request, user))

    def respond(self, transaction: Any, response: Any) -> None:
        self.answers.append(response)

    def in_dialog_request(self, method: str) -> Any:
        return None  # no confirmed call

    def dialog_call_id(self) -> str | None:
        return self.call_id


class MessagingTests(unittest.TestCase):
    """``epcscf.pcscf.nonsip_messages`` fed parsed requests: what the network sends that cannot
    be delivered is answered (RFC 6086 §4.2.2, RFC 3428 §7), and what the WIC sends carries its
    text in the body only."""

    def request(self, method: str, body: str = "", to_tag: str = ";tag=t1", content_type: str = "text/plain") -> Any:
        headers = f"Content-Type: {content_type}\r\n" if body else ""
        return parse_message(
            f"{method} sip:alice@abc.invalid;transport=ws SIP/2.0\r\nVia: SIP/2.0/WS p.example;branch=z9hG4bK1\r\n"
            f"From: \"Bob\" <sip:bob@ims.test>;tag=f1\r\nTo: <sip:alice@ims.test>{to_tag}\r\nCall-ID: c1\r\n"
            f"CSeq: 5 {method}\r\nMax-Forwards: 70\r\n{headers}Content-Length: {len(body.encode())}\r\n\r\n{body}".encode()
        )

    def test_info_outside_our_dialog_gets_481_and_requests_without_a_body_400(self) -> None:
        ua = _FakeMessagingUa(call_id="another-call")
        messaging = Messaging(ua)
        messaging.info_received(self.request("INFO", "Signal=1"), None)
        ua.call_id = "c1"
        messaging.info_received(self.request("INFO", "Signal=1", to_tag=""), None)  # no To tag: no dialog
        messaging.info_received(self.request("INFO"), None)
        messaging.message_received(self.request("MESSAGE", to_tag=""), None)
        self.assertEqual([answer.status for answer in ua.answers], [481, 481, 400, 400])
        self.assertEqual(ua.events, [])
        messaging.info_received(self.request("INFO", "Signal=1"), None)
        messaging.message_received(self.request("MESSAGE", "hé", to_tag=""), None)
        self.assertEqual([answer.status for answer in ua.answers[4:]], [200, 200])
        self.assertEqual([event.result for event in ua.events], [
            {"event": "info", "sender": "sip:bob@ims.test", "displayname": "Bob", "type": "text/plain", "content": "Signal=1"},
            {"event": "message", "sender": "sip:bob@ims.test", "displayname": "Bob", "content_type": "text/plain", "content": "hé"},
        ])

    def test_without_a_call_in_dialog_requests_are_not_sent_and_out_of_dialog_ones_are(self) -> None:
        ua = _FakeMessagingUa(call_id=None)
        messaging = Messaging(ua)
        self.assertFalse(messaging.send_info(TextBody("text/plain", "x")))
        self.assertIsNone(messaging.send_message(TextBody("text/plain", "x"), None, None))
        self.assertEqual(ua.sent, [])
        call_id = messaging.send_message(TextBody("text/plain;charset=UTF-8", "hi\r\nVia: x"), "sip:bob@ims.test", "chosen@alice")
        self.assertEqual(call_id, "chosen@alice")
        [(request, outcome)] = ua.sent
        self.assertEqual((request.method, request.uri, request.call_id), ("MESSAGE", "sip:bob@ims.test", "chosen@alice"))
        self.assertEqual(request.headers.get_all("Via"), ["SIP/2.0/WS abc.invalid;branch=z9hG4bKtest"])  # the text stays in the body
        self.assertEqual(request.body, b"hi\r\nVia: x")
        outcome.timed_out(None)  # RFC 3261 §8.1.3.1: a timeout is a 408 for the WIC
        self.assertEqual(ua.events[-1].result, {"event": "messagedelivery", "code": 408, "reason": "Request Timeout"})


class _FakeTransferUa(_FakeMessagingUa):
    """A confirmed call: in-dialog requests are made (the UA's own is RFC 3261 §12.2.1.1)."""

    def contact(self) -> str:
        return "<sip:alice@abc.invalid;transport=ws;ob>"

    def in_dialog_request(self, method: str) -> Any:
        if self.call_id is None:
            return None
        request = Request(method, "sip:bob@ims.test")
        request.headers.add("Call-ID", self.call_id)
        return request


class TransferTests(unittest.TestCase):
    """``epcscf.pcscf.nonsip_transfer``: the plugin's ``transfer`` as a REFER (RFC 3515), an
    attended one with an escaped Replaces (RFC 3891 §5), and the transferee's NOTIFYs."""

    request = MessagingTests.request

    def test_refer_to_carries_the_replaced_dialog_escaped(self) -> None:
        ua = _FakeTransferUa(call_id=None)
        transfers = Transfers(ua)
        self.assertFalse(transfers.refer("sip:carol@ims.test"))  # no call: nothing sent
        ua.call_id = "c1"
        self.assertTrue(transfers.refer("sip:carol@ims.test", replaces_value("c2@h", "ours", "theirs")))
        [(refer, _)] = ua.sent
        self.assertEqual(refer.method, "REFER")
        self.assertEqual(refer.headers.get("Refer-To"), "<sip:carol@ims.test?Replaces=c2%40h%3Bto-tag%3Dtheirs%3Bfrom-tag%3Dours>")
        self.assertEqual(refer.headers.get("Contact"), ua.contact())
        self.assertEqual([event.result for event in ua.events], [{"event": "transferring"}])

    def test_refer_to_of_an_incoming_refer(self) -> None:
        self.assertEqual(parse_refer_to("<sip:carol@ims.test>"), ("sip:carol@ims.test", None))
        self.assertEqual(parse_refer_to('"Carol" <sip:carol@ims.test?Replaces=c2%40h%3Bto-tag%3D1%3Bfrom-tag%3D2&Subject=x>'),
                         ("sip:carol@ims.test", "c2@h;to-tag=1;from-tag=2"))  # RFC 3891 §5, unescaped
        self.assertIsNone(parse_refer_to("<tel:+123>"))
        self.assertIsNone(parse_refer_to("<http://evil.example/>"))

    def test_notifies_in_our_dialog_of_the_refer_package_become_events(self) -> None:
        ua = _FakeTransferUa(call_id="another-call")
        transfers = Transfers(ua)
        sipfrag = "message/sipfrag;version=2.0"
        transfers.notify_received(self.request("NOTIFY", "SIP/2.0 200 OK", content_type=sipfrag), None)  # not our call
        ua.call_id = "c1"
        other = self.request("NOTIFY", "x", content_type="application/dialog-info+xml")
        other.headers.add("Event", "dialog")
        transfers.notify_received(other, None)
        notify = self.request("NOTIFY", "SIP/2.0 180 Ringing", content_type=sipfrag)
        notify.headers.add("Event", "refer")
        notify.headers.add("Subscription-State", "active;expires=60")
        transfers.notify_received(notify, None)
        self.assertEqual([answer.status for answer in ua.answers], [481, 489, 200])
        self.assertEqual([event.result for event in ua.events], [
            {"event": "notify", "notify": "refer", "substate": "active", "content-type": sipfrag, "content": "SIP/2.0 180 Ringing"},
        ])


class _FakeSubscribingUa(_FakeMessagingUa):
    def contact(self) -> str:
        return "<sip:alice@abc.invalid;transport=ws;ob>"


class SubscriptionTests(unittest.TestCase):
    """``epcscf.pcscf.nonsip_subscribe`` on a clock: a granted subscription is refreshed in its
    dialog before it lapses (RFC 6665 §4.1.2.2); a NOTIFY of another package gets 489."""

    def test_refreshed_in_its_dialog_before_it_lapses(self) -> None:
        clock = task.Clock()
        ua = _FakeSubscribingUa(call_id=None)
        subscriptions = Subscriptions(clock, ua)
        subscriptions.subscribe("message-summary", "sip:mwi@ims.test", None, 600, "sub-1")
        [(first, outcome)] = ua.sent
        self.assertEqual((first.method, first.uri, first.headers.get("Expires")), ("SUBSCRIBE", "sip:mwi@ims.test", "600"))
        ok = make_response(first, 200, to_tag="n1")
        ok.headers.add("Expires", "100")
        ok.headers.add("Contact", "<sip:notifier@192.0.2.9:5060>")
        ok.headers.add("Record-Route", "<sip:core.ims.test;lr>")
        outcome.response_received(ok, None)
        self.assertEqual(ua.events[-1].result["expires"], 100)
        clock.advance(79)
        self.assertEqual(len(ua.sent), 1)
        clock.advance(2)  # 80 % of the granted 100 s
        refresh = ua.sent[-1][0]
        self.assertEqual((refresh.uri, refresh.headers.get("Route"), refresh.headers.get("Call-ID")),
                         ("sip:notifier@192.0.2.9:5060", "<sip:core.ims.test;lr>", "sub-1"))
        self.assertTrue(refresh.headers.get("To").endswith(";tag=n1"))
        notify = MessagingTests.request(self, "NOTIFY", "x", to_tag=f";tag={first.headers.get('From').split('tag=')[1]}")
        notify.headers.set("Call-ID", "sub-1")
        notify.headers.add("Event", "presence")
        self.assertTrue(subscriptions.notify_received(notify, None))
        self.assertEqual(ua.answers[-1].status, 489)
        subscriptions.close()
        self.assertEqual(clock.getDelayedCalls(), [])
