"""Readings by shape (``epcscf.sip.params.cut_param_value``) give exactly what the reading of
the whole text gives.

A Via's branch and a From/To tag are new in every transaction or dialog, so the Via and
address patterns are asked once per *shape* of text (the text with that value replaced by
a placeholder) and the value is put back.  Checked here against the patterns read on the
whole text, for hypothesis-made texts near the common shapes and odd ones (the value first,
last or twice, spelled in capitals, not a token, the placeholder itself in the text).
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from epcscf.sip import headers as header_views
from epcscf.sip import proxy_rules
from epcscf.sip.headers import FAST_VIA_RE, HeaderError, Via, parse_via
from epcscf.sip.params import (
    TOKEN_CHARACTERS,
    VALUE_PLACEHOLDER,
    Params,
    clear_memos,
    cut_param_value,
    read_matched_header_params,
)
from tests.support.properties import BOUNDED

TOKEN = "abcXYZ019-.!%*_+`'~"
tokens = st.text(TOKEN, min_size=1, max_size=12)
odd_values = st.sampled_from(["", "a b", "a,b", '"q"', "x:y", "[::1]", VALUE_PLACEHOLDER, "z9hG4bK" + VALUE_PLACEHOLDER])
param_names = st.sampled_from(["branch", "BRANCH", "received", "rport", "ttl", "maddr", "ob", "lr", "x"])
params = st.lists(
    st.tuples(st.sampled_from([";", " ;", "; "]), param_names, st.none() | tokens | odd_values),
    max_size=4,
).map(lambda found: "".join(f"{sep}{name}" + ("" if value is None else f"={value}") for sep, name, value in found))


@st.composite
def via_texts(draw: st.DrawFn) -> str:
    transport = draw(st.sampled_from(["UDP", "ws", "WSS", "TCP", "T C"]))
    host = draw(st.sampled_from(["h.invalid", "127.0.0.1", "[::1]", "a-b.example.com", "bad_", "x;y"]))
    port = draw(st.sampled_from(["", ":5060", ":65536", ":0"]))
    before, after = draw(params), draw(params)
    branch = draw(tokens | odd_values)
    return draw(st.sampled_from(["", " "])) + f"SIP/2.0/{transport} {host}{port}{before};branch={branch}{after}"


def read_whole(text: str) -> Via:
    """``_read_first_via`` as it read every line before shapes: the pattern on the whole first item."""
    text = text.split(",", 1)[0] if '"' not in text else header_views.split_header_list(text)[0]
    if "ttl" not in text:
        match = header_views._FAST_VIA_PARTS_RE.match(text)
        if match is not None:
            transport, host, port_text, param_text = match.groups()
            found = Params.from_found(read_matched_header_params(param_text)) if param_text else Params()
            return Via(transport.upper(), host, int(port_text) if port_text else None, found)
    return parse_via(text)


def outcome(read: object, text: str) -> object:
    try:
        via = read(text)  # type: ignore[operator]
    except HeaderError as error:
        return ("error", str(error))
    return (via.transport, via.host, via.port, via.protocol, list(via.params._items.values()))


class CutParamValueTests(SynchronousTestCase):
    def test_the_value_up_to_the_next_parameter_or_the_end(self) -> None:
        self.assertEqual(cut_param_value("SIP/2.0/WS h;branch=z9hG4bK1;rport", ";branch="),
                         (f"SIP/2.0/WS h;branch={VALUE_PLACEHOLDER};rport", "z9hG4bK1"))
        self.assertEqual(cut_param_value("<sip:a@b>;tag=1a", ";tag="), (f"<sip:a@b>;tag={VALUE_PLACEHOLDER}", "1a"))

    def test_texts_not_cut(self) -> None:
        for text in ("SIP/2.0/WS h", "SIP/2.0/WS h;branch=", "SIP/2.0/WS h;branch=a b", "SIP/2.0/WS h;branch=1, SIP/2.0/UDP g",
                     'SIP/2.0/WS h;x="y";branch=1', f"SIP/2.0/WS h;branch=1;x={VALUE_PLACEHOLDER}", "SIP/2.0/WS h;branch=a:b"):
            self.assertIsNone(cut_param_value(text, ";branch="), text)


class ViaShapeTests(SynchronousTestCase):
    def setUp(self) -> None:
        clear_memos()

    @BOUNDED
    @given(via_texts())
    @example("SIP/2.0/WS h.invalid;branch=z9hG4bK1")
    @example("SIP/2.0/WS h.invalid;branch=z9hG4bK1;received=127.0.0.1;branch=z9hG4bK2")
    @example("SIP/2.0/WS h.invalid;BRANCH=z9hG4bK0;branch=z9hG4bK1")
    @example("SIP/2.0/UDP 127.0.0.1:65536;branch=z9hG4bK1")
    def test_a_via_read_by_its_shape_reads_as_the_whole_text(self, text: str) -> None:
        for _ in range(2):  # the second reading comes from the shape memo
            self.assertEqual(outcome(header_views._read_first_via, text), outcome(read_whole, text), text)
            item = text.split(",", 1)[0]
            self.assertEqual(header_views._fast_via_accepts(item), FAST_VIA_RE.match(item) is not None, item)

    def test_each_reading_is_a_new_via_with_its_own_branch(self) -> None:
        first = header_views._read_first_via("SIP/2.0/WS h.invalid;branch=z9hG4bKa;rport")
        second = header_views._read_first_via("SIP/2.0/WS h.invalid;branch=z9hG4bKb;rport")
        self.assertEqual((first.branch, second.branch), ("z9hG4bKa", "z9hG4bKb"))
        first.params["rport"] = "1"
        self.assertIsNone(header_views._read_first_via("SIP/2.0/WS h.invalid;branch=z9hG4bKc;rport").params["rport"])


@st.composite
def address_texts(draw: st.DrawFn) -> str:
    display = draw(st.sampled_from(["", "Alice ", '"Alice" ', "<"]))
    uri = draw(st.sampled_from(["sip:alice@ims.example.com", "sip:a@h;tag=inside", "sip:a@h;tag=a%b;lr", "sips:b@[::1]:5061;lr",
                                "sip:%61@h", "tel:+1"]))
    bracketed = draw(st.booleans())
    before, after = draw(params), draw(params)
    tag = draw(tokens | odd_values | st.sampled_from(["a%b", "x`y"]))
    spelled = draw(st.sampled_from([";tag=", ";tag=", ";TAG=", "; tag="]))
    head = f"{display}<{uri}>" if bracketed else uri
    return f"{head}{before}{spelled}{tag}{after}"


def address_facts_of_whole(value: str) -> tuple[str | None, str | None]:
    """``address_facts`` as it read every text before shapes."""
    facts = header_views._fast_address_facts(value)
    if facts is not None:
        return facts
    try:
        return None, header_views.parse_name_addr(value).tag
    except header_views.UriError as error:
        return str(error), None


class AddressShapeTests(SynchronousTestCase):
    def setUp(self) -> None:
        clear_memos()

    @BOUNDED
    @given(address_texts())
    @example("<sip:alice@ims.example.com>;tag=1a2b")
    @example("<sip:a@h;tag=a%b>;tag=1")
    @example("<sip:a@h;tag=a%b;lr>;tag=1")  # a URI parameter: '%' is no paramchar (RFC 3261 §25.1)
    @example("sip:a@h;tag=1;TAG=2")
    @example("<sip:a@h>;tag=1;tag=2")
    def test_an_address_read_by_its_shape_reads_as_the_whole_text(self, text: str) -> None:
        for _ in range(2):  # the second reading comes from the shape memo
            self.assertEqual(header_views.address_facts.__wrapped__(text), address_facts_of_whole(text), text)


class PatternFreeChecksTests(SynchronousTestCase):
    """Checks written with string methods instead of a pattern accept exactly what it accepts."""

    def test_the_call_id_check_is_the_pattern_s(self) -> None:
        from epcscf.sip.parser import _CALL_ID_RE, SipParseError, parse_message

        texts = ["", "a", "a b", "é", "aé", "a\x7f", "\u00a0", "\u2028x"] + [f"x{chr(code)}y" for code in range(0, 0x90) if code not in (10, 13)]
        for text in texts:
            wire = (f"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n"
                    f"To: <sip:a@b>\r\nCall-ID: {text}\r\nCSeq: 1 OPTIONS\r\n\r\n").encode("utf-8", "surrogateescape")
            try:
                parse_message(wire)
                accepted = True
            except SipParseError as error:
                accepted = "Call-ID" not in error.reason
            expected = _CALL_ID_RE.match(text.strip(" \t")) is not None
            self.assertEqual(accepted, expected, repr(text))

    def test_our_own_branches_are_kept_exactly_when_plain(self) -> None:
        import re

        plain = re.compile(r"[A-Za-z0-9.\-]+\Z")
        for branch in ["z9hG4bK-epc-1a.2b", "", "z9hG4bK_1", "z9hG4bK 1", "z9hG4bK\n", "é", "a;b", "A-Z.09"]:
            header_views._own_vias.clear()
            text = f"SIP/2.0/UDP 127.0.0.1:5060;branch={branch}"
            header_views.remember_own_via(text, branch)
            self.assertEqual(text in header_views._own_vias, plain.match(branch) is not None, repr(branch))

    def test_the_methods_known_without_the_pattern_are_tokens(self) -> None:
        from epcscf.sip.parser import _KNOWN_METHODS
        from epcscf.sip.uri import TOKEN_RE

        for method in _KNOWN_METHODS:
            self.assertIsNotNone(TOKEN_RE.match(method), method)


def mark_received_of_whole(via_text: str, source_host: str, source_port: int) -> str:
    """``proxy_rules.mark_received`` as it read every text before shapes."""
    marked = proxy_rules._mark_received_quickly(via_text, source_host, source_port)
    return marked if marked is not None else proxy_rules._mark_received_parsed(via_text, source_host, source_port)


class ProxyRuleShapeTests(SynchronousTestCase):
    def setUp(self) -> None:
        clear_memos()

    @BOUNDED
    @given(via_texts(), st.sampled_from(["127.0.0.1", "h.invalid", "::1", "10.0.0.7"]), st.sampled_from([5060, 40123]))
    @example("SIP/2.0/WS h.invalid;branch=z9hG4bK1", "127.0.0.1", 40123)
    @example("SIP/2.0/WS h.invalid;rport;branch=z9hG4bK1", "127.0.0.1", 40123)
    @example("SIP/2.0/WS h.invalid;branch=z9hG4bK1;received=10.0.0.1;rport=", "127.0.0.1", 40123)
    @example("SIP/2.0/WS h.invalid;BRANCH=a;branch=z9hG4bK1", "127.0.0.1", 40123)
    def test_branch_and_received_by_shape_read_as_the_whole_text(self, text: str, host: str, port: int) -> None:
        for _ in range(2):  # the second reading comes from the shape memos
            self.assertEqual(proxy_rules.branch_of(text), proxy_rules._branch_by_pattern(text), text)
            try:
                expected: object = mark_received_of_whole(text, host, port)
            except HeaderError as error:
                expected = error
            try:
                marked: object = proxy_rules.mark_received(text, host, port)
            except HeaderError as error:
                marked = error
            self.assertEqual(str(marked), str(expected), text)
            self.assertEqual(type(marked), type(expected), text)

    @BOUNDED
    @given(address_texts() | st.none() | st.text(max_size=30))
    def test_tag_of_is_its_pattern_s_reading(self, text: str | None) -> None:
        def whole(value: str | None) -> str:
            if not value:
                return ""
            gt = value.rfind(">")
            match = proxy_rules._TAG_RE.search(value, gt + 1 if gt >= 0 else 0)
            return match.group(1) if match else ""

        for _ in range(2):
            self.assertEqual(proxy_rules.tag_of(text), whole(text), text)


def _cut_as_before(text: str, mark: str) -> tuple[str, str] | None:
    """``cut_param_value`` as the eighth pass wrote it (two ``find`` calls and slices)."""
    at = text.find(mark)
    if at < 0:
        return None
    start = at + len(mark)
    end = text.find(";", start)
    if end < 0:
        end = len(text)
    value = text[start:end]
    if not value.isascii():
        return None
    octets = value.encode()
    if not (octets.isalnum() or (octets and not octets.translate(None, TOKEN_CHARACTERS.encode()))):
        return None
    if VALUE_PLACEHOLDER in text or '"' in text:
        return None
    return text[:start] + VALUE_PLACEHOLDER + text[end:], value


class CutParamValueAsBeforeTests(SynchronousTestCase):
    @given(via_texts(), st.sampled_from([";branch=", ";tag=", ";received="]))
    @BOUNDED
    def test_the_cut_is_the_one_the_find_calls_made(self, text: str, mark: str) -> None:
        self.assertEqual(cut_param_value(text, mark), _cut_as_before(text, mark))

    @given(st.text(st.sampled_from("ab;=~\"é tag"), max_size=20))
    @BOUNDED
    def test_odd_texts_cut_alike(self, text: str) -> None:
        self.assertEqual(cut_param_value(text, ";tag="), _cut_as_before(text, ";tag="))
