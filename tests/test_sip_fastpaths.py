"""The parser's fast paths and memos give exactly what the general readers give.

Each fast path (one pattern for the common shape, then the general reader for the rest)
must accept only what the general reader accepts and read it into the same parts; each
memo must hand out results no caller can spoil for another.  Checked here on the
registration messages of the load test and on seeded random texts near the common shapes.
"""

from __future__ import annotations

import random
from pathlib import Path

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from epcscf.sip import headers as header_views
from epcscf.sip.headers import (
    FAST_ADDRESS_RE,
    HeaderError,
    address_problem,
    check_via_line,
    cseq,
    from_tag,
    parse_address,
    parse_via_list,
    to_tag,
    top_via,
    top_via_view,
)
from epcscf.sip.message import Request, Response
from epcscf.sip import proxy_rules
from epcscf.sip.proxy_policy import Forward, is_deferred
from epcscf.sip.params import Params, _scan_header_params, parse_header_params
from epcscf.sip.parser import SipParseError, parse_message
from epcscf.sip.uri import (
    SipUri,
    UriError,
    _parse_name_addr,
    _parse_uri_general,
    parse_name_addr,
    parse_name_addr_list,
    parse_uri,
    shared_uri,
)

FIXTURE = Path(__file__).parent / "fixtures" / "sip" / "registration_messages.txt"


def _registration_messages() -> list[bytes]:
    chunks = [chunk.lstrip(b"\r\n") for chunk in FIXTURE.read_bytes().split(b"=====\n") if chunk.strip()]
    return [chunk.rstrip(b"\r\n") + b"\r\n\r\n" for chunk in chunks]


def _outcome(parse, text):  # type: ignore[no-untyped-def]
    """What ``parse(text)`` gives, in comparable form: ('ok', parts) or ('error', message)."""
    try:
        return "ok", _parts(parse(text))
    except (UriError, HeaderError) as error:
        return "error", str(error)


def _parts(value: object) -> object:
    if isinstance(value, Params):
        return list(value._items.values())  # names as written, in order
    if hasattr(value, "__dataclass_fields__"):
        return (type(value).__name__, {name: _parts(getattr(value, name)) for name in value.__dataclass_fields__})
    return value


def _mutated(rng: random.Random, text: str) -> str:
    """``text``, or with one character inserted or deleted (near-misses of the grammar)."""
    roll = rng.random()
    position = rng.randint(0, len(text))
    if roll < 0.25:
        return text[:position] + rng.choice(';="\\ \t<>,:@?%é\r\x7fx') + text[position:]
    if roll < 0.4 and text:
        return text[:position] + text[position + 1 :]
    return text


def _header_params(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(0, 3)):
        out.append(rng.choice(["", " ", "\t"]) + ";" + rng.choice(["", " "]))
        out.append(rng.choice(["tag", "lr", "+sip.instance", "expires", "x-y", "Tag", "tag", "reg-id", "a b", "a/b"]))
        if rng.random() < 0.7:
            out.append(rng.choice(["=", " = ", "= "]))
            out.append(rng.choice(["1", "ce83997d", '"<urn:uuid:1>"', '"a\\"b"', '"x;y"', '""', "é", "[::1]", "a=b"]))
        out.append(rng.choice(["", " "]))
    return "".join(out)


def _uri(rng: random.Random) -> str:
    text = rng.choice(["sip:", "sip:", "sip:", "sips:", "SIP:", "tel:", "http:"])
    if rng.random() < 0.6:
        text += rng.choice(["alice", "alice", "a;b?c", "a%41", "a%4", "a,b", "", "+1-555"])
        text += rng.choice(["", "", ":pw"]) + "@"
    text += rng.choice(["h.example", "h.example", "127.0.0.1", "[::1]", "-bad", "h_x", "h.", "+15551234"])
    if rng.random() < 0.4:
        text += ":" + rng.choice(["5060", "65535", "65536", "99999", "", "00080"])
    for _ in range(rng.randint(0, 3)):
        text += rng.choice([";lr", ";transport=ws", ";lr", ";x=%41", ";", ";a=b=c", ";[x]", ";ob"])
    if rng.random() < 0.15:
        text += rng.choice(["?subject=x", "?a=b&c=d", "?"])
    return text


