"""Property tests (hypothesis, bounded and derandomized) for what every peer's bytes reach first:
the message parser and stream framer, URIs and name-addrs, the header readers.

Each reader raises only its own error on any input (``SipParseError``, ``UriError``,
``HeaderError``): anything else would be a traceback from input.  Valid generated messages
and URIs survive parse∘serialize unchanged.
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from epcscf.sip import headers as sip_headers
from epcscf.sip.headers import HeaderError
from epcscf.sip.message import Request, Response
from epcscf.sip.parser import SipParseError, StreamFramer, error_response_for, parse_message
from epcscf.sip.uri import SipUri, UriError, parse_name_addr, parse_name_addr_list, parse_uri, split_list
from tests.support.properties import BOUNDED, raises_only

# --- generators -------------------------------------------------------------------------------

ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
TOKEN_CHARS = ALNUM + "-.!%*_+`'~"
labels = st.text(ALNUM, min_size=1, max_size=12)
hostnames = st.lists(labels, min_size=1, max_size=4).map(".".join).filter(lambda h: not h[-1:].isdigit() or "." not in h)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda parts: ".".join(map(str, parts)))
hosts = st.one_of(hostnames, ipv4, st.sampled_from(["[::1]", "[2001:db8::7]"]))
users = st.text(ALNUM + "-_.!~*'()&=+$,;?/", min_size=1, max_size=12)
ports = st.none() | st.integers(1, 65535)
uri_params = st.lists(
    st.tuples(st.text(ALNUM + "-", min_size=1, max_size=8), st.none() | st.text(ALNUM + "-.", min_size=1, max_size=8)),
    max_size=3,
    unique_by=lambda pair: pair[0].lower(),
).filter(lambda params: all(name.lower() not in ("transport", "maddr", "ttl", "user", "method", "lr") for name, _ in params))


@st.composite
def sip_uris(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["sip", "sips"]))
    user = draw(st.none() | users)
    host = draw(hosts)
    port = draw(ports)
    text = f"{scheme}:{user + '@' if user else ''}{host}{':' + str(port) if port else ''}"
    for name, value in draw(uri_params):
        text += f";{name}" + (f"={value}" if value is not None else "")
    return text


tokens = st.text(TOKEN_CHARS, min_size=1, max_size=16)
methods = st.sampled_from(["INVITE", "ACK", "BYE", "CANCEL", "REGISTER", "OPTIONS", "MESSAGE", "INFO", "UPDATE", "SUBSCRIBE", "NOTIFY"])


@st.composite
def valid_messages(draw: st.DrawFn) -> bytes:
    method = draw(methods)
    body = draw(st.binary(max_size=200))
    is_request = draw(st.booleans())
    lines = [
        f"INVITE {draw(sip_uris())} SIP/2.0".replace("INVITE", method, 1) if is_request
        else f"SIP/2.0 {draw(st.integers(100, 699))} {draw(st.text(ALNUM + ' ', min_size=1, max_size=20)).strip() or 'OK'}",
        f"Via: SIP/2.0/{draw(st.sampled_from(['UDP', 'TCP', 'WS', 'WSS']))} {draw(hosts)};branch=z9hG4bK{draw(tokens)}",
        f"Max-Forwards: {draw(st.integers(0, 255))}",
        f"From: <{draw(sip_uris())}>;tag={draw(tokens)}",
        "To: " + draw(st.sampled_from(["", '"Bob" '])) + f"<{draw(sip_uris())}>",
        f"Call-ID: {draw(tokens)}",
        f"CSeq: {draw(st.integers(0, 2**31 - 1))} {method}",
    ]
    for _ in range(draw(st.integers(0, 3))):
        lines.append(f"X-{draw(tokens)}: {draw(st.text(ALNUM + ' ;=,:<>@', max_size=30)).strip()}")
    if body:
        lines.append("Content-Type: application/octet-stream")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@st.composite
def mutated(draw: st.DrawFn, messages: st.SearchStrategy[bytes]) -> bytes:
    """A valid message with a few byte-level mutations: flips, cuts, duplications, insertions."""
    data = bytearray(draw(messages))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "cut", "dup", "insert", "truncate"]))
        if kind == "flip":
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 20))]
        elif kind == "dup":
            end = data.find(b"\r\n", at)
            if end > 0:
                data[at:at] = data[at:end + 2]
        elif kind == "insert":
            data[at:at] = draw(st.sampled_from([b"\x00", b"\r\n", b"\r\n ", b"\xff\xfe", b":", b";", b"<", b">", b"\"", b"%", b"Content-Length: 99999\r\n", b"Via: \r\n"]))
        else:
            del data[at:]
    return bytes(data)


any_text = st.text(max_size=120) | st.text("sip:@;=<>\"',.[]%?&0123456789abc \t\\", max_size=80)


class ParserProperties(SynchronousTestCase):
    def check_message(self, data: bytes) -> None:
        try:
            message = parse_message(data)
        except SipParseError as error:
            # parse_message turns its own bugs into a 400 too (a connection must survive them),
            # keeping the bug as the cause: a property must still see it.
            if error.__cause__ is not None:
                self.fail(f"parser bug behind a 400: {error.__cause__!r}")
            reply = raises_only(lambda: error_response_for(error))
            if reply is not None:
                self.assertIsInstance(raises_only(reply.serialize), bytes)
            return
        except Exception as error:
            self.fail(f"{type(error).__name__} escaped parse_message: {error!r}")
        # What the transaction layer and proxy read first must hold for any parsed message.
        for reader in (sip_headers.top_via, sip_headers.all_vias, sip_headers.cseq, sip_headers.max_forwards,
                       sip_headers.from_address, sip_headers.to_address, sip_headers.from_tag, sip_headers.to_tag,
                       sip_headers.content_length):
            raises_only(lambda: reader(message), HeaderError, UriError)
        if isinstance(message, Request):
            raises_only(lambda: parse_uri(message.uri), UriError)

    @BOUNDED
    @given(st.binary(max_size=400))
    @example(b"INVITE sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\n")
    @example(b"SIP/2.0 99999999999999999999 x\r\n\r\n")
    def test_any_bytes_parse_to_a_message_or_our_own_error(self, data: bytes) -> None:
        self.check_message(data)

    @BOUNDED
    @given(mutated(valid_messages()))
    def test_mutated_messages_parse_to_a_message_or_our_own_error(self, data: bytes) -> None:
        self.check_message(data)

    @BOUNDED
    @given(valid_messages())
    def test_valid_messages_survive_parse_and_serialize(self, data: bytes) -> None:
        message = parse_message(data)
        again = parse_message(message.serialize())
        self.assertEqual(again.serialize(), message.serialize())
        self.assertEqual(again.start_line(), message.start_line())
        self.assertEqual(list(again.headers), list(message.headers))
        self.assertEqual(again.body, message.body)
        self.assertEqual(type(again), type(message))
        if isinstance(message, Response):
            self.assertEqual(again.status, message.status)

    @BOUNDED
    @given(st.lists(mutated(valid_messages()) | st.binary(max_size=80), min_size=1, max_size=4), st.data())
    def test_stream_framer_takes_any_chunks(self, messages: list[bytes], data: st.DataObject) -> None:
        stream = b"".join(messages)
        framer = StreamFramer()
        at = 0
        while at < len(stream):
            size = data.draw(st.integers(1, 64))
            raises_only(lambda: framer.feed(stream[at : at + size]))
            at += size


class UriProperties(SynchronousTestCase):
    @BOUNDED
    @given(any_text)
    @example("sip:")
    @example("sip:a@[")
    @example("sip:a@b:99999999999999999999")
    def test_any_text_is_a_uri_or_our_own_error(self, text: str) -> None:
        raises_only(lambda: parse_uri(text), UriError)

    @BOUNDED
    @given(any_text)
    def test_any_text_is_a_name_addr_or_list_or_our_own_error(self, text: str) -> None:
        raises_only(lambda: parse_name_addr(text), UriError)
        raises_only(lambda: parse_name_addr_list(text), UriError)
        raises_only(lambda: split_list(text), UriError)

    @BOUNDED
    @given(sip_uris())
    def test_generated_sip_uris_survive_parse_and_str(self, text: str) -> None:
        uri = parse_uri(text)
        self.assertIsInstance(uri, SipUri)
        again = parse_uri(str(uri))
        self.assertEqual(str(again), str(uri))
        self.assertEqual((again.host, again.port, again.user), (uri.host, uri.port, uri.user))

    @BOUNDED
    @given(st.sampled_from(["", '"Alice" ', "Alice "]), sip_uris(), st.none() | tokens)
    def test_generated_name_addrs_survive_parse_and_str(self, display: str, uri: str, tag: str | None) -> None:
        text = f"{display}<{uri}>" + (f";tag={tag}" if tag else "")
        parsed = parse_name_addr(text)
        self.assertEqual(parsed.tag, tag)
        self.assertEqual(str(parse_name_addr(str(parsed))), str(parsed))


class HeaderReaderProperties(SynchronousTestCase):
    @BOUNDED
    @given(any_text)
    @example("SIP/2.0/UDP h:99999999999999999999")
    @example("SIP/2.0/UDP [::1")
    def test_header_readers_raise_only_header_errors(self, text: str) -> None:
        for reader in (sip_headers.parse_via, sip_headers.parse_via_list, sip_headers.parse_cseq,
                       sip_headers.parse_max_forwards, sip_headers.parse_content_length,
                       sip_headers.check_via_line, sip_headers.split_header_list, sip_headers.parse_params):
            raises_only(lambda: reader(text), HeaderError, UriError)
        raises_only(lambda: sip_headers.parse_address("From", text), HeaderError, UriError)
        raises_only(lambda: sip_headers.address_facts(text), HeaderError, UriError)
        raises_only(lambda: sip_headers.address_problem(text), HeaderError, UriError)

    @BOUNDED
    @given(st.sampled_from(["UDP", "TCP", "TLS", "WS", "WSS"]), hosts, ports, tokens)
    def test_generated_vias_read_back(self, transport: str, host: str, port: int | None, branch: str) -> None:
        text = f"SIP/2.0/{transport} {host}{':' + str(port) if port else ''};branch=z9hG4bK{branch};rport"
        via = sip_headers.parse_via(text)
        self.assertEqual((via.transport.upper(), via.port), (transport, port))
        self.assertEqual(via.params.get("branch"), "z9hG4bK" + branch)
