"""Bytes to SIP messages (RFC 3261 §7, §18.3; RFC 5626 §4.4.1 keep-alives).

Theory of operation
-------------------
``parse_message`` takes one whole message (a UDP datagram or a WebSocket message,
RFC 7118 §5) and returns a ``Request`` or ``Response`` whose header values are the
raw, unfolded strings: typed views are parsed on demand by ``epcscf.sip.headers``.
It checks only what every layer relies on (start line, version, the fields that
identify a transaction, single-valued fields, Content-Length) and raises
``SipParseError(status, reason, partial)`` for anything else; nothing else ever
escapes.  ``error_response_for`` turns such an error into the 400/505/513 the
sender should get, when the partial request carries enough to route a response.

``StreamFramer`` is the sans-IO framing for TCP/TLS (RFC 3261 §18.3): it is fed bytes
and returns events (a framed message, a CRLFCRLF keep-alive ping, a framing error).

Bytes that are not UTF-8 are kept with ``surrogateescape`` so that
``Message.serialize`` writes back exactly the octets that arrived.

Cost: the checks of Via, From/To/Contact and CSeq are pure functions of the value text,
memoised by text (``epcscf.sip.params.memoised_by_text``): the core parses again the very
texts the eP-CSCF parsed, and a registration repeats them in most of its messages.  The
memos hold verdicts and private parses only; what a caller gets is always its own object.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from epcscf.sip.headers import (
    HeaderError,
    address_facts,
    check_via_line,
    parse_address,
    split_header_list,
    parse_cseq,
    parse_max_forwards,
    parse_via_list,
)
from epcscf.sip.message import COMPACT_FORMS, Request, Response, make_response, new_tag
from epcscf.sip.uri import TOKEN_RE, SipUri, UriError, shared_uri
from epcscf.sip.params import MEMO_TEXT_LENGTH, clear_with_memos

__all__ = [
    "ParserLimits",
    "SipParseError",
    "parse_message",
    "error_response_for",
    "StreamFramer",
    "MessageFramed",
    "KeepAlivePing",
    "FramingError",
    "FramerEvent",
]


@dataclass(frozen=True)
class ParserLimits:
    max_message_size: int = 65535
    max_headers: int = 256
    max_line_length: int = 8192


class SipParseError(Exception):
    """A message that cannot be accepted.

    ``status`` is what the sender should be told (400, 505, 513); ``reason`` is a
    reason phrase naming the problem; ``partial`` is what could be read of the
    message (enough to build a response, or None).
    """

    def __init__(self, status: int, reason: str, partial: Request | Response | None = None) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.partial = partial


# RFC 3261 §25.1 Reason-Phrase characters (ASCII part): reserved, unreserved, SP, HTAB.
_REASON_UNSAFE_RE = re.compile(r"[^A-Za-z0-9;/?:@&=+$,\-_.!~*'() \t]")


def _bad(detail: str) -> str:
    """'Bad Request (<detail>)' with the detail cut short and reduced to legal Reason-Phrase text."""
    return f"Bad Request ({_REASON_UNSAFE_RE.sub('', detail)[:120]})"


# RFC 3261 §7.3.1: these fields carry one value; a second line is a 400 (RFC 4475 §3.3.8, §3.3.9).
SINGLE_VALUE_HEADERS = frozenset(
    {"from", "to", "call-id", "cseq", "max-forwards", "content-length", "content-type"}
)
# RFC 3261 §8.1.1: every request carries these (Max-Forwards a proxy adds, §16.6 step 3).
MANDATORY_REQUEST_HEADERS = ("via", "from", "to", "call-id", "cseq")
# Response needs Via and CSeq to find its transaction (RFC 3261 §17.1.3).
MANDATORY_RESPONSE_HEADERS = ("via", "from", "to", "call-id", "cseq")
_MANDATORY_KEYS = frozenset(MANDATORY_REQUEST_HEADERS) | frozenset(MANDATORY_RESPONSE_HEADERS)

_SPELLING = {"via": "Via", "from": "From", "to": "To", "call-id": "Call-ID", "cseq": "CSeq",
             "max-forwards": "Max-Forwards", "content-length": "Content-Length",
             "content-type": "Content-Type"}
_VERSION_RE = re.compile(r"SIP/([0-9]+)\.([0-9]+)\Z", re.I)
_HEADER_NAME_RE = TOKEN_RE
_LINE_SPLIT_RE = re.compile(r"\r?\n")
_WS = " \t"
_CALL_ID_RE = re.compile(r"[^\x00-\x20\x7f]+\Z")
# Tokens (RFC 3261 §7.1, §27.4) every method check meets: known good without the pattern.
_KNOWN_METHODS = frozenset(
    {"INVITE", "ACK", "BYE", "CANCEL", "REGISTER", "OPTIONS", "PRACK", "UPDATE", "INFO", "SUBSCRIBE", "NOTIFY",
     "REFER", "MESSAGE", "PUBLISH"}
)


# Header names seen before, as written before the colon, with their spelling (trailing
# LWS dropped) and canonical key.  Only valid names get in, so a continuation line (which
# starts with LWS) never matches.
_NAME_CACHE: dict[str, tuple[str, str]] = {}


# Header lines read before, each with what the loop below makes of it: its item (name as
# written, value) and canonical key.  The lines of a registration's messages recur but for Via,
# CSeq and the To tag (RFC 3261 §8.1.1: From, To, Call-ID, Contact repeat in every refresh,
# and the core's 200 echoes them), so a line read again costs one dict look-up instead of a
# partition, a name look-up and a strip; its value is the same object each time, whose hash
# the memos behind ``_check_headers`` already hold.  A line goes in on its second reading (the
# texts read once are remembered by hash only, as ``epcscf.sip.headers`` does for Vias), so
# the branches and tags that never recur do not crowd the others out.  Bounded; emptied by
# ``clear_memos`` after a burst.
LINE_MEMO_ENTRIES = 4096
LINE_MEMO_TEXT_LENGTH = 256
_line_memo: dict[str, tuple[tuple[str, str], str, str]] = {}
# Never read twice, so not even remembered by hash: a Via carries a new branch in every
# transaction (RFC 3261 §8.1.1.7), a CSeq a new number in every request (§8.1.1.5).
_NEW_IN_EVERY_REQUEST = frozenset(("via", "cseq"))
_lines_seen: set[int] = set()
clear_with_memos(_line_memo.clear)
clear_with_memos(_lines_seen.clear)


def _remember_line(line: str, item: tuple[str, str], key: str) -> None:
    """Keep ``line``'s reading from its second time on (see ``_line_memo``)."""
    digest = hash(line)
    seen = _lines_seen
    if digest not in seen:
        if len(seen) >= LINE_MEMO_ENTRIES:
            seen.clear()
        seen.add(digest)
        return
    if len(_line_memo) >= LINE_MEMO_ENTRIES:
        _line_memo.clear()
    _line_memo[line] = (item, key, item[1])