def _address(rng: random.Random) -> str:
    display = rng.choice(["", "", '"Alice" ', "Bob ", '"A\\"B" ', "A,B ", '"x"'])
    uri = _uri(rng)
    text = f"{display}<{uri}>" if display or rng.random() < 0.6 else uri
    return rng.choice(["", " "]) + text + _header_params(rng)


def _via_line(rng: random.Random) -> str:
    vias = []
    for _ in range(rng.choice([1, 1, 1, 2])):
        text = rng.choice(["SIP/2.0/", "SIP/2.0/", "sip / 2.0 / ", "SIP/3.0/"]) + rng.choice(["UDP", "WS", "tcp", "T@"])
        text += rng.choice([" ", "  ", "\t"]) + rng.choice(["127.0.0.1", "h.invalid", "[::1]", "-h", "h h"])
        if rng.random() < 0.5:
            text += ":" + rng.choice(["5060", "40800", "65536", "x", ""])
        text += _header_params(rng).replace("tag", "branch").replace("expires", "ttl")
        vias.append(text)
    return ", ".join(vias)


def _random_texts(seed: int, make, count: int) -> list[str]:  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    return [_mutated(rng, make(rng)) for _ in range(count)]


class HeaderParamsFastPathTests(SynchronousTestCase):
    def test_same_result_or_error_as_the_scanner(self) -> None:
        texts = _random_texts(1, _header_params, 4000) + [
            "", " ", ";a", ";a=b;c", ' ; a = "x;y" ; b', ';a="unterminated', ";a=;b", ";;", "a=b", ";a b", ';a="x"y',
        ]
        for text in texts:
            self.assertEqual(_outcome(parse_header_params, text), _outcome(_scan_header_params, text), text)

    def test_quoted_value_keeps_its_quotes_and_escapes(self) -> None:
        params = parse_header_params(';reg-id=1;+sip.instance="<urn:uuid:ea2e>";q="a\\"b";expires=600')
        self.assertEqual(params["+sip.instance"], '"<urn:uuid:ea2e>"')
        self.assertEqual(params["q"], '"a\\"b"')
        self.assertEqual(params["EXPIRES"], "600")

    def test_repeated_name_keeps_first_spelling_and_last_value(self) -> None:
        params = parse_header_params(";Tag=1;tag=2")
        self.assertEqual(list(params._items.values()), [("Tag", "2")])


class ViaCheckTests(SynchronousTestCase):
    def test_line_check_raises_exactly_when_the_list_parse_does(self) -> None:
        texts = _random_texts(5, _via_line, 4000) + ["", " ", "SIP/2.0/UDP h;ttl=256", "SIP/2.0/UDP h;ttl=1"]
        valid = 0
        for text in texts:
            expected = _outcome(parse_via_list, text)
            self.assertEqual(_outcome(check_via_line, text)[0], expected[0], text)
            if expected[0] == "error":
                self.assertEqual(_outcome(check_via_line, text), expected, text)
            else:
                valid += 1
                self.assertEqual(_parts(top_via_of(text)), _parts(parse_via_list(text)[0]), text)
        self.assertGreater(valid, 500)

    def test_top_via_is_a_new_object_every_time(self) -> None:
        message = Request("OPTIONS", "sip:h")
        message.headers.add("Via", "SIP/2.0/UDP h;branch=z9hG4bK1")
        first = top_via(message)
        assert first is not None
        first.params["received"] = "192.0.2.1"
        self.assertNotIn("received", top_via(message).params)  # type: ignore[union-attr]


def top_via_of(line: str):  # type: ignore[no-untyped-def]
    message = Response(200)
    message.headers.add("Via", line)
    return top_via(message)


