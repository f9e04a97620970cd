"""RFC 4475 torture messages: §3.1.1 (valid), §3.1.2 (invalid), §3.2.1 and §3.3.

The fixtures in ``tests/fixtures/rfc4475`` are the RFC's messages with its §2 markup
expanded (see ``build_fixtures.py`` there).  Valid messages must parse to the values the
RFC describes; invalid ones must raise ``SipParseError`` with the status and a reason
naming the problem, and get a response only when one can be routed back.  §3.3
messages parse (or are rejected where the RFC calls them malformed) and
``validate_request`` gives the status RFC 3261 §16.3 asks a proxy for.
"""

from __future__ import annotations

import pathlib
import random

from twisted.trial.unittest import SynchronousTestCase

from epcscf.sip.headers import all_vias, cseq, from_address, max_forwards, parse_address, to_address, top_via
from epcscf.sip.message import Request, Response
from epcscf.sip.parser import MessageFramed, SipParseError, StreamFramer, error_response_for, parse_message
from epcscf.sip.uri import SipUri, parse_name_addr_list, parse_uri, uris_equal
from epcscf.sip.validate import AnswerOptionsLocally, validate_request

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "rfc4475"

VALID = [
    "wsinv", "intmeth", "esc01", "escnull", "esc02", "lwsdisp", "longreq", "dblreq", "semiuri",
    "transports", "mpart01", "unreason", "noreason",
]  # fmt: skip

# §3.1.2: name -> (status, words the reason must contain, whether a response can be sent back)
INVALID: dict[str, tuple[int, str, bool]] = {
    "badinv01": (400, "malformed Via", False),  # 3.1.2.1: the Via itself is broken: nowhere to answer
    "clerr": (400, "body shorter than Content-Length", True),  # 3.1.2.2
    "ncl": (400, "Content-Length is not a non-negative number", True),  # 3.1.2.3
    "scalar02": (400, "malformed CSeq", True),  # 3.1.2.4
    "scalarlg": (400, "malformed CSeq", False),  # 3.1.2.5: a response: discarded
    "quotbal": (400, "malformed To", True),  # 3.1.2.6
    "ltgtruri": (400, "Request-URI enclosed in angle brackets", True),  # 3.1.2.7
    "lwsruri": (400, "malformed Request-Line", True),  # 3.1.2.8
    "lwsstart": (400, "malformed Request-Line", True),  # 3.1.2.9 (rejecting is acceptable)
    "trws": (400, "malformed Request-Line", True),  # 3.1.2.10 (rejecting is acceptable)
    "escruri": (400, "Request-URI must not contain headers", True),  # 3.1.2.11
    "regbadct": (400, "malformed Contact", True),  # 3.1.2.13
    "badaspec": (400, "malformed To", True),  # 3.1.2.14
    "baddn": (400, "malformed From", True),  # 3.1.2.15
    "badvers": (505, "Version Not Supported", True),  # 3.1.2.16
    "mismatch01": (400, "CSeq method does not match", True),  # 3.1.2.17
    "mismatch02": (400, "CSeq method does not match", True),  # 3.1.2.18 (400 acceptable, 501 preferred)
    "bigcode": (400, "malformed Status-Code", False),  # 3.1.2.19: a response: dropped
}

# §3.1.2.12 baddate: "an element shouldn't [reject] unless the contents of the Date header
# field were actually important to its processing" - a proxy does not read Date.
ACCEPTED_INVALID = ["baddate"]

# §3.3 (and §3.2.1): what a proxy must do.  "parse:<status>" = the parser rejects it;
# a number = validate_request answers with it; None = forwarded; "options" = Max-Forwards 0
# on OPTIONS, which the proxy may answer itself (RFC 3261 §16.3 step 3).
PROXY_OUTCOME: dict[str, object] = {
    "badbranch": None,  # 3.2.1: parses; transaction layer decides (RFC 2543 fallback or 400)
    "insuf": "parse:400",  # 3.3.1: no Call-ID/From/To: 400, but no response can be built -> dropped
    "unkscm": 416,  # 3.3.2
    "novelsc": 416,  # 3.3.3
    "unksm2": None,  # 3.3.4: a proxy forwards; only a registrar answers 400
    "bext01": 420,  # 3.3.5
    "invut": None,  # 3.3.6: a proxy forwards; the UAS answers 415
    "regaut01": None,  # 3.3.7
    "multi01": "parse:400",  # 3.3.8
    "mcl01": "parse:400",  # 3.3.9
    "bcast": "response",  # 3.3.10: parses; a proxy drops it (not forwarded to 255.255.255.255)
    "zeromf": "options",  # 3.3.11: 483 (or answered locally, being OPTIONS)
    "cparam01": None,  # 3.3.12
    "cparam02": None,  # 3.3.13
    "regescrt": None,  # 3.3.14
    "sdp01": None,  # 3.3.15: the UAS answers 406/400, a proxy forwards
}