def _canonical(name: str) -> str:
    lowered = name.lower()
    return COMPACT_FORMS.get(lowered, lowered)


def _find_head_end(data: bytes, start: int) -> tuple[int, int]:
    """(end of header section, start of body); (-1, -1) when there is no blank line."""
    end = data.find(b"\r\n\r\n", start)
    if end >= 0:
        return end, end + 4
    # Tolerate bare-LF line ends (RFC 3261 §7.5 robustness) when there is no CRLF blank line.
    end = data.find(b"\n\n", start)
    if end >= 0:
        return end, end + 2
    return -1, -1


def parse_message(
    data: bytes,
    limits: ParserLimits = ParserLimits(),
    *,
    require_content_length: bool = False,
) -> Request | Response:
    """Parse one whole message.  Raises ``SipParseError`` and nothing else."""
    try:
        return _parse(data, limits, require_content_length)
    except SipParseError:
        raise
    except Exception as error:  # a parser bug must still not kill a connection
        raise SipParseError(400, _bad(f"unparseable message: {type(error).__name__}"), None) from error


def _parse(data: bytes, limits: ParserLimits, require_content_length: bool) -> Request | Response:
    # RFC 3261 §7.5: ignore CRLFs before the start line.
    start = 0
    n = len(data)
    while start < n and data[start] in (13, 10):
        start += 1
    if start >= n:
        raise SipParseError(400, _bad("empty message"), None)
    head_end = data.find(b"\r\n\r\n", start)  # ``_find_head_end``'s common case, inlined
    if head_end >= 0:
        body_start = head_end + 4
    else:
        head_end, body_start = _find_head_end(data, start)
    oversize = n - start > limits.max_message_size
    if oversize and (head_end < 0 or head_end - start > limits.max_message_size):
        # RFC 3261 §21.5.14 (513); the header section alone is too big to read for an answer.
        raise SipParseError(513, "Message Too Large", None)
    if head_end < 0:
        # No blank line: the whole datagram is the header section (tolerated, no body).
        head_end, body_start = n, n
        if data.endswith(b"\r\n"):
            head_end = n - 2
        elif data.endswith(b"\n"):
            head_end = n - 1
    head = data[start:head_end].decode("utf-8", "surrogateescape")
    lines = head.split("\r\n")
    if "\n" in "".join(lines):  # a bare LF (RFC 3261 §7.5): one search of the joined lines costs less than a count
        lines = _LINE_SPLIT_RE.split(head)

    message, start_error = _parse_start_line(lines[0], limits)
    headers = message.headers
    errors: list[SipParseError] = []
    if start_error is not None:
        errors.append(start_error)
    if len(lines) - 1 > limits.max_headers and not errors:
        errors.append(SipParseError(513, f"Message Too Large (more than {limits.max_headers} header lines)"))

    # RFC 3261 §7.3.1: unfold continuation lines; names and values are kept as written.
    # ``values`` is the lookup index ``Headers`` would build on its first read.
    items = headers._items
    values: dict[str, list[str]] = {}
    max_line = limits.max_line_length
    check_length = len(head) > max_line  # else no line can be too long
    folded = False
    repeated = False  # some name has two lines (only then can a single-valued one, §7.3.1)
    names = _NAME_CACHE
    line_memo = _line_memo
    for line in lines[1:]:
        if check_length and len(line) > max_line and not errors:
            errors.append(SipParseError(513, f"Message Too Large (header line over {max_line} octets)"))
        remembered = line_memo.get(line)
        if remembered is not None:  # read before: what the reading below made of it
            item, key, value = remembered
        else:
            raw_name, colon, value = line.partition(":")
            known = names.get(raw_name) if colon else None
            if known is None:
                if line[:1] in (" ", "\t"):
                    if not items:
                        errors.append(SipParseError(400, _bad("continuation line before any header")))
                        continue
                    name, value = items[-1]
                    items[-1] = (name, (value.rstrip(_WS) + " " + line.strip(_WS)).strip(_WS))
                    folded = True
                    continue
                name = raw_name.rstrip(_WS)
                if not colon or not _HEADER_NAME_RE.match(name):
                    if not errors:
                        errors.append(SipParseError(400, _bad(f"malformed header line {line[:40]!r}")))
                    continue
                known = (name, _canonical(name))
                if len(names) < 512:  # bounded: names are peer-controlled
                    names[raw_name] = known
            name, key = known
            value = value.strip(_WS)
            item = (name, value)
            if key not in _NEW_IN_EVERY_REQUEST and len(line) <= LINE_MEMO_TEXT_LENGTH:
                _remember_line(line, item, key)
        items.append(item)
        found = values.get(key)
        if found is None:
            values[key] = [value]
        else:
            found.append(value)
            repeated = True

    if errors:
        _raise_first(errors, message)
    if oversize:
        raise SipParseError(513, "Message Too Large", message)
    if folded:  # a value changed after it was indexed: index again
        values = {}
        for name, value in items:
            values.setdefault(_canonical(name), []).append(value)
    headers._index = values
    _check_headers(message, values, repeated)
    _take_body(message, values, data, body_start, n, limits, require_content_length)
    headers._as_parsed = True
    return message