class UriFastPathTests(SynchronousTestCase):
    def test_same_result_or_error_as_the_general_reader(self) -> None:
        texts = _random_texts(2, _uri, 4000) + [
            "sip:alice@host:65535", "sip:alice@host:65536", "sip:host:", "sip:a;b?c@host;lr;lr", "SIPS:[::1]:5061",
        ]
        for text in texts:
            self.assertEqual(_outcome(parse_uri, text), _outcome(_parse_uri_general, text), text)

    def test_each_call_returns_a_new_uri(self) -> None:
        first = parse_uri("sip:alice@h;transport=ws")
        first.params["transport"] = "tcp"  # type: ignore[union-attr]
        self.assertEqual(str(parse_uri("sip:alice@h;transport=ws")), "sip:alice@h;transport=ws")

    def test_shared_uri_is_parse_uri_s_reading_kept_once_per_text(self) -> None:
        for text in ("sip:alice@h;transport=ws", "SIP:cQ36@127.0.0.1:40800;lr", "tel:+15551234", "urn:x:y"):
            self.assertEqual(shared_uri(text), parse_uri(text))
            self.assertIs(shared_uri(text), shared_uri(text))  # read only: one object per text
        with self.assertRaises(UriError):
            shared_uri("sip:alice@")

    def test_fast_uri_reads_every_part(self) -> None:
        uri = parse_uri("SIP:cQ36@127.0.0.1:40800;transport=udp;lr;ob")
        assert isinstance(uri, SipUri)
        self.assertEqual((uri.scheme, uri.user, uri.host, uri.port), ("sip", "cQ36", "127.0.0.1", 40800))
        self.assertEqual(list(uri.params._items.values()), [("transport", "udp"), ("lr", None), ("ob", None)])
        self.assertEqual(str(uri), "sip:cQ36@127.0.0.1:40800;transport=udp;lr;ob")


class AddressFastPathTests(SynchronousTestCase):
    def test_fast_pattern_accepts_only_valid_addresses_with_the_same_tag(self) -> None:
        texts = _random_texts(3, _address, 12000)
        accepted = 0
        for text in texts:
            if FAST_ADDRESS_RE.match(text) is None:
                continue
            accepted += 1
            full = parse_address("From", text)  # must not raise
            self.assertEqual(header_views._tag("From", text), full.tag, text)
        self.assertGreater(accepted, 300)  # the seeded texts do exercise the pattern

    def test_address_problem_is_parse_address_s_error(self) -> None:
        for text in _random_texts(6, _address, 3000):
            outcome = _outcome(lambda value: parse_address("Contact", value), text)
            problem = address_problem(text)
            self.assertEqual(problem is None, outcome[0] == "ok", text)
            if problem is not None:
                self.assertEqual(outcome[1], f"Contact: {problem}")

    def test_quoted_angle_after_an_addr_spec_is_refused(self) -> None:
        # The full parser reads the first '<' as a name-addr: the fast pattern must not accept it.
        text = 'sip:alice@example.com;+sip.instance="<urn:uuid:1>"'
        self.assertIsNone(FAST_ADDRESS_RE.match(text))
        self.assertRaises(HeaderError, parse_address, "Contact", text)

    def test_addr_spec_parameters_are_header_parameters(self) -> None:
        # RFC 3261 §20.10: ';x/y=1' after an addr-spec is a header parameter, and not a token.
        self.assertIsNone(FAST_ADDRESS_RE.match("sip:alice@example.com;x/y=1"))
        self.assertRaises(HeaderError, parse_address, "To", "sip:alice@example.com;x/y=1")
        self.assertEqual(header_views._tag("To", "sip:alice@example.com;tag=9"), "9")

    def test_tag_after_a_quoted_parameter_holding_angle_brackets(self) -> None:
        text = '<sip:alice@example.com>;x="a>;tag=wrong";tag=right'
        self.assertIsNotNone(FAST_ADDRESS_RE.match(text))
        self.assertEqual(header_views._tag("To", text), "right")


class NameAddrMemoTests(SynchronousTestCase):
    def test_memoised_parse_equals_a_fresh_parse(self) -> None:
        texts = _random_texts(4, _address, 3000)
        for text in texts:
            self.assertEqual(_outcome(parse_name_addr, text), _outcome(_parse_name_addr, text), text)
            # Asked again (now from the memo when it parsed): still the same.
            self.assertEqual(_outcome(parse_name_addr, text), _outcome(_parse_name_addr, text), text)

    def test_a_caller_changing_its_result_does_not_change_the_next(self) -> None:
        text = '"Alice" <sip:alice@example.com;transport=ws>;tag=1;+sip.instance="<urn:uuid:1>"'
        first = parse_name_addr(text)
        first.params["tag"] = "changed"
        first.uri.params["transport"] = "tcp"  # type: ignore[union-attr]
        first.uri.host = "elsewhere"  # type: ignore[union-attr]
        second = parse_name_addr(text)
        self.assertEqual(second.tag, "1")
        self.assertEqual(str(second.uri), "sip:alice@example.com;transport=ws")
        self.assertIsNot(second, first)

    def test_a_bad_address_raises_every_time(self) -> None:
        for _ in range(2):
            self.assertRaises(UriError, parse_name_addr, "<sip:alice@example.com")


