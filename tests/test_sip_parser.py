"""parse_message, error_response_for and StreamFramer (RFC 3261 §7, §18.3; RFC 5626 §4.4.1)."""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from epcscf.sip.message import Request, Response
from epcscf.sip.parser import (
    FramingError,
    KeepAlivePing,
    MessageFramed,
    ParserLimits,
    SipParseError,
    StreamFramer,
    error_response_for,
    parse_message,
)

BODY = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0\r\n"


def invite(extra: str = "", body: bytes = BODY, length: int | None = None, method: str = "INVITE") -> bytes:
    head = (
        f"{method} sip:bob@biloxi.example.com SIP/2.0\r\n"
        "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8\r\n"
        "Max-Forwards: 70\r\n"
        "To: Bob <sip:bob@biloxi.example.com>\r\n"
        "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
        "Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
        f"CSeq: 314159 {method}\r\n"
        "Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
        f"{extra}"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\n"
        "\r\n"
    )
    return head.encode() + body


RESPONSE = (
    b"SIP/2.0 180 Ringing\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8;received=192.0.2.1\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Content-Length: 0\r\n\r\n"
)


class ParseMessageTests(SynchronousTestCase):
    def parse_error(self, data: bytes, **kwargs: object) -> SipParseError:
        with self.assertRaises(SipParseError) as caught:
            parse_message(data, **kwargs)  # type: ignore[arg-type]
        return caught.exception

    def test_request_fields_header_order_and_body(self) -> None:
        message = parse_message(invite())
        assert isinstance(message, Request)
        self.assertEqual((message.method, message.uri, message.version), ("INVITE", "sip:bob@biloxi.example.com", "SIP/2.0"))
        self.assertEqual([name for name, _ in message.headers][:3], ["Via", "Max-Forwards", "To"])
        self.assertEqual(message.headers.get("from"), "Alice <sip:alice@atlanta.example.com>;tag=1928301774")
        self.assertEqual(message.body, BODY)

    def test_response_fields(self) -> None:
        message = parse_message(RESPONSE)
        assert isinstance(message, Response)
        self.assertEqual((message.status, message.reason), (180, "Ringing"))
        self.assertEqual(message.body, b"")

    def test_folded_headers_are_unfolded(self) -> None:
        # RFC 3261 §7.3.1
        message = parse_message(invite("Subject: I know you're there,\r\n   pick up the phone\r\n\tand talk to me!\r\n"))
        self.assertEqual(message.headers.get("subject"), "I know you're there, pick up the phone and talk to me!")

    def test_compact_forms_and_name_case(self) -> None:
        data = (
            b"OPTIONS sip:bob@biloxi.example.com SIP/2.0\r\n"
            b"v: SIP/2.0/UDP a.example.com;branch=z9hG4bK1\r\n"
            b"t: <sip:bob@biloxi.example.com>\r\n"
            b"F: <sip:alice@atlanta.example.com>;tag=1\r\n"
            b"i: abc@a\r\ncSeQ: 1 OPTIONS\r\nl: 0\r\n\r\n"
        )
        message = parse_message(data)
        self.assertEqual(message.call_id, "abc@a")
        self.assertEqual(message.headers.get("Content-Length"), "0")
        self.assertEqual(message.headers.get("to"), "<sip:bob@biloxi.example.com>")

    def test_leading_crlf_before_start_line_is_ignored(self) -> None:
        # RFC 3261 §7.5
        self.assertIsInstance(parse_message(b"\r\n\r\n" + invite()), Request)

    def test_body_longer_than_content_length_is_truncated(self) -> None:
        # RFC 3261 §18.3
        message = parse_message(invite(length=10))
        self.assertEqual(message.body, BODY[:10])

    def test_body_shorter_than_content_length_is_400(self) -> None:
        error = self.parse_error(invite(length=len(BODY) + 1))
        self.assertEqual(error.status, 400)
        self.assertIn("body shorter than Content-Length", error.reason)

    def test_missing_content_length_ends_at_datagram_end_unless_required(self) -> None:
        data = invite().replace(f"Content-Length: {len(BODY)}\r\n".encode(), b"")
        self.assertEqual(parse_message(data).body, BODY)
        error = self.parse_error(data, require_content_length=True)
        self.assertEqual((error.status, error.reason), (400, "Bad Request (missing Content-Length)"))

    def test_multipart_body_and_binary_octets_pass_through(self) -> None:
        body = b"--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: application/octet-stream\r\n\r\n\x00\xff\r\n\r\n\x80\r\n--b--\r\n"
        data = invite(body=body).replace(b"application/sdp", b"multipart/mixed;boundary=b")
        message = parse_message(data)
        self.assertEqual(message.body, body)
        self.assertEqual(message.serialize(), data)

    def test_non_utf8_header_octets_survive_a_round_trip(self) -> None:
        data = invite("Subject: caf\xe9\r\n".encode("latin-1").decode("latin-1")).replace(b"caf\xc3\xa9", b"caf\xe9")
        message = parse_message(data)
        self.assertEqual(message.serialize(), data)

    def test_round_trip_keeps_order_and_raw_values(self) -> None:
        data = invite("X-Odd:   value ;; with ,, odd  spacing\r\nRoute: <sip:p1.example.com;lr>\r\nRoute: <sip:p2.example.com;lr>\r\n")
        first = parse_message(data)
        self.assertEqual(first.serialize(), data.replace(b"X-Odd:   value", b"X-Odd: value"))
        second = parse_message(first.serialize())
        self.assertEqual(list(second.headers), list(first.headers))
        self.assertEqual((second.body, second.start_line()), (first.body, first.start_line()))

    def test_start_line_errors(self) -> None:
        cases = {
            b"INVITE  sip:bob@b.example.com SIP/2.0": "malformed Request-Line",
            b"INVITE sip:bob@b.example.com": "malformed Request-Line",
            b"INV(ITE sip:bob@b.example.com SIP/2.0": "method is not a token",
            b"INVITE sip:bob@ SIP/2.0": "malformed Request-URI",
            b"INVITE sip:bob@b.example.com SIP/two": "malformed SIP-Version",
        }
        for start, reason in cases.items():
            data = start + invite()[invite().index(b"\r\n") :]
            error = self.parse_error(data)
            self.assertEqual(error.status, 400, start)
            self.assertIn(reason, error.reason, start)

    def test_unknown_version_is_505(self) -> None:
        data = invite().replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1)
        error = self.parse_error(data)
        self.assertEqual(error.status, 505)
        response = error_response_for(error)
        assert response is not None
        self.assertEqual(response.status, 505)

    def test_unknown_uri_scheme_is_not_a_parse_error(self) -> None:
        data = invite().replace(b"sip:bob@biloxi.example.com SIP/2.0", b"urn:service:sos SIP/2.0", 1)
        self.assertEqual(parse_message(data).uri, "urn:service:sos")  # type: ignore[union-attr]

    def test_header_errors_name_the_problem(self) -> None:
        cases = [
            (invite("Content-Length: 0\r\n"), "duplicate Content-Length"),
            (invite("Call-ID: other@x\r\n"), "duplicate Call-ID"),
            (invite("Content-Type: text/plain\r\n"), "duplicate Content-Type"),
            (invite(method="INVITE").replace(b"CSeq: 314159 INVITE", b"CSeq: 314159 BYE"), "CSeq method does not match"),
            (invite(length=-1), "Content-Length is not a non-negative number"),
            (invite().replace(b"Max-Forwards: 70", b"Max-Forwards: seventy"), "malformed Max-Forwards"),
            (invite().replace(b"Max-Forwards: 70", b"Max-Forwards: 256"), "malformed Max-Forwards"),
            (invite().replace(b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n", b""), "missing Call-ID"),
            (invite().replace(b"Call-ID: a84b4c76e66710@pc33", b"Call-ID: a84 b4c"), "malformed Call-ID"),
            (invite("No colon here\r\n"), "malformed header line"),
            (invite().replace(b"CSeq: 314159 INVITE", b"CSeq: INVITE"), "malformed CSeq"),
        ]
        for data, reason in cases:
            error = self.parse_error(data)
            self.assertEqual(error.status, 400, reason)
            self.assertIn(reason, error.reason)
            self.assertTrue(error.reason.startswith("Bad Request ("), error.reason)
            self.assertIsInstance(error.partial, Request)

    def test_max_forwards_may_be_absent(self) -> None:
        data = invite().replace(b"Max-Forwards: 70\r\n", b"")
        self.assertIsNone(parse_message(data).headers.get("max-forwards"))

    def test_limits(self) -> None:
        # RFC 3261 §21.5.14: 513, answered when the header section could be read
        error = self.parse_error(invite(body=b"x" * 2000), limits=ParserLimits(max_message_size=1000))
        self.assertEqual((error.status, error.reason), (513, "Message Too Large"))
        response = error_response_for(error)
        assert response is not None
        self.assertEqual(response.status, 513)
        error = self.parse_error(invite(), limits=ParserLimits(max_message_size=100))
        self.assertEqual(error.status, 513)
        self.assertIsNone(error.partial)
        error = self.parse_error(invite("X-A: 1\r\n" * 5), limits=ParserLimits(max_headers=8))
        self.assertEqual(error.status, 513)
        error = self.parse_error(invite("X-Long: " + "a" * 200 + "\r\n"), limits=ParserLimits(max_line_length=100))
        self.assertEqual(error.status, 513)

    def test_garbage_never_raises_anything_but_sip_parse_error(self) -> None:
        rng = random.Random(4475)
        seeds = [invite(), RESPONSE, b"\r\n", b"\x00" * 40, b"SIP/2.0", "INVITE \u00e9 SIP/2.0\r\n\r\n".encode()]
        for _ in range(3000):
            data = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 6)):
                if not data:
                    break
                position = rng.randrange(len(data))
                choice = rng.random()
                if choice < 0.4:
                    data[position] = rng.choice(b' \t\r\n:;,<>"@\\%\x00\xff0123456789aZ/=')
                elif choice < 0.7:
                    del data[position : position + rng.randint(1, 20)]
                else:
                    data[position:position] = data[rng.randrange(len(data)) :][: rng.randint(1, 30)]
            try:
                parse_message(bytes(data))
            except SipParseError as error:
                # "unparseable message" is the safety net for parser bugs: it must never fire.
                self.assertNotIn("unparseable message", error.reason, bytes(data))
                error_response_for(error)


