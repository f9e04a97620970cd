"""``call_model.set_sdp``: a message's SDP body and its Content-Type and Content-Length lines
(RFC 3261 §20.14, §20.15) as ``Headers.set`` of both wrote them before it skipped a Content-Type
line that is already the one it would write."""

from __future__ import annotations

from twisted.trial import unittest

from epcscf.pcscf.call_model import SDP, set_sdp
from epcscf.sip.message import Headers, Request

BODY = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n"


def request(pairs: list[tuple[str, str]]) -> Request:
    message = Request("INVITE", "sip:bob@example.com")
    message.headers = Headers.from_pairs([("Via", "SIP/2.0/WSS a.invalid;branch=z9hG4bK1"), *pairs, ("CSeq", "1 INVITE")])
    message.body = b"old"
    return message


def set_both(message: Request, body: bytes) -> None:
    """What ``set_sdp`` did before."""
    message.body = body
    message.headers.set("Content-Type", SDP)
    message.headers.set("Content-Length", str(len(body)))


class SetSdpTests(unittest.SynchronousTestCase):
    def test_the_lines_are_what_setting_both_wrote(self) -> None:
        for pairs in (
            [],
            [("Content-Type", SDP), ("Content-Length", "3")],
            [("c", SDP), ("l", "3")],  # compact forms (RFC 3261 §7.3.3) keep their place and name
            [("Content-Type", "Application/SDP")],
            [("Content-Type", "application/sdp; charset=utf-8")],
            [("Content-Type", SDP), ("Max-Forwards", "70"), ("content-type", SDP)],
            [("Content-Type", "multipart/mixed;boundary=x"), ("Content-Length", "3")],
        ):
            ours, before = request(pairs), request(pairs)
            ours.headers.lookup_index()  # read before, as the proxy has read them
            set_sdp(ours, BODY)
            set_both(before, BODY)
            self.assertEqual(list(ours.headers), list(before.headers), pairs)
            self.assertEqual(ours.headers.get_all("Content-Type"), [SDP])
            self.assertEqual(ours.headers.get("Content-Length"), str(len(BODY)))
            self.assertEqual(ours.serialize(), before.serialize())