def _raise_first(errors: list[SipParseError], message: Request | Response) -> None:
    # The first problem found (start line first, then header lines in order) is reported.
    error = errors[0]
    raise SipParseError(error.status, error.reason, error.partial or message)


def _parse_start_line(line: str, limits: ParserLimits) -> tuple[Request | Response, SipParseError | None]:
    if len(line) > limits.max_line_length:
        return Response(0), SipParseError(513, "Message Too Large (start line too long)", None)
    if line[:4].upper() == "SIP/":
        return _parse_status_line(line)
    # RFC 3261 §7.1: Method SP Request-URI SP SIP-Version, single spaces (RFC 4475 §3.1.2.9/10).
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        method = parts[0] if parts and TOKEN_RE.match(parts[0]) else ""
        return Request(method, ""), SipParseError(
            400, _bad("malformed Request-Line: expected 'METHOD URI SIP/2.0' separated by single spaces"), None
        )
    method, uri_text, version = parts
    request = Request(method, uri_text, None, b"", version)  # positional: a keyword costs a dict per call
    if method not in _KNOWN_METHODS and not TOKEN_RE.match(method):
        return request, SipParseError(400, _bad(f"method is not a token: {method[:20]!r}"), None)
    if uri_text.startswith("<"):
        return request, SipParseError(400, _bad("Request-URI enclosed in angle brackets"))
    try:
        uri = shared_uri(uri_text)  # read only, here and by validate_request: no copy needed
    except UriError as error:
        return request, SipParseError(400, _bad(f"malformed Request-URI: {error}"))
    request.headers._views[("uri", uri_text)] = uri  # validate_request reads it again
    # RFC 3261 §19.1.1 Table 1: escaped headers are not allowed in a Request-URI (RFC 4475 §3.1.2.11).
    if isinstance(uri, SipUri) and uri.headers:
        return request, SipParseError(400, _bad("Request-URI must not contain headers"))
    return request, None if version == "SIP/2.0" else _check_version(version)


