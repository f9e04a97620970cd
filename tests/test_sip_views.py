"""The per-message caches of the SIP hot path: the Headers lookup index and the parsed views.

Each cache must give exactly what the uncached code gives: the index what a scan of the
header lines gives after any change, and every view what the full parser gives (or the
same HeaderError) for the value text it is keyed by.
"""

from __future__ import annotations

from twisted.trial import unittest

from epcscf.sip.headers import (
    HeaderError,
    cseq,
    from_tag,
    parse_address,
    parse_via,
    to_tag,
    top_via,
    top_via_view,
    via_line_view,
)
from epcscf.sip.message import Headers, Request, canonical_name
from epcscf.sip.parser import parse_message


def scanned(headers: Headers, name: str) -> list[str]:
    """What get_all returned before the index: a scan of the lines."""
    key = canonical_name(name)
    return [value for n, value in headers if canonical_name(n) == key]


VIAS = [
    "SIP/2.0/UDP 127.0.0.1:15063;branch=z9hG4bK-3802-1-0;rport",
    "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-1;received=192.0.2.1;rport=5060",
    "SIP/2.0/tcp host.example.com;branch=z9hG4bK-1",
    "SIP/2.0/UDP [2001:db8::1]:65535;branch=z9hG4bK-x;RPORT",
    "SIP/2.0/UDP a.example ; branch = z9hG4bK-y ; lr",
    "SIP/2.0/UDP a.example;ttl=5;branch=z9hG4bK-z",
    "SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bK7623549;rport",
    "SIP/2.0/UDP 127.0.0.1:05060;branch=z9hG4bK-lead",
]
BAD_VIAS = [
    "SIP/2.0/UDP 127.0.0.1:65536;branch=z9hG4bK-1",
    "SIP/2.0/UDP 127.0.0.1:99999;branch=z9hG4bK-1",
    "SIP/2.0/UDP 127.0.0.1:123456;branch=z9hG4bK-1",
    "SIP/2.0/UDP a.example;ttl=300;branch=z9hG4bK-1",
    "SIP/2.0/UDP bad..host;branch=z9hG4bK-1",
]
ADDRESSES = [
    "<sip:sipp@127.0.0.1:15070>;tag=3802SIPpTag001",
    "<sip:bench@127.0.0.1:15060>",
    '"Alice > Bob" <sip:alice@example.com>;TAG=abc;x=1',
    "Alice <sip:alice@example.com:65535;transport=udp>;tag=a;tag=b",
    "sip:carol@example.com;tag=c",
    "<sips:dave@[2001:db8::1]:5061>;tag=d",
    "<tel:+15551234567>;tag=e",
    '"\\"quoted\\"" <sip:q@example.com>;tag=f',
]
BAD_ADDRESSES = [
    "<sip:x@127.0.0.1:65536>;tag=1",
    "<sip:x@bad..host>;tag=1",
    "sip:x@example.com?subject=hi;tag=1",
    "<sip:x@example.com",
]


