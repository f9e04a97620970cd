"""The sans-IO parts of the non-SIP front end: Janus frames and errors, JSEP with trickled
candidates made into one SDP (RFC 8838/8839), the hold offer (RFC 3264 §8.4)."""

from __future__ import annotations

import os

from twisted.trial import unittest

from epcscf.nonsip import janus_api as api
from epcscf.nonsip.jsep import JsepError, TrickleBuffer, answer_direction, as_answer, next_version, parse_jsep, parse_trickle

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