class ParserAddressMemoTests(SynchronousTestCase):
    def _register(self, contact: str) -> bytes:
        return (
            "REGISTER sip:example.com SIP/2.0\r\n"
            "Via: SIP/2.0/WS h.invalid;branch=z9hG4bK1\r\n"
            "From: <sip:alice@example.com>;tag=1\r\nTo: <sip:alice@example.com>\r\n"
            f"Call-ID: c1\r\nCSeq: 1 REGISTER\r\nContact: {contact}\r\nContent-Length: 0\r\n\r\n"
        ).encode()

    def test_a_bad_contact_gets_the_same_400_every_time(self) -> None:
        reasons = set()
        for _ in range(3):
            with self.assertRaises(SipParseError) as caught:
                parse_message(self._register("<sip:alice@h?subject=x"))
            reasons.add((caught.exception.status, caught.exception.reason))
        self.assertEqual(len(reasons), 1)
        status, reason = reasons.pop()
        self.assertEqual(status, 400)
        self.assertIn("malformed Contact", reason)

    def test_the_same_text_is_named_by_the_header_it_is_in(self) -> None:
        value = "<sip:alice@example.com"
        with self.assertRaises(SipParseError) as caught:
            parse_message(self._register(value))
        self.assertIn("Contact", caught.exception.reason)
        data = self._register("<sip:alice@h>").replace(b"To: <sip:alice@example.com>", f"To: {value}".encode())
        with self.assertRaises(SipParseError) as caught:
            parse_message(data)
        self.assertIn("malformed To", caught.exception.reason)


class RegistrationMessagesTests(SynchronousTestCase):
    """The captured registration (the load test's messages) parses, reads and round-trips."""

    def test_each_message_round_trips_and_its_views_read(self) -> None:
        messages = _registration_messages()
        self.assertEqual(len(messages), 16)
        for data in messages:
            message = parse_message(data, require_content_length=True)
            self.assertEqual(message.serialize(), data)
            self.assertIsNotNone(top_via_view(message))
            self.assertEqual(cseq(message).method, "REGISTER")  # type: ignore[union-attr]
            self.assertIsNotNone(from_tag(message))
            for value in message.headers.get_all("contact"):
                (contact,) = parse_name_addr_list(value)
                self.assertEqual(contact.params["+sip.instance"], '"<urn:uuid:ea2e7ade-0000-4000-8000-f41af516a1d8>"')
                self.assertEqual(contact.params["expires"], "600")
        final = parse_message(messages[6], require_content_length=True)
        self.assertEqual(to_tag(final), "48a718759859")
        (path,) = parse_name_addr_list(final.headers.get("path") or "")
        self.assertEqual(path.uri.port, 40800)  # type: ignore[union-attr]
        self.assertIn("lr", path.uri.params)  # type: ignore[union-attr]


