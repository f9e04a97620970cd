"""Dialog tracking for releasing a call from the middle (RFC 3261 §12, RFC 3326 Reason)."""

from __future__ import annotations

from twisted.trial import unittest

from epcscf.pcscf.dialogs import Dialog, DialogError, Side
from epcscf.sip.message import Headers, Request, Response

OURS = {"sip:192.0.2.10:5060;transport=udp;lr", "sip:tok@192.0.2.11:443;transport=wss;lr", "sip:tok2@192.0.2.11:443;transport=wss;lr"}


def is_own(uri: str) -> bool:
    return uri in OURS


def invite(caller_is_wic: bool) -> Request:
    request = Request("INVITE", "sip:bob@example.com")
    request.headers = Headers.from_pairs([
        ("Via", "SIP/2.0/WSS a.invalid;branch=z9hG4bK1"),
        ("From", '"Alice" <sip:alice@example.com>;tag=a1'),
        ("To", "<sip:bob@example.com>"),
        ("Call-ID", "c1"),
        ("CSeq", "41 INVITE"),
        ("Contact", "<sip:alice@a.invalid;transport=ws;ob>" if caller_is_wic else "<sip:carol@198.51.100.7:5060>"),
    ])
    return request


def ok(record_route: list[str]) -> Response:
    response = Response(200, "OK")
    response.headers = Headers.from_pairs([
        ("From", '"Alice" <sip:alice@example.com>;tag=a1'),
        ("To", "<sip:bob@example.com>;tag=b1"),
        ("Call-ID", "c1"),
        ("CSeq", "41 INVITE"),
        ("Contact", "<sip:bob@198.51.100.20:5070>"),
        ("Record-Route", ", ".join(record_route)),
    ])
    return response


class DialogTests(unittest.TestCase):
    def test_originating_route_sets_split_at_our_two_entries(self) -> None:
        dialog = Dialog.from_invite(invite(True), Side.WIC)
        dialog.confirm(ok([
            "<sip:pcscf-b.example.net;lr>",  # nearest the callee
            "<sip:scscf.example.com;lr>",  # nearest us on the core side
            "<sip:192.0.2.10:5060;transport=udp;lr>",
            "<sip:tok@192.0.2.11:443;transport=wss;lr>",
        ]), is_own)
        self.assertEqual(dialog.core.route, ["<sip:scscf.example.com;lr>", "<sip:pcscf-b.example.net;lr>"])
        self.assertEqual(dialog.wic.route, [])
        bye = dialog.build_bye(Side.CORE, 'SIP;cause=480;text="WebSocket closed"', "UDP", "192.0.2.10:5060")
        self.assertEqual(bye.uri, "sip:bob@198.51.100.20:5070")
        self.assertEqual(bye.headers.get_all("Route"), ["<sip:scscf.example.com;lr>", "<sip:pcscf-b.example.net;lr>"])
        self.assertEqual(bye.headers.get("From"), '"Alice" <sip:alice@example.com>;tag=a1')
        self.assertEqual(bye.headers.get("To"), "<sip:bob@example.com>;tag=b1")
        self.assertEqual(bye.headers.get("CSeq"), "42 BYE")  # one above the WIC's highest
        self.assertEqual(bye.headers.get("Max-Forwards"), "70")
        self.assertRegex(bye.headers.get("Via"), r"^SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-epc-bye\.[0-9a-f]{16}$")

    def test_terminating_route_toward_the_caller_is_below_our_entries(self) -> None:
        dialog = Dialog.from_invite(invite(False), Side.CORE)
        dialog.confirm(ok([
            "<sip:tok@192.0.2.11:443;transport=wss;lr>",
            "<sip:192.0.2.10:5060;transport=udp;lr>",
            "<sip:scscf.example.com;lr>",
            "<sip:icscf.example.com;lr>",
        ]), is_own)
        self.assertEqual(dialog.core.route, ["<sip:scscf.example.com;lr>", "<sip:icscf.example.com;lr>"])
        bye = dialog.build_bye(Side.CORE, "SIP;cause=480", "UDP", "192.0.2.10:5060")
        self.assertEqual(bye.uri, "sip:carol@198.51.100.7:5060")
        self.assertEqual(bye.headers.get("From"), "<sip:bob@example.com>;tag=b1")  # sent as the WIC (callee)
        self.assertEqual(bye.headers.get("CSeq"), "1 BYE")  # the callee sent nothing yet

    def test_cseq_follows_in_dialog_requests_and_target_refresh(self) -> None:
        dialog = Dialog.from_invite(invite(True), Side.WIC)
        dialog.confirm(ok(["<sip:192.0.2.10:5060;transport=udp;lr>", "<sip:tok@192.0.2.11:443;transport=wss;lr>"]), is_own)
        reinvite = Request("INVITE", "sip:bob@198.51.100.20:5070")
        reinvite.headers = Headers.from_pairs([("CSeq", "50 INVITE"), ("Contact", "<sip:bob@198.51.100.99>")])
        dialog.request_seen(reinvite, Side.CORE)
        self.assertEqual(dialog.core.target, "sip:bob@198.51.100.99")
        bye = dialog.build_bye(Side.WIC, "SIP;cause=200", "WSS", "192.0.2.11:443")
        self.assertEqual(bye.headers.get("CSeq"), "51 BYE")
        self.assertEqual(bye.uri, "sip:alice@a.invalid;transport=ws;ob")
        self.assertIsNone(bye.headers.get("Route"))

    def test_strict_first_hop_gets_the_request_uri_swap(self) -> None:
        dialog = Dialog.from_invite(invite(True), Side.WIC)
        dialog.confirm(ok(["<sip:strict.example.com>", "<sip:192.0.2.10:5060;transport=udp;lr>",
                           "<sip:tok@192.0.2.11:443;transport=wss;lr>"]), is_own)
        bye = dialog.build_bye(Side.CORE, "SIP;cause=480", "UDP", "192.0.2.10:5060")
        # RFC 3261 §12.2.1.1: the strict router becomes the R-URI, the remote target the last Route.
        self.assertEqual(bye.uri, "sip:strict.example.com")
        self.assertEqual(bye.headers.get_all("Route"), ["<sip:bob@198.51.100.20:5070>"])

    def test_ack_for_a_2xx_nobody_else_can_acknowledge(self) -> None:
        dialog = Dialog.from_invite(invite(True), Side.WIC)
        dialog.confirm(ok(["<sip:192.0.2.10:5060;transport=udp;lr>", "<sip:tok@192.0.2.11:443;transport=wss;lr>"]), is_own)
        ack = dialog.build_ack(Side.CORE, "UDP", "192.0.2.10:5060")
        self.assertEqual((ack.method, ack.headers.get("CSeq")), ("ACK", "41 ACK"))

    def test_other_forks_do_not_match_a_confirmed_dialog(self) -> None:
        dialog = Dialog.from_invite(invite(True), Side.WIC)
        self.assertTrue(dialog.matches(ok([])))  # early: everything of this Call-ID
        dialog.confirm(ok(["<sip:192.0.2.10:5060;transport=udp;lr>"]), is_own)
        other = ok([])
        other.headers.set("To", "<sip:bob@example.com>;tag=fork2")
        self.assertFalse(dialog.matches(other))
        self.assertTrue(dialog.matches(ok([])))

    def test_no_remote_target_is_a_clear_error(self) -> None:
        request = invite(True)
        request.headers.remove("Contact")
        dialog = Dialog.from_invite(request, Side.WIC)
        with self.assertRaisesRegex(DialogError, "no remote target known for the wic side"):
            dialog.build_bye(Side.WIC, "SIP;cause=480", "WSS", "192.0.2.11:443")