class ViewTests(unittest.TestCase):
    def test_top_via_view_equals_the_full_parse(self) -> None:
        for value in VIAS:
            message = Request("MESSAGE", "sip:a@example.com", Headers([("Via", value)]))
            self.assertEqual(top_via_view(message), parse_via(value), value)
            self.assertEqual(str(top_via_view(message)), str(parse_via(value)), value)

    def test_bad_vias_raise_like_the_full_parse(self) -> None:
        for value in BAD_VIAS:
            message = Request("MESSAGE", "sip:a@example.com", Headers([("Via", value)]))
            self.assertRaises(HeaderError, parse_via, value)
            self.assertRaises(HeaderError, top_via_view, message)
            self.assertRaises(HeaderError, via_line_view, message.headers, value)

    def test_tags_equal_the_full_parse(self) -> None:
        for value in ADDRESSES:
            message = Request("MESSAGE", "sip:a@example.com", Headers([("From", value), ("To", value)]))
            expected = parse_address("From", value).tag
            self.assertEqual(from_tag(message), expected, value)
            self.assertEqual(to_tag(message), expected, value)

    def test_bad_addresses_raise_like_the_full_parse(self) -> None:
        for value in BAD_ADDRESSES:
            message = Request("MESSAGE", "sip:a@example.com", Headers([("From", value), ("To", value)]))
            self.assertRaises(HeaderError, parse_address, "From", value)
            self.assertRaises(HeaderError, from_tag, message)
            self.assertRaises(HeaderError, to_tag, message)

    def test_a_changed_value_is_parsed_again(self) -> None:
        message = Request("MESSAGE", "sip:a@example.com", Headers([("Via", VIAS[0]), ("CSeq", "1 MESSAGE")]))
        first = top_via_view(message)
        self.assertIs(top_via_view(message), first)  # parsed once
        message.headers.insert_first("Via", VIAS[1])
        self.assertEqual(top_via_view(message), parse_via(VIAS[1]))
        message.headers.set("CSeq", "2 MESSAGE")
        self.assertEqual((cseq(message).number, cseq(message).method), (2, "MESSAGE"))

    def test_the_parser_leaves_its_parses_and_index(self) -> None:
        data = (
            "MESSAGE sip:bench@127.0.0.1:15060 SIP/2.0\r\n"
            "v: SIP/2.0/UDP 127.0.0.1:15070;branch=z9hG4bK-1;rport\r\n"
            "f: <sip:sipp@127.0.0.1:15070>;tag=1\r\n"
            "t: <sip:bench@127.0.0.1:15060>\r\n"
            "i: 1-1@127.0.0.1\r\n"
            "CSeq: 7 MESSAGE\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        message = parse_message(data)
        self.assertEqual(cseq(message).number, 7)
        self.assertEqual(message.headers.get("via"), "SIP/2.0/UDP 127.0.0.1:15070;branch=z9hG4bK-1;rport")
        self.assertEqual(message.headers.get_all("From"), ["<sip:sipp@127.0.0.1:15070>;tag=1"])
        self.assertEqual(message.headers.count("call-id"), 1)


class HeadersIndexTests(unittest.TestCase):
    def assertIndexMatchesScan(self, headers: Headers) -> None:
        self.assertEqual(set(headers.names()), {canonical_name(name) for name, _ in headers})
        for name in ("Via", "Route", "Record-Route", "Max-Forwards", "To", "X-Other", "Contact"):
            self.assertEqual(headers.get_all(name), scanned(headers, name), name)
            self.assertEqual(headers.get(name), (scanned(headers, name) or [None])[0], name)
            self.assertEqual(name in headers, bool(scanned(headers, name)), name)
            self.assertEqual(headers.count(name), len(scanned(headers, name)), name)

    def test_every_change_keeps_lookups_equal_to_a_scan(self) -> None:
        headers = Headers(
            [("v", "SIP/2.0/UDP a;branch=z9hG4bK-1"), ("To", "<sip:b@x>"), ("Via", "SIP/2.0/UDP c;branch=z9hG4bK-2"),
             ("Route", "<sip:r1;lr>"), ("Max-Forwards", "70"), ("route", "<sip:r2;lr>")]
        )
        self.assertIndexMatchesScan(headers)  # builds the index
        headers.insert_first("Via", "SIP/2.0/UDP p;branch=z9hG4bK-3")
        self.assertIndexMatchesScan(headers)
        headers.insert_first("Record-Route", "<sip:p;lr>")
        self.assertIndexMatchesScan(headers)
        headers.set("Max-Forwards", "69")
        headers.set("X-Other", "new")
        self.assertIndexMatchesScan(headers)
        headers.replace_all("Route", ["<sip:r2;lr>"])
        self.assertIndexMatchesScan(headers)
        headers.replace_all("Via", [])
        self.assertIndexMatchesScan(headers)
        headers.add("Contact", "<sip:c@x>")
        headers.add("m", "<sip:d@x>")
        self.assertIndexMatchesScan(headers)
        self.assertEqual(headers.remove("contact"), 2)
        self.assertIndexMatchesScan(headers)
        self.assertTrue(headers.replace_first("Route", "<sip:r3;lr>"))
        self.assertIndexMatchesScan(headers)
        headers.add("Via", "SIP/2.0/UDP q;branch=z9hG4bK-4")
        headers.add("Via", "SIP/2.0/UDP r;branch=z9hG4bK-5")
        self.assertTrue(headers.replace_first("v", None))
        self.assertIndexMatchesScan(headers)
        self.assertEqual(headers.get_all("via"), ["SIP/2.0/UDP r;branch=z9hG4bK-5"])
        self.assertTrue(headers.replace_first("Via", None))
        self.assertIndexMatchesScan(headers)
        self.assertFalse(headers.replace_first("Via", None))
        headers.insert_first("Via", "SIP/2.0/UDP s;branch=z9hG4bK-6")  # absent: goes first of all
        self.assertEqual(list(headers)[0], ("Via", "SIP/2.0/UDP s;branch=z9hG4bK-6"))
        self.assertIndexMatchesScan(headers)

    def test_replace_first_keeps_the_line_in_place_without_an_index(self) -> None:
        headers = Headers([("To", "<sip:b@x>"), ("Via", "SIP/2.0/UDP a;branch=z9hG4bK-1"), ("Via", "SIP/2.0/UDP b;branch=z9hG4bK-2")])
        headers.replace_first("via", "SIP/2.0/UDP a;branch=z9hG4bK-1;received=10.0.0.1")
        self.assertEqual(
            list(headers),
            [("To", "<sip:b@x>"), ("Via", "SIP/2.0/UDP a;branch=z9hG4bK-1;received=10.0.0.1"), ("Via", "SIP/2.0/UDP b;branch=z9hG4bK-2")],
        )
        self.assertIndexMatchesScan(headers)

    def test_a_copy_has_its_own_lines(self) -> None:
        headers = Headers([("Via", "SIP/2.0/UDP a;branch=z9hG4bK-1")])
        self.assertEqual(headers.get("via"), "SIP/2.0/UDP a;branch=z9hG4bK-1")
        copy = headers.copy()
        copy.insert_first("Via", "SIP/2.0/UDP p;branch=z9hG4bK-2")
        self.assertEqual(headers.get_all("via"), ["SIP/2.0/UDP a;branch=z9hG4bK-1"])
        self.assertEqual(copy.get_all("via"), ["SIP/2.0/UDP p;branch=z9hG4bK-2", "SIP/2.0/UDP a;branch=z9hG4bK-1"])
        self.assertEqual(copy, Headers([("Via", "SIP/2.0/UDP p;branch=z9hG4bK-2"), ("Via", "SIP/2.0/UDP a;branch=z9hG4bK-1")]))


class ListSplitTests(unittest.TestCase):
    def test_commas_inside_angle_brackets_and_quotes_do_not_split(self) -> None:
        from epcscf.sip.uri import split_list

        cases = {
            "SIP/2.0/UDP a;branch=z9hG4bK-1, SIP/2.0/UDP b;branch=z9hG4bK-2": [
                "SIP/2.0/UDP a;branch=z9hG4bK-1", "SIP/2.0/UDP b;branch=z9hG4bK-2"],
            "<sip:a,b@x;lr>;p=1 ,\t<sip:c>": ["<sip:a,b@x;lr>;p=1", "<sip:c>"],
            "<sip:a>, , <sip:b>,": ["<sip:a>", "<sip:b>"],
            "a<b,c>d<e,f": ["a<b,c>d<e,f"],  # an unclosed '<' keeps the rest together
            "<a>b>,c": ["<a>b>", "c"],
            '"x, y" <sip:a>, <sip:b>': ['"x, y" <sip:a>', "<sip:b>"],
            ",": [],
        }
        for text, expected in cases.items():
            self.assertEqual(split_list(text), expected, text)