def _serialize_line_by_line(message: Request | Response) -> bytes:
    """Message.serialize's general rule: lines as they are, Content-Length rewritten, once."""
    lines = [message.start_line()]
    have_length = False
    for name, value in message.headers:
        if name.lower() in ("content-length", "l"):
            if not have_length:
                lines.append(f"{name}: {len(message.body)}")
            have_length = True
        else:
            lines.append(f"{name}: {value}")
    if not have_length:
        lines.append(f"Content-Length: {len(message.body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + message.body


class SerializeTests(SynchronousTestCase):
    def test_right_wrong_missing_and_repeated_content_length(self) -> None:
        data = _registration_messages()[0]
        for change in (
            lambda m: None,
            lambda m: setattr(m, "body", b"hello"),
            lambda m: m.headers.remove("content-length"),
            lambda m: m.headers.add("l", "0"),
            lambda m: m.headers.set("Content-Length", "00"),
        ):
            message = parse_message(data)
            change(message)
            self.assertEqual(message.serialize(), _serialize_line_by_line(message))
            copied = message.copy()  # with its own copy of the lookup index
            self.assertEqual(copied.serialize(), _serialize_line_by_line(message))


class PerRefreshShortcutTests(SynchronousTestCase):
    """The per-message shortcuts of issue 16 (fourth pass of the REGISTER refresh) give what
    the general rules give."""

    def test_first_via_line_check_with_headers_leaves_the_top_via_top_via_gives(self) -> None:
        texts = _random_texts(11, _via_line, 4000) + [
            "a, SIP/2.0/UDP h",
            ", SIP/2.0/UDP h",
            "SIP/2.0/UDP h;ttl=300, SIP/2.0/UDP h",
            "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1;rport=5070, SIP/2.0/WS x.invalid;branch=z9hG4bK2;received=127.0.0.1;rport=1",
        ]
        several = 0
        for text in texts:
            expected = _outcome(parse_via_list, text)
            message = Response(200)
            outcome = _outcome(lambda line: check_via_line(line, message.headers), text)
            self.assertEqual(outcome[0], expected[0], text)
            if expected[0] == "error":
                self.assertEqual(outcome, expected, text)
                continue
            message.headers.add("Via", text)
            self.assertEqual(_outcome(lambda _: top_via_view(message), text), _outcome(top_via_of, text), text)
            several += "," in text
        self.assertGreater(several, 20)

    def test_popping_the_first_of_several_plain_values_keeps_the_rest_in_order(self) -> None:
        from epcscf.sip.proxy_rules import list_values, pop_first_value

        rng = random.Random(12)
        for _ in range(500):
            values = [f"SIP/2.0/UDP h{rng.randint(0, 9)};branch=z9hG4bK{rng.randint(0, 99)}" for _ in range(rng.randint(1, 4))]
            first_line = rng.choice([", ", ",", " ,\t"]).join(values[: rng.randint(1, len(values))])
            rest_lines = values[len(list_values_of(first_line)) :]
            message = Response(200)
            message.headers.add("v", first_line)
            for line in rest_lines:
                message.headers.add("Via", line)
            self.assertEqual(pop_first_value(message.headers, "via"), values[0])
            self.assertEqual(list_values(message.headers, "via"), values[1:])
            self.assertEqual(message.headers.count("via"), len(values) - 1 if "," not in first_line else 1 + len(rest_lines))
        # An empty item keeps the general rule (one line per remaining value).
        message = Response(200)
        message.headers.add("Via", "SIP/2.0/UDP a,, SIP/2.0/UDP b")
        self.assertEqual(pop_first_value(message.headers, "via"), "SIP/2.0/UDP a")
        self.assertEqual(message.headers.get_all("via"), ["SIP/2.0/UDP b"])

    def test_to_aor_is_the_to_uri_text_for_every_message_carrying_that_to(self) -> None:
        from epcscf.sip.headers import to_aor

        for to in ("<sip:alice@h.example>", "Alice <sip:alice@h.example;user=phone>;tag=1", "sip:bob@h.example"):
            for _ in range(2):  # the second time from the memo
                message = Request("REGISTER", "sip:h.example")
                message.headers.add("To", to)
                self.assertEqual(to_aor(message), str(parse_address("To", to).uri))
        message = Request("REGISTER", "sip:h.example")
        message.headers.add("To", "<sip:alice@>")
        for _ in range(2):  # an error is never kept: raised every time
            self.assertRaises(HeaderError, to_aor, message)

    def test_lines_is_get_all_without_a_copy(self) -> None:
        message = parse_message(_registration_messages()[0])
        for name in ("via", "contact", "Contact", "m", "x-absent"):
            self.assertEqual(list(message.headers.lines(name)), message.headers.get_all(name))
        message.headers.add("Contact", "<sip:c@h>")
        self.assertEqual(list(message.headers.lines("contact")), message.headers.get_all("contact"))

    def test_a_copy_s_header_index_is_its_own(self) -> None:
        message = parse_message(_registration_messages()[0])
        copied = message.copy()
        copied.headers.add("Contact", "<sip:c@h>")
        copied.headers.insert_first("Via", "SIP/2.0/UDP p.example;branch=z9hG4bK-p")
        copied.headers.remove("to")
        self.assertEqual(message.headers.get_all("contact"), [v for n, v in message.headers if n.lower() in ("contact", "m")])
        self.assertNotIn("SIP/2.0/UDP p.example;branch=z9hG4bK-p", message.headers.get_all("via"))
        self.assertIn("to", message.headers)
        for headers in (message.headers, copied.headers):
            rebuilt = headers.copy()
            rebuilt._index = None  # built again from the lines
            for name in ("via", "contact", "to", "call-id", "cseq"):
                self.assertEqual(headers.get_all(name), rebuilt.get_all(name))

    def test_is_deferred_answers_as_isinstance(self) -> None:
        class Subclass(Deferred):  # type: ignore[type-arg]
            pass

        for value in (Deferred(), Subclass(), succeed(1), Forward(Request("REGISTER", "sip:h"), None), None, [], "x"):
            self.assertEqual(is_deferred(value), isinstance(value, Deferred), value)


def list_values_of(line: str) -> list[str]:
    return [item.strip(" \t") for item in line.split(",")]


class OwnViaTests(SynchronousTestCase):
    """A Via the proxy wrote comes back first on its responses (RFC 3261 §8.2.6.2): read from
    the fields kept when it was written, it must read exactly as the Via pattern reads it."""

    SENT_BYS = ["127.0.0.1:5060", "127.0.0.1:40800", "edge.example.net:5061", "edge.example.net", "[::1]:5060",
                "[2001:db8::1]", "shuttle.example:5060", "h-1.example:1", "x:65536", "-bad:5060", "h h:5060"]
    BRANCHES = ["z9hG4bK-epc-0123456789abcdef.fedcba9876543210", "z9hG4bK1", "z9hG4bK-epc-ttl.1",
                'z9hG4bK"quoted"', "z9hG4bK;x=1", "z9hG4bK,2", ""]
    AFTER = ["", ", SIP/2.0/WS d915fba3.invalid;branch=z9hG4bK1c86e721684c2508;received=127.0.0.1",
             ' , SIP/2.0/WS a.invalid;branch=z9hG4bK2;x="q,uoted"', ",", ", SIP/2.0/UDP h;ttl=300"]

    def tearDown(self) -> None:
        header_views._own_vias.clear()
        header_views._own_via_prefixes.clear()

    def test_a_remembered_via_reads_as_the_pattern_reads_it(self) -> None:
        checked = 0
        for transport in ("UDP", "TCP", "tls", "WS"):
            for sent_by in self.SENT_BYS:
                for branch in self.BRANCHES:
                    text = f"SIP/2.0/{transport} {sent_by};branch={branch}"
                    for after in self.AFTER:
                        line = text + after
                        header_views._own_vias.clear()
                        expected_check = _outcome(lambda value: check_via_line(value, Response(200).headers), line)
                        expected_top = _outcome(top_via_of, line)
                        header_views.remember_own_via(text, branch)
                        message = Response(200)
                        self.assertEqual(_outcome(lambda value: check_via_line(value, message.headers), line), expected_check, line)
                        self.assertEqual(_outcome(top_via_of, line), expected_top, line)
                        if expected_check[0] == "ok":
                            message.headers.add("Via", line)
                            self.assertEqual(_outcome(lambda _: top_via_view(message), line), expected_top, line)
                        checked += 1
        self.assertGreater(checked, 1000)

    def test_the_proxy_s_via_is_remembered_and_each_reading_is_a_new_object(self) -> None:
        request = Request("MESSAGE", "sip:b@h")
        text = proxy_rules.add_via(request, "UDP", "127.0.0.1:5060", "z9hG4bK-epc-1.2")
        self.assertIn(text, header_views._own_vias)
        first, second = top_via_of(text + ", SIP/2.0/WS x.invalid;branch=z9hG4bK3"), top_via_of(text)
        assert first is not None and second is not None
        self.assertIsNot(first, second)
        first.params["received"] = "192.0.2.1"
        self.assertEqual(_parts(second), _parts(parse_via_list(text)[0]))

    def test_a_via_that_is_not_a_plain_token_branch_is_not_remembered(self) -> None:
        for branch in ('z9hG4bK"q"', "z9hG4bK;x", ""):
            header_views.remember_own_via(f"SIP/2.0/UDP h:5060;branch={branch}", branch)
        header_views.remember_own_via("SIP/2.0/UDP h h:5060;branch=z9hG4bK1", "z9hG4bK1")  # not a Via at all
        self.assertEqual(header_views._own_vias, {})

    def test_the_table_stays_bounded(self) -> None:
        for i in range(header_views.OWN_VIA_ENTRIES + 10):
            header_views.remember_own_via(f"SIP/2.0/UDP h:5060;branch=z9hG4bK{i}", f"z9hG4bK{i}")
        self.assertLessEqual(len(header_views._own_vias), header_views.OWN_VIA_ENTRIES)
