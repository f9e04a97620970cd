"""Typed header views: Via, CSeq, Max-Forwards, Content-Length, From/To tags."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from epcscf.sip.headers import (
    CSeq,
    HeaderError,
    all_vias,
    content_length,
    cseq,
    from_tag,
    max_forwards,
    option_tags,
    parse_cseq,
    parse_params,
    parse_via,
    parse_via_list,
    split_header_list,
    to_aor,
    to_tag,
    top_via,
    top_via_view,
)
from epcscf.sip.message import Headers, Request
from epcscf.sip.parser import parse_message


def request(*pairs: tuple[str, str]) -> Request:
    return Request("INVITE", "sip:bob@example.com", Headers.from_pairs(pairs))


class ViaTests(SynchronousTestCase):
    def test_fields_and_params(self) -> None:
        via = parse_via("SIP/2.0/UDP pc33.atlanta.com:5066;branch=z9hG4bK776asdhds;received=192.0.2.1;rport=5070;maddr=224.2.0.1;ttl=16")
        self.assertEqual(via.protocol, "SIP/2.0")
        self.assertEqual(via.transport, "UDP")
        self.assertEqual(via.host, "pc33.atlanta.com")
        self.assertEqual(via.port, 5066)
        self.assertEqual(via.branch, "z9hG4bK776asdhds")
        self.assertEqual(via.received, "192.0.2.1")
        self.assertEqual(via.rport, 5070)
        self.assertEqual(via.params["maddr"], "224.2.0.1")
        self.assertEqual(via.params["ttl"], "16")
        self.assertEqual(via.sent_by, "pc33.atlanta.com:5066")

    def test_valueless_rport_and_websocket_transport(self) -> None:
        # RFC 3581 §3 / RFC 7118 §5.2
        via = parse_via("SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bKasudf;rport")
        self.assertEqual(via.transport, "WSS")
        self.assertIsNone(via.port)
        self.assertIn("rport", via.params)
        self.assertIsNone(via.params["rport"])
        self.assertIsNone(via.rport)

    def test_lws_around_slashes_and_params(self) -> None:
        # RFC 4475 §3.1.1.1 (after unfolding)
        vias = parse_via_list(
            "SIP  / 2.0  / TCP     spindle.example.com   ; branch  =   z9hG4bK9ikj8  , "
            "SIP  /    2.0   / UDP  192.168.255.111   ; branch= z9hG4bK30239"
        )
        self.assertEqual([(v.transport, v.host, v.branch) for v in vias], [
            ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
            ("UDP", "192.168.255.111", "z9hG4bK30239"),
        ])

    def test_ipv6_sent_by(self) -> None:
        via = parse_via("SIP/2.0/TLS [2001:db8::9]:5061;branch=z9hG4bK1")
        self.assertEqual((via.host, via.port), ("[2001:db8::9]", 5061))

    def test_str(self) -> None:
        via = parse_via("SIP/2.0/udp host.example.com:5060;branch=z9hG4bK1;rport")
        self.assertEqual(str(via), "SIP/2.0/UDP host.example.com:5060;branch=z9hG4bK1;rport")
        via.params["received"] = "192.0.2.7"
        via.params["rport"] = "6000"
        self.assertEqual(str(via), "SIP/2.0/UDP host.example.com:5060;branch=z9hG4bK1;rport=6000;received=192.0.2.7")

    def test_malformed_vias_raise_header_error(self) -> None:
        for value in [
            "SIP/2.0/UDP 192.0.2.15;;,;,,",  # RFC 4475 §3.1.2.1
            "SIP/2.0 host.example.com",
            "SIP/2.0/UDP",
            "SIP/2.0/UDP host:99999",
            "SIP/2.0/UDP host;ttl=300",
            "SIP/2.0/UDP host;branch=",
            "",
        ]:
            with self.assertRaises(HeaderError, msg=value) as caught:
                parse_via_list(value)
            self.assertEqual(caught.exception.header, "Via")

    def test_top_via_and_all_vias(self) -> None:
        message = request(
            ("Via", "SIP/2.0/WS a.invalid;branch=z9hG4bK1, SIP/2.0/UDP b.example.com;branch=z9hG4bK2"),
            ("v", "SIP/2.0/TCP c.example.com;branch=z9hG4bK3"),
        )
        top = top_via(message)
        assert top is not None
        self.assertEqual(top.host, "a.invalid")
        self.assertEqual([v.host for v in all_vias(message)], ["a.invalid", "b.example.com", "c.example.com"])
        self.assertIsNone(top_via(request()))


class ScalarHeaderTests(SynchronousTestCase):
    def test_cseq(self) -> None:
        self.assertEqual(parse_cseq("0009 INVITE"), CSeq(9, "INVITE"))
        self.assertEqual(str(parse_cseq("4711   REGISTER")), "4711 REGISTER")
        self.assertEqual(cseq(request(("CSeq", "1 INVITE"))), CSeq(1, "INVITE"))
        self.assertIsNone(cseq(request()))
        for value in ["INVITE", "1", "x INVITE", "-1 INVITE", "36893488147419103232 REGISTER", "1 IN VITE", "1 <INVITE>"]:
            with self.assertRaises(HeaderError, msg=value):
                parse_cseq(value)

    def test_max_forwards(self) -> None:
        self.assertEqual(max_forwards(request(("Max-Forwards", "0068"))), 68)
        self.assertIsNone(max_forwards(request()))
        for value in ["300", "-1", "seventy", ""]:
            with self.assertRaises(HeaderError, msg=value):
                max_forwards(request(("Max-Forwards", value)))

    def test_content_length(self) -> None:
        self.assertEqual(content_length(request(("l", " 150 "))), 150)
        self.assertIsNone(content_length(request()))
        for value in ["-999", "five", "1.5"]:
            with self.assertRaises(HeaderError, msg=value):
                content_length(request(("Content-Length", value)))

    def test_tags(self) -> None:
        message = request(
            ("f", '"Alice" <sip:alice@atlanta.example.com>;tag=1928301774'),
            ("To", "sip:bob@biloxi.example.com ;   tag    = 1918181833n"),
        )
        self.assertEqual(from_tag(message), "1928301774")
        self.assertEqual(to_tag(message), "1918181833n")
        self.assertIsNone(to_tag(request(("To", "<sip:bob@biloxi.example.com>"))))
        with self.assertRaises(HeaderError) as caught:
            from_tag(request(("From", '"unterminated <sip:a@b>')))
        self.assertEqual(caught.exception.header, "From")


class ListHelperTests(SynchronousTestCase):
    def test_split_header_list(self) -> None:
        self.assertEqual(
            split_header_list('a, "b, c" <sip:x@y>;p=1 , <sip:u,v@w>,,'),
            ["a", '"b, c" <sip:x@y>;p=1', "<sip:u,v@w>"],
        )
        self.assertEqual(split_header_list("  "), [])

    def test_parse_params(self) -> None:
        params = parse_params(' ; q = 0.33 ; secondparam ; reason="a;b"', "Contact")
        self.assertEqual(params["q"], "0.33")
        self.assertIsNone(params["secondparam"])
        self.assertEqual(params["reason"], '"a;b"')
        with self.assertRaises(HeaderError):
            parse_params(";;", "Contact")

    def test_option_tags(self) -> None:
        message = request(("Proxy-Require", "sec-agree, foo"), ("Proxy-Require", "bar"))
        self.assertEqual(option_tags(message, "proxy-require"), ["sec-agree", "foo", "bar"])


class OncePerMessageViewTests(SynchronousTestCase):
    """Views that several layers ask for per message are worked out once and follow edits."""

    def test_to_aor_once_per_message_and_follows_a_new_to(self) -> None:
        message = request(("To", '"Alice" <sip:alice@example.com;user=phone>;tag=x1'))
        first = to_aor(message)
        self.assertEqual(first, "sip:alice@example.com;user=phone")
        self.assertIs(to_aor(message), first)  # kept on the message, not worked out again
        message.headers.set("To", "<sip:bob@example.com>")
        self.assertEqual(to_aor(message), "sip:bob@example.com")
        self.assertIsNone(to_aor(request(("From", "<sip:a@b>"))))
        with self.assertRaises(HeaderError):
            to_aor(request(("To", "<sip:alice@example.com")))

    def test_parser_leaves_the_top_via_view(self) -> None:
        data = (
            b"OPTIONS sip:bob@example.com SIP/2.0\r\n"
            b"Via: SIP/2.0/WSS abc.invalid;branch=z9hG4bKv1;rport\r\n"
            b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKv0\r\n"
            b"From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\n"
            b"Call-ID: c1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        message = parse_message(data)
        line = message.headers.get("via")
        kept = message.headers._views.get(("top-via", line))
        self.assertIsNotNone(kept)
        view = top_via_view(message)
        self.assertIs(view, kept)
        assert view is not None
        self.assertEqual((view.transport, view.host, view.branch), ("WSS", "abc.invalid", "z9hG4bKv1"))
        # The view is the message's own copy: the parse memo's object is not handed out.
        self.assertIsNot(view, parse_message(data).headers._views[("top-via", line)])

    def test_a_via_line_is_memoised_from_its_second_reading_and_every_view_is_its_own(self) -> None:
        import sys

        from epcscf.sip import params

        params.clear_memos()
        line = "".join(["SIP/2.0/WSS once.invalid;branch=z9hG4bK", "once1;rport"])  # an object of our own
        request = Request("OPTIONS", "sip:bob@example.com", Headers([("Via", line)]))
        request.headers.get("via")  # the header index holds the line too
        alone = sys.getrefcount(line)
        first = top_via(request)
        # Read once (an edge in front of an external core reads every Via line once): not kept.
        self.assertEqual(sys.getrefcount(line), alone)
        second = top_via(request)
        self.assertGreater(sys.getrefcount(line), alone)  # read again (the embedded core): memoised
        third = top_via(request)
        for via in (first, second, third):
            assert via is not None
            self.assertEqual((via.transport, via.host, via.branch, "rport" in via.params),
                             ("WSS", "once.invalid", "z9hG4bKonce1", True))
        assert first is not None and second is not None and third is not None
        first.params["received"] = "192.0.2.9"  # a view changed by mistake spoils no other
        second.params["received"] = "192.0.2.8"
        self.assertNotIn("received", third.params)
        params.clear_memos()  # forgets the memo's parse, and that the line was read
        self.assertEqual(sys.getrefcount(line), alone)
        top_via(request)
        self.assertEqual(sys.getrefcount(line), alone)  # a first reading again
