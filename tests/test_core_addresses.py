"""The registrar's fast address reading gives what the full parsers give (epcscf.core.addresses)."""

from __future__ import annotations

from twisted.trial import unittest

from epcscf.core.addresses import ADDRESS_RE, address_aor, first_uri_has_param
from epcscf.core.location import aor_of
from epcscf.sip.headers import HeaderError, parse_address
from epcscf.sip.uri import UriError, parse_name_addr_list

# Values of the common shape (the fast path) and others (the full parser), good and bad.
FAST = [
    "<sip:alice@ims.localdomain>",
    "<sip:alice@ims.localdomain>;tag=ce83997d",
    "  <SIP:Alice@IMS.LocalDomain:5060;transport=TCP;lr>  ;tag=x ; expires = 60 ;flag",
    '"Alice Smith" <sips:alice@example.com>;tag=1',
    '"a<b>, c" <sip:a@b>',
    "Alice  Smith <sip:alice@192.0.2.1:65535>",
    "<sip:example.com>",
    "<sip:example.com.>;x",
    '<sip:alice@dee12855.invalid;transport=ws;ob>;reg-id=1;+sip.instance="<urn:uuid:ea2e7ade-0000-4000-8000-f41af516a1d8>";expires=600',
    '<sip:a@h>;q=0.5;+sip.instance="";reg-id=01',
    "<sip:cQ362nF-O8EMHHdzLThmN2U4MzU1LTE@127.0.0.1:40800;transport=udp;lr;ob>",
    "<sip:u&=+$,!~*'()@h-1.h_2>;a=b=c",
]
SLOW = [
    "sip:alice@example.com;tag=1",
    "tel:+15550001;tag=1",
    "<tel:+1-555-0001>",
    "<sip:al%41ice@example.com>",
    "<sip:alice@[2001:db8::1]:5060>",
    "<sip:alice:pw@example.com>",
    "<sip:alice@example.com?subject=x>",
    '"A \\"q\\"" <sip:a@b>',
    '<sip:a@b>;x="a\\"b"',
    "<urn:service:sos>",
    "<mailto:a@b>",
]
BAD = [
    "",
    "<sip:alice@example.com",
    "<sip:alice@exa mple.com>",
    "<sip:alice@example.com:99999>",
    "<sip:alice@example.com>;",
    "<sip:alice@example.com>;tag=",
    "<sip:alice@example.com>;tag=a b",
    "<sip:alice@example.com> junk",
    "<sip:@example.com>",
    "<sip:a@b;;x>",
    "<sip:a@b%zz>",
    'Alice "x" <sip:a@b>',
    '<sip:a@b>;x="unterminated',
    "<sip:a@-b>",
]


class AddressTests(unittest.TestCase):
    def assertSameAsFullParser(self, value: str) -> None:
        try:
            expected = parse_address("To", value)
        except HeaderError as error:
            with self.assertRaises(HeaderError) as raised:
                address_aor("To", value)
            self.assertEqual(str(raised.exception), str(error))
            return
        aor, user, host = address_aor("To", value)
        self.assertEqual(aor, aor_of(expected.uri), value)
        self.assertEqual(user, getattr(expected.uri, "user", None), value)
        self.assertEqual(host, getattr(expected.uri, "host", None), value)
        match = ADDRESS_RE.match(value)
        if match is not None:
            # what the fast path reads is the URI the full parser builds
            self.assertEqual(str(expected.uri), "{}:{}{}{}{}".format(
                match.group("scheme").lower(),
                f"{match.group('user')}@" if match.group("user") else "",
                match.group("host"),
                f":{int(match.group('port'))}" if match.group("port") else "",
                match.group("uri_params"),
            ), value)

    def test_fast_shapes_match_the_pattern(self) -> None:
        for value in FAST:
            self.assertIsNotNone(ADDRESS_RE.match(value), value)

    def test_other_shapes_do_not(self) -> None:
        for value in SLOW + BAD:
            self.assertIsNone(ADDRESS_RE.match(value), value)

    def test_same_result_as_the_full_parser(self) -> None:
        for value in FAST + SLOW + BAD:
            self.assertSameAsFullParser(value)

    def test_first_uri_has_param(self) -> None:
        texts = FAST + SLOW + BAD + ["<sip:a@b;lr;ob>, <sip:c@d>", "<sip:a@b;lr>, <sip:c@d;ob>", "<sip:a@b;OB=1>", " ", "<sip:a@b;ob>,"]
        for text in texts:
            try:
                first = parse_name_addr_list(text)[0].uri
            except UriError as error:
                with self.assertRaises(HeaderError) as raised:
                    first_uri_has_param("Path", text, "ob")
                self.assertEqual(str(raised.exception), f"Path: {error}")
                continue
            for name in ("ob", "lr", "transport", "OB"):
                expected = hasattr(first, "host") and name in first.params
                self.assertEqual(first_uri_has_param("Path", text, name), expected, (text, name))
        self.assertTrue(first_uri_has_param("Path", "<sip:a@b;lr;ob>", "ob"))
        self.assertFalse(first_uri_has_param("Path", "<sip:a@b;lr>;ob", "ob"))