def _check_version(version: str) -> SipParseError | None:
    if version == "SIP/2.0":  # as every message writes it
        return None
    match = _VERSION_RE.match(version)
    if match is None:
        return SipParseError(400, _bad(f"malformed SIP-Version {version[:20]!r}"))
    if (match.group(1).lstrip("0"), match.group(2).lstrip("0")) != ("2", ""):
        # RFC 3261 §8.2.2 / RFC 4475 §3.1.2.16
        return SipParseError(505, f"Version Not Supported ({version[:20]})")
    return None


def _parse_status_line(line: str) -> tuple[Response, SipParseError | None]:
    # RFC 3261 §7.2: SIP-Version SP Status-Code SP Reason-Phrase; the phrase may be empty
    # (RFC 4475 §3.1.1.13) and may hold any UTF-8 (§3.1.1.12).
    version, _, rest = line.partition(" ")
    code_text, _, reason = rest.partition(" ")
    response = Response(0, reason, None, b"", version)  # positional, as above
    if len(code_text) != 3 or not code_text.isdigit() or not code_text.isascii():
        return response, SipParseError(400, _bad(f"malformed Status-Code {code_text[:20]!r}"))
    response.status = int(code_text)
    if not 100 <= response.status <= 699:
        # RFC 4475 §3.1.2.19: 1xx-6xx only
        return response, SipParseError(400, _bad(f"Status-Code {code_text} out of range"))
    return response, None if version == "SIP/2.0" else _check_version(version)


_cseq_memo = parse_cseq.remembered  # type: ignore[attr-defined]
_address_memo = address_facts.remembered  # type: ignore[attr-defined]


