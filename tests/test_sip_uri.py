"""SIP/SIPS/tel URIs, comparison (RFC 3261 §19.1.4) and name-addr values (§20.10)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from epcscf.sip.uri import (
    AbsoluteUri,
    NameAddr,
    Params,
    SipUri,
    TelUri,
    UriError,
    parse_name_addr,
    parse_name_addr_list,
    parse_uri,
    uris_equal,
)


class SipUriParsingTests(SynchronousTestCase):
    def test_all_parts_are_read(self) -> None:
        uri = parse_uri("sips:alice:secret@atlanta.example.com:5061;transport=tcp;lr?subject=project&priority=urgent")
        self.assertIsInstance(uri, SipUri)
        assert isinstance(uri, SipUri)
        self.assertEqual(uri.scheme, "sips")
        self.assertEqual(uri.user, "alice")
        self.assertEqual(uri.password, "secret")
        self.assertEqual(uri.host, "atlanta.example.com")
        self.assertEqual(uri.port, 5061)
        self.assertEqual(list(uri.params.items()), [("transport", "tcp"), ("lr", None)])
        self.assertEqual(uri.headers["subject"], "project")
        self.assertEqual(uri.headers["priority"], "urgent")
        self.assertEqual(uri.transport, "tcp")

    def test_ipv6_reference_with_and_without_port(self) -> None:
        uri = parse_uri("sip:[2001:db8::10]:5070;transport=ws")
        assert isinstance(uri, SipUri)
        self.assertEqual(uri.host, "[2001:db8::10]")
        self.assertEqual(uri.host_without_brackets, "2001:db8::10")
        self.assertEqual(uri.port, 5070)
        uri = parse_uri("sip:bob@[2001:db8::10]")
        assert isinstance(uri, SipUri)
        self.assertIsNone(uri.port)
        self.assertEqual(str(uri), "sip:bob@[2001:db8::10]")

    def test_user_part_may_hold_semicolons_and_escaped_at(self) -> None:
        # RFC 4475 §3.1.1.9
        uri = parse_uri("sip:user;par=u%40example.net@example.com")
        assert isinstance(uri, SipUri)
        self.assertEqual(uri.user, "user;par=u%40example.net")
        self.assertEqual(uri.host, "example.com")
        self.assertEqual(len(uri.params), 0)

    def test_valueless_params_keep_order_and_case_insensitive_lookup(self) -> None:
        uri = parse_uri("sip:pcscf.example.net;LR;Transport=WS;ob")
        assert isinstance(uri, SipUri)
        self.assertIn("lr", uri.params)
        self.assertIsNone(uri.params["lr"])
        self.assertEqual(uri.params["transport"], "WS")
        self.assertEqual(uri.transport, "ws")
        self.assertEqual(list(uri.params), ["LR", "Transport", "ob"])

    def test_str_round_trips_and_keeps_escapes(self) -> None:
        for text in [
            "sip:%61lice@atlanta.com;transport=TCP",
            "sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31",
            "sips:[2001:db8::10]:5061;lr?Route=%3Csip:x%3E",
            "sip:null-%00-null@example.com",
            "tel:+1-201-555-0123;phone-context=example.com",
            "mailto:alice@example.com",
            "sip:host.example.com:5060",
        ]:
            self.assertEqual(str(parse_uri(text)), text)

    def test_tel_and_other_schemes(self) -> None:
        tel = parse_uri("tel:+358-555-1234567;postd=pp22")
        assert isinstance(tel, TelUri)
        self.assertEqual(tel.number, "+358-555-1234567")
        self.assertTrue(tel.is_global)
        self.assertEqual(tel.params["postd"], "pp22")
        other = parse_uri("nobodyKnowsThisScheme:totallyopaquecontent")
        self.assertEqual(other, AbsoluteUri("nobodyKnowsThisScheme", "totallyopaquecontent"))
        self.assertIsInstance(parse_uri("soap.beep://192.0.2.103:3002"), AbsoluteUri)

    def test_malformed_uris_raise_uri_error(self) -> None:
        for text in [
            "",
            "sip:user@example.com; lr",  # RFC 4475 §3.1.2.8 embedded LWS
            "<sip:user@example.com>",
            "sip:",
            "sip:user@",
            "sip:host:99999",
            "sip:host:abc",
            "sip:[2001:db8::10",
            "sip:ho st",
            "sip:user@host;;lr",
            "sip:us%zzer@host",
            "sip:host?noequals",
            "noscheme",
            "1sip:host",
            "tel:",
            "tel:+1 555",
        ]:
            with self.assertRaises(UriError, msg=text):
                parse_uri(text)


class UriComparisonTests(SynchronousTestCase):
    """RFC 3261 §19.1.4 examples."""

    def equal(self, a: str, b: str) -> bool:
        return uris_equal(parse_uri(a), parse_uri(b))

    def test_equivalent_uris(self) -> None:
        self.assertTrue(self.equal("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"))
        self.assertTrue(self.equal("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"))
        self.assertTrue(self.equal("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;newparam=5"))
        self.assertTrue(
            self.equal(
                "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
                "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
            )
        )
        self.assertTrue(
            self.equal(
                "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
                "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
            )
        )
        self.assertTrue(self.equal("tel:+1-201-555-0123", "tel:+1(201)5550123"))

    def test_different_uris(self) -> None:
        self.assertFalse(self.equal("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"))
        self.assertFalse(self.equal("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"))
        self.assertFalse(self.equal("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"))
        self.assertFalse(self.equal("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"))
        self.assertFalse(self.equal("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"))
        self.assertFalse(self.equal("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"))
        self.assertFalse(self.equal("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off"))
        self.assertFalse(self.equal("sip:alice@atlanta.com", "sips:alice@atlanta.com"))
        self.assertFalse(self.equal("sip:alice@atlanta.com", "tel:+15551234"))


class NameAddrTests(SynchronousTestCase):
    def test_quoted_display_name_with_escapes(self) -> None:
        value = parse_name_addr('"J Rosenberg \\\\\\""       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8'.replace("\r\n", ""))
        self.assertEqual(value.display_name, 'J Rosenberg \\"')
        self.assertTrue(value.quoted)
        self.assertEqual(value.tag, "98asjd8")
        self.assertEqual(str(value.uri), "sip:jdrosen@example.com")

    def test_token_display_name_without_space_before_angle(self) -> None:
        # RFC 4475 §3.1.1.6
        value = parse_name_addr("caller<sip:caller@example.com>;tag=323")
        self.assertEqual(value.display_name, "caller")
        self.assertEqual(value.tag, "323")

    def test_addr_spec_params_belong_to_the_header(self) -> None:
        # RFC 3261 §20.10, RFC 4475 §3.3.12
        value = parse_name_addr("sip:+19725552222@gw1.example.net;unknownparam")
        assert isinstance(value.uri, SipUri)
        self.assertEqual(len(value.uri.params), 0)
        self.assertIn("unknownparam", value.params)
        enclosed = parse_name_addr("<sip:+19725552222@gw1.example.net;unknownparam>")
        assert isinstance(enclosed.uri, SipUri)
        self.assertIn("unknownparam", enclosed.uri.params)
        self.assertEqual(len(enclosed.params), 0)

    def test_addr_spec_with_headers_must_be_enclosed(self) -> None:
        # RFC 4475 §3.1.2.13
        with self.assertRaises(UriError):
            parse_name_addr("sip:user@example.com?Route=%3Csip:sip.example.com%3E")
        value = parse_name_addr("<sip:user@example.com?Route=%3Csip:sip.example.com%3E>")
        assert isinstance(value.uri, SipUri)
        self.assertEqual(value.uri.headers["Route"], "%3Csip:sip.example.com%3E")

    def test_malformed_name_addrs(self) -> None:
        for text in [
            '"Mr. J. User <sip:j.user@example.com>',  # RFC 4475 §3.1.2.6
            "Bell, Alexander <sip:a.g.bell@example.com>;tag=43",  # §3.1.2.15
            '"Watson, Thomas" < sip:t.watson@example.org >',  # §3.1.2.14
            "<sip:user@example.com",
            '"quoted" sip:user@example.com',
            "<sip:a@b>;tag=",
            "<sip:a@b> junk",
            "",
        ]:
            with self.assertRaises(UriError, msg=text):
                parse_name_addr(text)

    def test_list_split_respects_quotes_and_angle_brackets(self) -> None:
        values = parse_name_addr_list(
            '<sip:a@example.com;lr>, "Doe, John" <sip:b,c@example.com>;q=0.5 ,sip:c@example.com;expires=30'
        )
        self.assertEqual(len(values), 3)
        self.assertEqual(values[1].display_name, "Doe, John")
        self.assertEqual(values[1].params["q"], "0.5")
        self.assertEqual(values[2].params["expires"], "30")

    def test_str_uses_angle_brackets_and_quotes_when_needed(self) -> None:
        value = NameAddr(parse_uri("sip:a@b"), "Doe, John", Params([("tag", "x")]))
        self.assertEqual(str(value), '"Doe, John" <sip:a@b>;tag=x')
        self.assertEqual(str(parse_name_addr("sip:a@b;tag=1")), "<sip:a@b>;tag=1")
        self.assertEqual(str(parse_name_addr('Alice <sip:a@b>')), "Alice <sip:a@b>")