class ErrorResponseTests(SynchronousTestCase):
    def test_400_copies_transaction_headers_adds_to_tag_and_names_the_problem(self) -> None:
        with self.assertRaises(SipParseError) as caught:
            parse_message(invite("Content-Length: 0\r\n"))
        response = error_response_for(caught.exception)
        assert response is not None
        self.assertEqual((response.status, response.reason), (400, "Bad Request (duplicate Content-Length)"))
        self.assertEqual(response.headers.get("via"), "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8")
        self.assertEqual(response.headers.get("cseq"), "314159 INVITE")
        self.assertRegex(response.headers.get("to") or "", r"^Bob <sip:bob@biloxi.example.com>;tag=[0-9a-f]{12}$")
        reparsed = parse_message(response.serialize())
        assert isinstance(reparsed, Response)
        self.assertEqual(reparsed.reason, "Bad Request (duplicate Content-Length)")

    def test_no_response_without_enough_headers_or_for_ack_or_responses(self) -> None:
        for data in [
            invite().replace(b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n", b""),
            invite("Content-Length: 0\r\n", method="ACK"),
            RESPONSE.replace(b"CSeq: 314159 INVITE", b"CSeq: x"),
            b"garbage\r\n\r\n",
        ]:
            with self.assertRaises(SipParseError) as caught:
                parse_message(data)
            self.assertIsNone(error_response_for(caught.exception), data[:40])


class StreamFramerTests(SynchronousTestCase):
    def test_partial_reads_and_several_messages_per_read(self) -> None:
        framer = StreamFramer()
        stream = invite() + RESPONSE + invite()
        events = []
        for index in range(0, len(stream), 7):
            events.extend(framer.feed(stream[index : index + 7]))
        self.assertEqual([type(event) for event in events], [MessageFramed] * 3)
        self.assertEqual(framer.feed(invite() + RESPONSE)[1].message.status, 180)  # type: ignore[union-attr]
        self.assertEqual(framer.buffered, 0)

    def test_keepalive_ping_and_lone_crlf(self) -> None:
        # RFC 5626 §4.4.1: CRLFCRLF is a ping (answer CRLF); a lone CRLF is a pong, ignored.
        framer = StreamFramer()
        self.assertEqual(framer.feed(b"\r\n\r\n"), [KeepAlivePing()])
        self.assertEqual(framer.feed(b"\r\n"), [])
        self.assertEqual(framer.feed(b"\r\n"), [KeepAlivePing()])
        events = framer.feed(b"\r\n" + invite())
        self.assertEqual([type(event) for event in events], [MessageFramed])
        self.assertEqual(framer.feed(b"\r\n\r\n" + RESPONSE)[0], KeepAlivePing())

    def test_long_run_of_line_ends_is_skipped_without_recursion(self) -> None:
        framer = StreamFramer()
        self.assertEqual(framer.feed(b"\n" * 50000), [])
        self.assertEqual([type(event) for event in framer.feed(invite())], [MessageFramed])

    def test_missing_content_length_is_fatal_400(self) -> None:
        # RFC 3261 §18.3
        framer = StreamFramer()
        data = invite(body=b"").replace(b"Content-Length: 0\r\n", b"")
        [event] = framer.feed(data)
        assert isinstance(event, FramingError)
        self.assertTrue(event.fatal)
        self.assertEqual(event.error.status, 400)
        response = error_response_for(event.error)
        assert response is not None
        self.assertEqual(response.reason, "Bad Request (missing Content-Length)")
        self.assertEqual(framer.feed(invite()), [])

    def test_content_length_in_any_case_or_compact_form_frames_the_body(self) -> None:
        # RFC 3261 §7.3.1 / §7.3.3: header names are case-insensitive; "l" is the compact form.
        body = b"v=0\r\n"
        for spelling in (b"Content-Length", b"content-length", b"CONTENT-LENGTH", b"l", b"L", b"content-Length  "):
            framer = StreamFramer()
            data = invite(body=body).replace(b"Content-Length:", spelling + b":")
            events = framer.feed(data + invite())
            self.assertEqual([type(event) for event in events], [MessageFramed] * 2, spelling)
            self.assertEqual(events[0].message.body, body, spelling)  # type: ignore[union-attr]
            self.assertEqual(framer.buffered, 0)

    def test_non_numeric_content_length_is_fatal_400(self) -> None:
        framer = StreamFramer()
        [event] = framer.feed(invite(body=b"").replace(b"Content-Length: 0", b"Content-Length: zero"))
        assert isinstance(event, FramingError)
        self.assertTrue(event.fatal)
        self.assertEqual(event.error.reason, "Bad Request (Content-Length is not a non-negative number)")

    def test_bad_message_with_good_framing_is_not_fatal(self) -> None:
        framer = StreamFramer()
        events = framer.feed(invite("Call-ID: second@x\r\n") + invite())
        self.assertEqual([type(event) for event in events], [FramingError, MessageFramed])
        assert isinstance(events[0], FramingError)
        self.assertFalse(events[0].fatal)

    def test_oversize_is_fatal_and_buffer_is_bounded(self) -> None:
        limits = ParserLimits(max_message_size=1000)
        framer = StreamFramer(limits)
        [event] = framer.feed(invite(body=b"x" * 2000))
        assert isinstance(event, FramingError)
        self.assertTrue(event.fatal)
        self.assertEqual(event.error.status, 513)
        framer = StreamFramer(limits)
        events = []
        for _ in range(20):
            events.extend(framer.feed(b"X-Endless: " + b"a" * 100 + b"\r\n"))
            self.assertLessEqual(framer.buffered, 1200)
        self.assertEqual(len(events), 1)
        assert isinstance(events[0], FramingError)
        self.assertTrue(events[0].fatal)
