"""The parser's line memo (``epcscf.sip.parser._line_memo``) reads a line as the parser reads it.

A header line read twice is kept with what the parser made of it (its item and canonical
name); from the third reading on the memo gives that instead of reading the line again.
Checked here against a parse with the memo empty: the same start line, items, index, body,
views, verdicts and serialised octets, for hypothesis-made messages with folded lines, compact
and odd-case names, LWS around the colon, repeated and single-valued names, and bad lines.
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from epcscf.sip import parser
from epcscf.sip.params import clear_memos
from epcscf.sip.parser import SipParseError, parse_message
from tests.support.properties import BOUNDED

REGISTER = (
    "REGISTER sip:ims.test SIP/2.0\r\n"
    "Via: SIP/2.0/WS h.invalid;branch=z9hG4bK1\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:a@ims.test>;tag=1\r\n"
    "To: <sip:a@ims.test>\r\n"
    "Call-ID: c1\r\n"
    "CSeq: 1 REGISTER\r\n"
    "Contact: <sip:a@h.invalid;transport=ws;ob>;reg-id=1;expires=600\r\n"
    "Content-Length: 0\r\n\r\n"
).encode()

names = st.sampled_from(["Supported", "supported", "k", "Contact", "m", "X-Odd", "Route", "To", "Call-ID", "Content-Length",
                         "Max-Forwards", "Bad Name", ""])
values = st.sampled_from(["path, outbound", "<sip:r@x;lr>", "70", "0", "  spaced  ", "", "a,b", "<sip:a@ims.test>", "x\xe9"])
separators = st.sampled_from([": ", ":", " : ", ":\t", "  :  "])
extra_lines = st.lists(
    st.tuples(names, separators, values, st.sampled_from(["", "\r\n continued", "\r\n\tmore"])),
    max_size=4,
).map(lambda found: "".join(f"{name}{sep}{value}{fold}\r\n" for name, sep, value, fold in found))


def reading(data: bytes) -> object:
    """What a parse gives, as plain values (or the error it raises)."""
    try:
        message = parse_message(data)
    except SipParseError as error:
        return ("error", error.status, error.reason)
    headers = message.headers
    return (
        message.start_line(),
        list(headers),
        {key: list(found) for key, found in headers.lookup_index().items()},
        message.body,
        dict(headers._views),
        headers._as_parsed,
        message.serialize(),
    )


class LineMemoTests(SynchronousTestCase):
    def setUp(self) -> None:
        clear_memos()
        self.addCleanup(clear_memos)

    @BOUNDED
    @given(extra_lines, st.sampled_from(["", "Supported: path\r\n", " folded-first\r\n"]))
    @example("Supported: path, outbound\r\nsupported:path\r\n", "")
    @example("To: <sip:b@ims.test>\r\n", "")  # a second To: 400 (RFC 3261 §7.3.1), memo or not
    @example("X-Odd : 0\r\n continued\r\n", "")
    def test_a_message_read_from_the_memo_reads_as_without_it(self, extra: str, first: str) -> None:
        head, _, _ = REGISTER.partition(b"Content-Length")
        data = head.replace(b"Max-Forwards", (first + extra).encode("utf-8") + b"Max-Forwards") + b"Content-Length: 0\r\n\r\n"
        clear_memos()
        expected = reading(data)
        for _ in range(3):  # seen, remembered, then read from the memo
            self.assertEqual(reading(data), expected)

    def test_lines_read_twice_are_remembered_but_not_via_or_cseq(self) -> None:
        for _ in range(2):
            parse_message(REGISTER)
        remembered = set(parser._line_memo)
        self.assertIn("Max-Forwards: 70", remembered)
        self.assertIn("Contact: <sip:a@h.invalid;transport=ws;ob>;reg-id=1;expires=600", remembered)
        self.assertFalse([line for line in remembered if line.startswith(("Via", "CSeq"))])

    def test_a_line_read_once_is_not_remembered(self) -> None:
        parse_message(REGISTER)
        self.assertEqual(parser._line_memo, {})

    def test_the_value_of_a_remembered_line_is_one_object(self) -> None:
        # The memos behind the checks then find its hash already computed.
        first, second, third = (parse_message(REGISTER) for _ in range(3))
        self.assertIsNot(first.headers.get("Call-ID"), second.headers.get("Call-ID"))
        self.assertIs(second.headers.get("Call-ID"), third.headers.get("Call-ID"))

    def test_bounded_and_emptied_by_clear_memos(self) -> None:
        for number in range(parser.LINE_MEMO_ENTRIES + 10):
            line = f"X-Number: {number}"
            for _ in range(2):
                parse_message(REGISTER.replace(b"Max-Forwards: 70", line.encode() + b"\r\nMax-Forwards: 70"))
        self.assertLessEqual(len(parser._line_memo), parser.LINE_MEMO_ENTRIES)
        self.assertLessEqual(len(parser._lines_seen), parser.LINE_MEMO_ENTRIES)
        clear_memos()
        self.assertEqual((parser._line_memo, parser._lines_seen), ({}, set()))

    def test_a_long_line_is_not_remembered(self) -> None:
        line = "X-Long: " + "y" * parser.LINE_MEMO_TEXT_LENGTH
        data = REGISTER.replace(b"Max-Forwards: 70", line.encode() + b"\r\nMax-Forwards: 70")
        for _ in range(3):
            self.assertEqual(parse_message(data).headers.get("X-Long"), line[len("X-Long: "):])
        self.assertNotIn(line, parser._line_memo)