def _check_headers(message: Request | Response, values: dict[str, list[str]], repeated: bool = True) -> None:
    if repeated:
        for key in SINGLE_VALUE_HEADERS:
            found = values.get(key)
            if found is not None and len(found) > 1:
                _raise_first_duplicate(message)
    is_request = isinstance(message, Request)
    if not values.keys() >= _MANDATORY_KEYS:
        mandatory = MANDATORY_REQUEST_HEADERS if is_request else MANDATORY_RESPONSE_HEADERS
        missing = [_SPELLING[key] for key in mandatory if key not in values]
        raise SipParseError(400, _bad("missing " + ", ".join(missing)), message)
    views = message.headers._views
    try:
        first_via, *more_vias = values["via"]
        check_via_line(first_via, message.headers)  # a one-Via line: memoised, and the top-Via view
        for value in more_vias:
            check_via_line(value)
        # The memos asked directly for texts they keep (``memoised_by_text``'s wrapper inlined).
        cseq_text = values["cseq"][0]
        cseq_value = views[("cseq", cseq_text)] = (  # kept: headers.cseq
            _cseq_memo(cseq_text) if len(cseq_text) <= MEMO_TEXT_LENGTH else parse_cseq(cseq_text)
        )
        for key, spelling, tag_view in (("from", "From", "from-tag"), ("to", "To", "to-tag")):
            text = values[key][0]
            # memoised: the core re-checks the eP-CSCF's texts
            problem, tag = _address_memo(text) if len(text) <= MEMO_TEXT_LENGTH else address_facts(text)
            if problem is not None:
                raise HeaderError(spelling, problem)  # what parse_address raises
            views[(tag_view, text)] = tag  # kept: headers.from_tag / to_tag
        # RFC 3261 §20.10 / RFC 4475 §3.1.2.13: a Contact URI with headers must be in <>.
        for value in values.get("contact", ()):
            if value.strip() != "*":
                for item in split_header_list(value) if "," in value else (value,):
                    problem = (_address_memo(item) if len(item) <= MEMO_TEXT_LENGTH else address_facts(item))[0]
                    if problem is not None:
                        raise HeaderError("Contact", problem)
        if "max-forwards" in values:
            parse_max_forwards(values["max-forwards"][0])
    except HeaderError as error:
        raise SipParseError(400, _bad(f"malformed {error.header}: {error.reason}"[:200]), message) from None
    call_id = values["call-id"][0]
    if call_id.isascii():
        # ``_CALL_ID_RE`` for ASCII text, without the pattern: non-empty, printable (0x20-0x7e), no space
        good = bool(call_id) and call_id.isprintable() and " " not in call_id
    else:
        good = _CALL_ID_RE.match(call_id) is not None
    if not good:
        raise SipParseError(400, _bad("malformed Call-ID"), message)
    if is_request and cseq_value.method != message.method:
        # RFC 3261 §8.1.1.5 / RFC 4475 §3.1.2.17, §3.1.2.18
        raise SipParseError(400, _bad("CSeq method does not match the request method"), message)


def _raise_first_duplicate(message: Request | Response) -> None:
    # The first single-valued field, in line order, that appears a second time.
    seen: set[str] = set()
    for name, _ in message.headers:
        key = _canonical(name)
        if key in SINGLE_VALUE_HEADERS:
            if key in seen:
                raise SipParseError(400, _bad(f"duplicate {_SPELLING[key]}"), message)
            seen.add(key)


def _take_body(
    message: Request | Response,
    values: dict[str, list[str]],
    data: bytes,
    body_start: int,
    end: int,
    limits: ParserLimits,
    require_content_length: bool,
) -> None:
    if "content-length" not in values:
        if require_content_length:
            # RFC 3261 §18.3: mandatory on stream transports
            raise SipParseError(400, _bad("missing Content-Length"), message)
        message.body = data[body_start:end]  # RFC 3261 §18.3: datagram ends the body
        return
    text = values["content-length"][0]
    if text == "0":  # no body (every REGISTER and most responses): what the checks below conclude
        message.body = b""
        return
    text = text.strip()
    if not text.isdigit() or not text.isascii() or len(text) > 10:
        raise SipParseError(400, _bad(f"Content-Length is not a non-negative number: {text[:20]!r}"), message)
    length = int(text)
    available = end - body_start
    if length > available:
        # RFC 3261 §18.3 / RFC 4475 §3.1.2.2
        raise SipParseError(400, _bad(f"body shorter than Content-Length {length}"), message)
    # RFC 3261 §18.3 / RFC 4475 §3.1.1.8: octets past Content-Length are discarded.
    message.body = data[body_start : body_start + length]


def error_response_for(error: SipParseError) -> Response | None:
    """The response to send for ``error``, or None when none can or may be sent.

    Responses are never answered, nor is ACK (RFC 3261 §17.2.1); a request is only
    answered when its Via, From, To, Call-ID and CSeq let the response find its way
    back and match the client transaction (RFC 3261 §8.2.6, §16.3 step 1).
    """
    request = error.partial
    if not isinstance(request, Request) or not request.method or request.method == "ACK":
        return None
    headers = request.headers
    for key in MANDATORY_REQUEST_HEADERS:
        values = headers.get_all(key)
        if not values or not values[0].strip():
            return None
    try:
        # The response travels back along the top Via (RFC 3261 §18.2.2); a CSeq that does
        # not parse is copied as it came (RFC 4475 §3.1.2.4 still asks for a 400).
        parse_via_list(headers.get_all("via")[0])
    except HeaderError:
        return None
    to_tag = None
    try:
        if parse_address("To", headers.get("to") or "").tag is None:
            to_tag = new_tag()  # RFC 3261 §8.2.6.2
    except HeaderError:
        pass  # a broken To is copied as it came (RFC 4475 §3.1.2.6); no tag is glued onto it
    response = make_response(request, error.status, error.reason or None, to_tag=to_tag)
    # A request with two From/To/Call-ID/CSeq lines (RFC 4475 §3.3.8) is answered with the first.
    for key in ("from", "to", "call-id", "cseq"):
        values = response.headers.get_all(key)
        if len(values) > 1:
            response.headers.set(key, values[0])
    return response