class SubsequentRouteTests(unittest.TestCase):
    """TS 24.229 §5.2.6.3: a subsequent request from the WIC must keep the saved route set."""

    def request(self, uri: str, routes: list[str]) -> Request:
        request = Request("BYE", uri)
        request.headers = Headers.from_pairs([("Route", value) for value in routes])
        return request

    def test_route_behind_our_entries_must_be_the_saved_one(self) -> None:
        dialog = Dialog.from_invite(invite(True), Side.WIC)
        dialog.confirm(ok(["<sip:scscf.example.com;lr>", "<sip:192.0.2.10:5060;transport=udp;lr>",
                           "<sip:tok@192.0.2.11:443;transport=wss;lr>"]), is_own)
        saved = ["<sip:scscf.example.com;lr>"]
        self.assertTrue(dialog.wic_route_matches(self.request("sip:bob@198.51.100.20:5070", saved)))
        self.assertTrue(dialog.wic_route_matches(self.request("sip:anything@elsewhere.example", saved)))  # the S-CSCF routes it
        self.assertFalse(dialog.wic_route_matches(self.request("sip:bob@198.51.100.20:5070", ["<sip:victim.example;lr>"])))
        self.assertFalse(dialog.wic_route_matches(self.request("sip:bob@198.51.100.20:5070", saved + ["<sip:victim.example;lr>"])))
        self.assertFalse(dialog.wic_route_matches(self.request("sip:bob@198.51.100.20:5070", [])))

    def test_without_a_core_route_set_the_request_uri_must_be_the_remote_target(self) -> None:
        dialog = Dialog.from_invite(invite(True), Side.WIC)
        dialog.confirm(ok(["<sip:192.0.2.10:5060;transport=udp;lr>", "<sip:tok@192.0.2.11:443;transport=wss;lr>"]), is_own)
        self.assertTrue(dialog.wic_route_matches(self.request("sip:bob@198.51.100.20:5070", [])))
        self.assertTrue(dialog.wic_route_matches(self.request("sip:bob@198.51.100.20:5070;foo=bar", [])))
        self.assertFalse(dialog.wic_route_matches(self.request("sip:bob@198.51.100.21:5070", [])))
        self.assertFalse(dialog.wic_route_matches(self.request("sip:bob@victim.example", [])))
        self.assertFalse(dialog.wic_route_matches(self.request("sip:bob@198.51.100.20:5070;maddr=203.0.113.9", [])))
        self.assertFalse(dialog.wic_route_matches(self.request("sip:bob@198.51.100.20:5070", ["<sip:victim.example;lr>"])))
        # a target refresh from the core moves the remote target (RFC 3261 §12.2.2)
        reinvite = Request("INVITE", "sip:alice@a.invalid")
        reinvite.headers = Headers.from_pairs([("CSeq", "2 INVITE"), ("Contact", "<sip:bob@198.51.100.99>")])
        dialog.request_seen(reinvite, Side.CORE)
        self.assertTrue(dialog.wic_route_matches(self.request("sip:bob@198.51.100.99", [])))
        self.assertFalse(dialog.wic_route_matches(self.request("sip:bob@198.51.100.20:5070", [])))

    def test_the_callee_wic_keeps_the_record_route_order(self) -> None:
        dialog = Dialog.from_invite(invite(False), Side.CORE)
        dialog.confirm(ok(["<sip:tok@192.0.2.11:443;transport=wss;lr>", "<sip:192.0.2.10:5060;transport=udp;lr>",
                           "<sip:scscf.example.com;lr>", "<sip:icscf.example.com;lr>"]), is_own)
        route = ["<sip:scscf.example.com;lr>", "<sip:icscf.example.com;lr>"]
        self.assertTrue(dialog.wic_route_matches(self.request("sip:carol@198.51.100.7:5060", route)))
        self.assertFalse(dialog.wic_route_matches(self.request("sip:carol@198.51.100.7:5060", list(reversed(route)))))

    def test_both_parties_on_this_eP_CSCF_keep_the_other_flows_entries(self) -> None:
        """A WIC calling a WIC of the same eP-CSCF: the request spirals through the core and
        the Record-Route list holds our entries twice (one pair per flow)."""
        record_route = ["<sip:tok2@192.0.2.11:443;transport=wss;lr>", "<sip:192.0.2.10:5060;transport=udp;lr>",
                        "<sip:scscf.example.com;lr>",
                        "<sip:192.0.2.10:5060;transport=udp;lr>", "<sip:tok@192.0.2.11:443;transport=wss;lr>"]
        caller = Dialog.from_invite(invite(True), Side.WIC)
        caller.confirm(ok(record_route), is_own)
        behind = ["<sip:scscf.example.com;lr>", "<sip:192.0.2.10:5060;transport=udp;lr>", "<sip:tok2@192.0.2.11:443;transport=wss;lr>"]
        self.assertTrue(caller.wic_route_matches(self.request("sip:bob@198.51.100.20:5070", behind)))
        self.assertFalse(caller.wic_route_matches(self.request("sip:bob@198.51.100.20:5070", behind[:1])))
        callee = Dialog.from_invite(invite(False), Side.CORE)
        callee.confirm(ok(record_route), is_own)
        behind = ["<sip:scscf.example.com;lr>", "<sip:192.0.2.10:5060;transport=udp;lr>", "<sip:tok@192.0.2.11:443;transport=wss;lr>"]
        self.assertTrue(callee.wic_route_matches(self.request("sip:carol@198.51.100.7:5060", behind)))

    def test_an_early_dialog_has_no_saved_route_set_yet(self) -> None:
        dialog = Dialog.from_invite(invite(True), Side.WIC)
        self.assertTrue(dialog.wic_route_matches(self.request("sip:bob@198.51.100.20:5070", [])))