def load(name: str) -> bytes:
    return (FIXTURES / f"{name}.dat").read_bytes()


def parse_ok(name: str) -> Request | Response:
    return parse_message(load(name))


class FixtureTests(SynchronousTestCase):
    def test_every_fixture_is_covered_and_crlf_terminated(self) -> None:
        names = {path.stem for path in FIXTURES.glob("*.dat")}
        expected = set(VALID) | set(INVALID) | set(ACCEPTED_INVALID) | set(PROXY_OUTCOME)
        self.assertEqual(names, expected)
        self.assertEqual(len(names), 13 + 19 + 1 + 15)
        for name in names:
            data = load(name)
            head = data[: data.index(b"\r\n\r\n")]
            self.assertEqual(head.count(b"\n"), head.count(b"\r\n"), name)  # every line ends in CRLF

    def test_every_message_frames_on_a_stream_in_small_reads(self) -> None:
        # The same octets over TCP: valid ones are framed, none breaks the framer.
        for name in VALID:
            if name == "dblreq":
                continue  # its trailing INVITE is datagram noise; on a stream it is a second message
            framer = StreamFramer()
            data = load(name)
            events = []
            for index in range(0, len(data), 13):
                events.extend(framer.feed(data[index : index + 13]))
            self.assertEqual([type(event) for event in events], [MessageFramed], name)

    def test_mutated_torture_messages_only_raise_sip_parse_error(self) -> None:
        rng = random.Random(3261)
        corpus = [load(path.stem) for path in sorted(FIXTURES.glob("*.dat"))]
        for _ in range(2000):
            data = bytearray(rng.choice(corpus))
            for _ in range(rng.randint(1, 4)):
                position = rng.randrange(len(data))
                if rng.random() < 0.5:
                    data[position] = rng.choice(b' \t\r\n:;,<>"@\\%\x00\xff/=')
                else:
                    del data[position : position + rng.randint(1, 15)]
            try:
                parse_message(bytes(data))
            except SipParseError as error:
                self.assertNotIn("unparseable message", error.reason)
                error_response_for(error)