# ---------------------------------------------------------------------------
# Stream framing (RFC 3261 §18.3, RFC 5626 §4.4.1)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageFramed:
    message: Request | Response


@dataclass(frozen=True)
class KeepAlivePing:
    """CRLFCRLF: the transport must answer with CRLF (RFC 5626 §4.4.1)."""


@dataclass(frozen=True)
class FramingError:
    error: SipParseError
    fatal: bool  # the stream cannot be re-synchronised: send the response, then close


FramerEvent = MessageFramed | KeepAlivePing | FramingError

# The first Content-Length (or compact "l") header line, any case.  Spelled with explicit
# character classes and anchored on the line feed: re.I with re.M ("^" at every line) made
# this search several times slower, and it runs for every message on a stream.  (The start
# line comes first, so no header line starts the buffer.)
_CONTENT_LENGTH_RE = re.compile(
    rb"\n(?:[Cc][Oo][Nn][Tt][Ee][Nn][Tt]-[Ll][Ee][Nn][Gg][Tt][Hh]|[Ll])[ \t]*:[ \t]*([^\r\n]*)"
)


class StreamFramer:
    """Cuts a TCP/TLS byte stream into messages.  Sans-IO: feed bytes, get events."""

    def __init__(self, limits: ParserLimits = ParserLimits()) -> None:
        self.limits = limits
        self._buffer = bytearray()
        self._closed = False

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[FramerEvent]:
        if self._closed:
            return []
        self._buffer += data
        events: list[FramerEvent] = []
        while self._buffer:
            event = self._next_event()
            if event is None:
                break
            events.append(event)
            if isinstance(event, FramingError) and event.fatal:
                self._closed = True
                self._buffer.clear()
                break
        return events

    def _next_event(self) -> FramerEvent | None:
        buffer = self._buffer
        # RFC 5626 §4.4.1: CRLFCRLF is a ping; a lone CRLF (a pong, or §7.5 padding) is ignored.
        while buffer[:1] in (b"\r", b"\n"):
            if buffer[:4] == b"\r\n\r\n":
                del buffer[:4]
                return KeepAlivePing()
            if len(buffer) < 4 and b"\r\n\r\n".startswith(bytes(buffer)):
                return None  # could still become a ping
            del buffer[: 2 if buffer[:2] == b"\r\n" else 1]
        if not buffer:
            return None
        limit = self.limits.max_message_size
        head_end = buffer.find(b"\r\n\r\n")
        if head_end < 0:
            if len(buffer) > limit:
                return FramingError(SipParseError(513, "Message Too Large (header section)", None), fatal=True)
            return None
        body_start = head_end + 4
        match = _CONTENT_LENGTH_RE.search(buffer, 0, body_start)
        length_text = match.group(1).strip() if match is not None else b""
        if not length_text.isdigit() or len(length_text) > 10:
            reason = "missing Content-Length" if match is None else "Content-Length is not a non-negative number"
            partial = self._partial(bytes(buffer[:body_start]))
            return FramingError(SipParseError(400, _bad(reason), partial), fatal=True)
        total = body_start + int(length_text)
        if total > limit:
            return FramingError(SipParseError(513, "Message Too Large", self._partial(bytes(buffer[:body_start]))), fatal=True)
        if len(buffer) < total:
            return None
        chunk = bytes(buffer[:total])
        del buffer[:total]
        try:
            return MessageFramed(parse_message(chunk, self.limits, require_content_length=True))
        except SipParseError as error:
            # A copy without traceback, cause or context: their frames reach ``feed``'s list of
            # events, which holds this FramingError -- a cycle only the collector frees.
            return FramingError(SipParseError(error.status, error.reason, error.partial), fatal=False)

    def _partial(self, head: bytes) -> Request | Response | None:
        try:
            return parse_message(head, self.limits)
        except SipParseError as error:
            return error.partial