class TagReadingTests(unittest.SynchronousTestCase):
    """A dialog's tags are read through the SIP layer's memoised ``address_facts``: the same tag
    as a full parse of the From/To (the last tag counts), None exactly when it has none or the
    text is no name-addr/addr-spec."""

    TEXTS = [
        "<sip:alice@example.com>;tag=a73kszlfl", "\"Alice\" <sip:alice@example.com>;tag=1928301774",
        "Alice <sip:alice@example.com;transport=ws>;tag=x;tag=y", "sip:bob@example.com;tag=abc",
        "<sip:bob@example.com>;TAG=Up", "<sip:bob@example.com>", "<sip:bob@example.com>;tag=",
        "<sip:bob@example.com>;tag", "<sip:bob@example.com>;tag=\"q\"", "<tel:+15551234>;tag=t1",
        "  <sip:bob@example.com> ; tag = spaced ", "<sip:bob@example.com;tag=in-uri>", "",
        "not an address", "<sip:bob@example.com", "\"unterminated <sip:bob@example.com>;tag=z",
        "<sip:[::1]:5060>;tag=v6", "<sips:bob@example.com>;foo=bar;tag=last;x",
    ]

    def test_same_tag_as_a_full_parse(self) -> None:
        from epcscf.pcscf.dialogs import _tag_of
        from epcscf.sip.uri import UriError, parse_name_addr

        for text in self.TEXTS:
            try:
                expected = parse_name_addr(text).tag
            except UriError:
                expected = None
            self.assertEqual(_tag_of(text), expected, text)