class ValidMessageTests(SynchronousTestCase):
    """§3.1.1: every one parses; the values are those the RFC describes."""

    def test_all_valid_messages_round_trip(self) -> None:
        for name in VALID:
            first = parse_ok(name)
            second = parse_message(first.serialize())
            self.assertEqual(second.start_line(), first.start_line(), name)
            self.assertEqual(list(second.headers), list(first.headers), name)
            self.assertEqual(second.body, first.body, name)

    def test_wsinv_short_tortuous_invite(self) -> None:
        message = parse_ok("wsinv")
        assert isinstance(message, Request)
        uri = parse_uri(message.uri)
        assert isinstance(uri, SipUri)
        self.assertIn("unknownparam", uri.params)
        self.assertIsNone(uri.params["unknownparam"])
        to = to_address(message)
        assert to is not None
        self.assertIsNone(to.display_name)
        self.assertEqual(str(to.uri), "sip:vivekg@chair-dnrc.example.com")
        self.assertEqual(to.tag, "1918181833n")
        sender = from_address(message)
        assert sender is not None
        self.assertEqual(sender.display_name, 'J Rosenberg \\"')
        self.assertEqual(sender.tag, "98asjd8")
        self.assertEqual(max_forwards(message), 68)
        self.assertEqual((cseq(message).number, cseq(message).method), (9, "INVITE"))  # type: ignore[union-attr]
        self.assertEqual(message.headers.get("subject"), "")
        self.assertEqual(message.headers.get("NewFangledHeader"), "newfangled value continued newfangled value")
        self.assertEqual(message.headers.get("UnknownHeaderWithUnusualValue"), ";;,,;;,;")
        self.assertEqual(message.headers.get("content-length"), "150")
        self.assertEqual(len(message.body), 150)
        self.assertEqual(
            [(via.transport, via.host, via.branch) for via in all_vias(message)],
            [("UDP", "192.0.2.2", "390skdjuw"), ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
             ("UDP", "192.168.255.111", "z9hG4bK30239")],
        )  # fmt: skip
        [route] = parse_name_addr_list(message.headers.get("route") or "")
        assert isinstance(route.uri, SipUri)
        self.assertEqual(dict(route.uri.params), {"lr": None, "unknownwith": "value", "unknown-no-value": None})
        [contact] = parse_name_addr_list(message.headers.get("contact") or "")
        self.assertEqual(contact.display_name, 'Quoted string ""')
        self.assertEqual(dict(contact.params), {"newparam": "newvalue", "secondparam": None, "q": "0.33"})

    def test_intmeth_wide_range_of_valid_characters(self) -> None:
        message = parse_ok("intmeth")
        assert isinstance(message, Request)
        self.assertEqual(message.method, "!interesting-Method0123456789_*+`.%indeed'~")
        uri = parse_uri(message.uri)
        assert isinstance(uri, SipUri)
        self.assertEqual(uri.user, "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*")
        self.assertEqual(uri.password, "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)")
        self.assertEqual(uri.host, "example.com")
        self.assertEqual(top_via(message).branch, "z9hG4bK-.!%66*_+`'~")  # type: ignore[union-attr]
        to = to_address(message)
        assert to is not None
        self.assertEqual(to.display_name, "BEL:\x07 NUL:\x00 DEL:\x7f")
        assert isinstance(to.uri, SipUri)
        self.assertEqual((to.uri.user, to.uri.password, to.uri.host), (uri.user, None, "example.com"))
        sender = from_address(message)
        assert sender is not None
        self.assertEqual(sender.display_name, "token1~` token2'+_ token3*%!.-")
        self.assertEqual(sender.tag, "_token~1'+`*%!-.")
        self.assertEqual(sender.params["fromParam''~+*_!.-%"], '"работающий"')
        self.assertEqual(message.call_id, "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{")
        self.assertEqual(message.headers.get("extensionHeader-!.%*+_`'~"), "\ufeff大停電")

    def test_esc01_escapes_decode_once(self) -> None:
        message = parse_ok("esc01")
        assert isinstance(message, Request)
        uri = parse_uri(message.uri)
        assert isinstance(uri, SipUri)
        self.assertEqual(uri.user_decoded, "sips:user@example.com")
        self.assertTrue(uris_equal(to_address(message).uri, parse_uri("sip:user@example.com")))  # type: ignore[union-attr]
        self.assertEqual(from_address(message).uri.user_decoded, "I have spaces")  # type: ignore[union-attr]
        contact = parse_address("Contact", message.headers.get("contact") or "")
        assert isinstance(contact.uri, SipUri)
        self.assertEqual(contact.uri.user_decoded, "caller")
        self.assertEqual(contact.uri.params["n%61me"], "v%61lue%25%34%31")
        self.assertTrue(uris_equal(contact.uri, parse_uri("sip:caller@host5.example.net;n%61me=value%2541")))
        self.assertFalse(uris_equal(contact.uri, parse_uri("sip:caller@host5.example.net;n%61me=valueA")))

    def test_escnull_keeps_escaped_nulls_apart(self) -> None:
        message = parse_ok("escnull")
        users = [parse_address("Contact", value).uri.user_decoded for value in message.headers.get_all("contact")]  # type: ignore[union-attr]
        self.assertEqual(users, ["\x00", "\x00\x00"])
        self.assertEqual(to_address(message).uri.user_decoded, "null-\x00-null")  # type: ignore[union-attr]

    def test_esc02_percent_is_not_an_escape_outside_uris(self) -> None:
        message = parse_ok("esc02")
        assert isinstance(message, Request)
        self.assertEqual(message.method, "RE%47IST%45R")
        self.assertEqual(to_address(message).display_name, "%Z%45")  # type: ignore[union-attr]
        self.assertEqual(len(message.headers.get_all("contact")), 2)
        self.assertEqual(message.headers.get("C%6Fntact"), "<sip:alias2@host2.example.com>")
        self.assertEqual(top_via(message).branch, "z9hG4bK209%fzsnel234")  # type: ignore[union-attr]

    def test_lwsdisp_no_space_before_angle_bracket(self) -> None:
        sender = from_address(parse_ok("lwsdisp"))
        assert sender is not None
        self.assertEqual((sender.display_name, sender.tag), ("caller", "323"))

    def test_longreq_long_values(self) -> None:
        message = parse_ok("longreq")
        to = to_address(message)
        assert to is not None and isinstance(to.uri, SipUri)
        self.assertEqual(to.display_name, "I have a user name of " + "extreme" * 10 + " proportion")
        self.assertEqual(to.uri.port, 6000)
        self.assertEqual(to.uri.params["unknownparam1"], "very" + "long" * 20 + "value")
        self.assertIsNone(to.uri.params["very" + "long" * 25 + "ParameterNameWithNoValue"])
        sender = from_address(message)
        assert sender is not None
        self.assertEqual(sender.tag, "12" + "982" * 50 + "424")
        self.assertEqual(sender.params["unknownheaderparam" + "name" * 20], "unknowheaderparam" + "value" * 15)
        vias = all_vias(message)
        self.assertEqual(len(vias), 34)
        self.assertEqual(vias[0].host, "sip33.example.com")
        self.assertEqual(vias[-1].branch, "very" + "long" * 50 + "branchvalue")
        self.assertEqual(vias[-1].received, "192.0.2.5")
        self.assertEqual(message.call_id, "longreq.one" + "really" * 20 + "longcallid")
        self.assertEqual(len(message.body), 150)

    def test_dblreq_trailing_octets_are_ignored(self) -> None:
        message = parse_ok("dblreq")
        assert isinstance(message, Request)
        self.assertEqual(message.method, "REGISTER")
        self.assertEqual(message.body, b"")
        self.assertNotIn(b"INVITE", message.serialize())

    def test_semiuri_user_part_with_parameters(self) -> None:
        message = parse_ok("semiuri")
        assert isinstance(message, Request)
        uri = parse_uri(message.uri)
        assert isinstance(uri, SipUri)
        self.assertEqual(uri.user_decoded, "user;par=u@example.net")
        self.assertEqual(uri.host, "example.com")
        self.assertEqual(
            message.headers.get("accept"),
            "application/sdp, application/pkcs7-mime, multipart/mixed, multipart/signed, message/sip, message/sipfrag",
        )

    def test_transports_varied_and_unknown(self) -> None:
        vias = all_vias(parse_ok("transports"))
        self.assertEqual([via.transport for via in vias], ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"])

    def test_mpart01_binary_multipart_body_untouched(self) -> None:
        data = load("mpart01")
        message = parse_ok("mpart01")
        self.assertEqual(len(message.body), 553)
        self.assertEqual(message.body, data[-553:])
        self.assertIn(b"\x00", message.body)
        self.assertTrue(message.body.endswith(b"--7a9cbec02ceef655--\r\n"))
        self.assertIn("rport", top_via(message).params)  # type: ignore[union-attr]

    def test_unreason_utf8_reason_phrase(self) -> None:
        message = parse_ok("unreason")
        assert isinstance(message, Response)
        self.assertEqual(message.status, 200)
        self.assertEqual(message.reason, "= 2**3 * 5**2 но сто девяносто девять - простое")

    def test_noreason_empty_reason_phrase(self) -> None:
        message = parse_ok("noreason")
        assert isinstance(message, Response)
        self.assertEqual((message.status, message.reason), (100, ""))


class InvalidMessageTests(SynchronousTestCase):
    """§3.1.2: 400 (505 for the version) naming the problem, or dropped where no answer is possible."""

    def test_each_invalid_message(self) -> None:
        for name, (status, words, answerable) in INVALID.items():
            with self.assertRaises(SipParseError, msg=name) as caught:
                parse_message(load(name))
            error = caught.exception
            self.assertEqual(error.status, status, name)
            self.assertIn(words, error.reason, name)
            response = error_response_for(error)
            if answerable:
                assert response is not None, name
                self.assertEqual((response.status, response.reason), (status, error.reason), name)
                if name not in ("scalar02", "quotbal", "badaspec", "baddn"):
                    # (those four keep their broken CSeq/To/From: a response copies them as they came)
                    # the response itself must be a well-formed message
                    self.assertIsInstance(parse_message(response.serialize()), Response, name)
            else:
                self.assertIsNone(response, name)

    def test_baddate_is_forwarded_untouched(self) -> None:
        message = parse_ok("baddate")
        self.assertEqual(message.headers.get("date"), "Fri, 01 Jan 2010 16:00:00 EST")
        self.assertIsNone(validate_request(message))  # type: ignore[arg-type]


class ApplicationLayerTests(SynchronousTestCase):
    """§3.2.1 and §3.3: what the proxy's RFC 3261 §16.3 checks give."""

    def test_proxy_outcomes(self) -> None:
        for name, outcome in PROXY_OUTCOME.items():
            if isinstance(outcome, str) and outcome.startswith("parse:"):
                with self.assertRaises(SipParseError, msg=name) as caught:
                    parse_message(load(name))
                self.assertEqual(caught.exception.status, int(outcome[6:]), name)
                continue
            message = parse_ok(name)
            if outcome == "response":
                self.assertIsInstance(message, Response, name)
                continue
            assert isinstance(message, Request), name
            result = validate_request(message, supported_option_tags=["path", "outbound"])
            if outcome is None:
                self.assertIsNone(result, name)
            elif outcome == "options":
                self.assertIsInstance(result, AnswerOptionsLocally, name)
            else:
                assert isinstance(result, Response), name
                self.assertEqual(result.status, outcome, name)

    def test_insuf_cannot_be_answered(self) -> None:
        with self.assertRaises(SipParseError) as caught:
            parse_message(load("insuf"))
        self.assertIn("missing From, To, Call-ID", caught.exception.reason)
        self.assertIsNone(error_response_for(caught.exception))

    def test_bext01_420_lists_proxy_require_options(self) -> None:
        result = validate_request(parse_ok("bext01"))  # type: ignore[arg-type]
        assert isinstance(result, Response)
        self.assertEqual((result.status, result.reason), (420, "Bad Extension"))
        self.assertEqual(result.headers.get("unsupported"), "noProxiesSupportThis, norDoAnyProxiesSupportThis")
        supported = validate_request(parse_ok("bext01"), ["noproxiessupportthis", "NorDoAnyProxiesSupportThis"])  # type: ignore[arg-type]
        self.assertIsNone(supported)

    def test_zeromf_483_for_anything_but_options(self) -> None:
        message = parse_ok("zeromf")
        assert isinstance(message, Request)
        message.method = "MESSAGE"
        message.headers.set("CSeq", "39234321 MESSAGE")
        result = validate_request(message)
        assert isinstance(result, Response)
        self.assertEqual(result.status, 483)

    def test_multiple_values_answered_once(self) -> None:
        # §3.3.8: the 400 carries one From/To/Call-ID/CSeq, the first of each
        with self.assertRaises(SipParseError) as caught:
            parse_message(load("multi01"))
        response = error_response_for(caught.exception)
        assert response is not None
        self.assertEqual(response.headers.get_all("cseq"), ["5 INVITE"])
        self.assertEqual(response.headers.get_all("call-id"), ["multi01.98asdh@192.0.2.1"])
        self.assertEqual(len(response.headers.get_all("from")), 1)

    def test_contact_params_belong_where_written(self) -> None:
        # §3.3.12 / §3.3.13 / §3.3.14
        contact = parse_address("Contact", parse_ok("cparam01").headers.get("contact") or "")
        assert isinstance(contact.uri, SipUri)
        self.assertNotIn("unknownparam", contact.uri.params)
        self.assertIn("unknownparam", contact.params)
        contact = parse_address("Contact", parse_ok("cparam02").headers.get("contact") or "")
        assert isinstance(contact.uri, SipUri)
        self.assertIn("unknownparam", contact.uri.params)
        contact = parse_address("Contact", parse_ok("regescrt").headers.get("contact") or "")
        assert isinstance(contact.uri, SipUri)
        self.assertEqual(contact.uri.headers["Route"], "%3Csip:sip.example.com%3E")

    def test_unknown_schemes_in_header_fields_parse(self) -> None:
        message = parse_ok("unksm2")
        self.assertEqual(str(to_address(message).uri), "isbn:2983792873")  # type: ignore[union-attr]
        self.assertEqual(str(from_address(message).uri), "http://www.example.com")  # type: ignore[union-attr]

    def test_bcast_second_via_is_broadcast(self) -> None:
        vias = all_vias(parse_ok("bcast"))
        self.assertEqual(vias[1].host, "255.255.255.255")

    def test_badbranch_branch_is_bare_magic_cookie(self) -> None:
        self.assertEqual(top_via(parse_ok("badbranch")).branch, "z9hG4bK")  # type: ignore[union-attr]
