"""Typed views of header values, parsed on demand from the raw strings (RFC 3261 §20, §25.1).

``Headers`` keeps each value as the text that arrived; these functions read the few
fields the proxy needs.  Every malformed value raises ``HeaderError(header, reason)``,
never another exception, so callers can answer 400 naming the header.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, TypeVar

from epcscf.sip.header_patterns import (
    FAST_ADDRESS_RE,
    FAST_VIA_RE,
    HEADER_PARAMS_PATTERN,
    HOSTNAME_PATTERN,
    PORT_PATTERN,
    TOKEN_PATTERN,
)
from epcscf.sip.message import Headers, Message
from epcscf.sip.params import (
    VALUE_PLACEHOLDER,
    clear_with_memos,
    cut_param_value,
    memoised_by_text,
    read_by_shape,
    read_matched_header_params,
)
from epcscf.sip.uri import (
    HOSTNAME_RE,
    IPV6_RE,
    TOKEN_RE,
    NameAddr,
    Params,
    UriError,
    parse_header_params,
    parse_name_addr,
    split_list,
)




_View = TypeVar("_View")
_MISSING = object()


def cached_view(headers: Headers, kind: str, value: str, parse: Callable[[str], _View]) -> _View:
    """``parse(value)``, parsed once per message: the result is kept on ``headers`` keyed by
    ``(kind, value)``, so a header whose text changes is parsed again and nothing goes stale.
    A parse that fails raises every time (errors are not kept).  The view is shared by
    every reader of the message: treat it as read-only."""
    key = (kind, value)
    views = headers._views
    found = views.get(key, _MISSING)
    if found is _MISSING:
        found = views[key] = parse(value)
    return found  # type: ignore[return-value]


class HeaderError(ValueError):
    """A header value that does not follow its grammar."""

    def __init__(self, header: str, reason: str) -> None:
        super().__init__(f"{header}: {reason}")
        self.header = header
        self.reason = reason


def split_header_list(value: str) -> list[str]:
    """Split a comma-separated header value (RFC 3261 §7.3.1), respecting quotes and <...>."""
    return split_list(value)


def parse_params(text: str, header: str = "header") -> Params:
    """``;name=value;flag`` after a header value (LWS allowed, quoted values kept quoted)."""
    try:
        return parse_header_params(text)
    except UriError as error:
        raise HeaderError(header, str(error)) from None


# ---------------------------------------------------------------------------
# Via (RFC 3261 §20.42, §18.2.1; RFC 3581 rport)
# ---------------------------------------------------------------------------

# sent-protocol with LWS allowed around the slashes (SLASH = SWS "/" SWS), then LWS, sent-by.
_VIA_RE = re.compile(
    r"\s*([A-Za-z0-9\-.!%*_+`'~]+)\s*/\s*([A-Za-z0-9\-.!%*_+`'~]+)\s*/\s*([A-Za-z0-9\-.!%*_+`'~]+)"
    r"\s+(\[[0-9A-Fa-f:.]+\]|[^\s:;\[\]]+)(?:\s*:\s*([0-9]+))?\s*(;.*)?\Z",
    re.S,
)


@dataclass(slots=True)  # made for every message (and copied): no __dict__
class Via:
    """One Via value: ``SIP/2.0/UDP host:port;branch=...;received=...;rport``."""

    transport: str
    host: str
    port: int | None = None
    params: Params = field(default_factory=Params)
    protocol: str = "SIP/2.0"

    @property
    def branch(self) -> str | None:
        item = self.params._items.get("branch")  # ``params.get("branch")``: read per message, several times
        return None if item is None else item[1]

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def rport(self) -> int | None:
        """RFC 3581: the value the server filled in (None when absent or still valueless)."""
        value = self.params.get("rport")
        return int(value) if value and value.isdigit() else None

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.protocol}/{self.transport} {self.sent_by}{self.params.serialize()}"

    def copy(self) -> "Via":
        """An independent copy (parameters included)."""
        return Via(self.transport, self.host, self.port, self.params.copy(), self.protocol)


def parse_via(value: str) -> Via:
    """One Via value (not a list)."""
    match = _VIA_RE.match(value)
    if match is None:
        raise HeaderError("Via", f"malformed value {value!r}")
    name, version, transport, host, port_text, param_text = match.groups()
    if not (IPV6_RE.match(host) or HOSTNAME_RE.match(host)):
        raise HeaderError("Via", f"bad sent-by host {host!r}")
    port = None
    if port_text is not None:
        if len(port_text) > 5 or int(port_text) > 65535:
            raise HeaderError("Via", f"bad sent-by port {port_text!r}")
        port = int(port_text)
    params = parse_params(param_text, "Via") if param_text else Params()
    ttl = params.get("ttl")
    if ttl is not None and (not ttl.isdigit() or int(ttl) > 255):
        raise HeaderError("Via", f"bad ttl {ttl!r}")
    return Via(transport.upper(), host, port, params, f"{name.upper()}/{version}")


def parse_via_list(value: str) -> list[Via]:
    """Every Via in one header line's value (``a, b`` is two Vias)."""
    items = split_header_list(value)
    if not items:
        raise HeaderError("Via", "empty value")
    return [parse_via(item) for item in items]


# FAST_VIA_RE with groups: transport, host, port, parameters.  A match is a valid Via.
_FAST_VIA_PARTS_RE = re.compile(
    rf"[ \t]*SIP/2\.0/({TOKEN_PATTERN})[ \t]+((?:{HOSTNAME_PATTERN}|\[[0-9A-Fa-f:.]+\]))(?::({PORT_PATTERN}))?({HEADER_PARAMS_PATTERN})\Z"
)


def _parse_first_via(line: str) -> Via:
    """The first Via of a header line: a new object every call.  The parse behind it is
    memoised by text (bounded) from its second reading, since a Via line recurs in the
    request and its responses, at the eP-CSCF and at the core; the memo's objects never
    leave it."""
    parsed, shared = _first_via_of_line(line)
    return parsed.copy() if shared else parsed


def _read_first_via(line: str) -> Via:
    first = line.split(",", 1)[0] if '"' not in line else split_header_list(line)[0]
    if "ttl" not in first:  # RFC 3261 §18.2.1 ttl has its own range check: full parse
        cut = cut_param_value(first, ";branch=")
        if cut is not None:
            shape, branch = cut
            parts = read_by_shape(_via_parts_by_shape, shape, _read_via_parts, VIA_SHAPE_ENTRIES)
            if parts is not None:
                transport, host, port, found = parts
                found = [(name, branch if value == VALUE_PLACEHOLDER else value) for name, value in found]
                return Via(transport, host, port, Params.from_found(found))
        else:
            parts = _read_via_parts(first)
            if parts is not None:
                transport, host, port, found = parts
                return Via(transport, host, port, Params.from_found(found) if found else Params())
    return parse_via(first)


def _read_via_parts(text: str) -> tuple[str, str, int | None, list[tuple[str, str]]] | None:
    """The fields of a Via of the common shape (transport, host, port, the parameters as
    ``read_matched_header_params`` gives them), read without the general pattern, with the
    same result as ``parse_via``; None for any other shape."""
    match = _FAST_VIA_PARTS_RE.match(text)
    if match is None:
        return None
    transport, host, port_text, param_text = match.groups()
    return transport.upper(), host, int(port_text) if port_text else None, read_matched_header_params(param_text) if param_text else []


# The fields of a Via read by its shape (``cut_param_value``): a WIC's or a core's Vias differ
# only in their branch, new in every transaction, which a memo by text never meets twice.
# The pattern reads a branch of any token alike, and the branch goes back into the fields.
VIA_SHAPE_ENTRIES = 1024
_via_parts_by_shape: dict[str, tuple[str, str, int | None, list[tuple[str, str]]]] = {}
_valid_via_shapes: set[str] = set()  # shapes FAST_VIA_RE accepts
clear_with_memos(_via_parts_by_shape.clear)
clear_with_memos(_valid_via_shapes.clear)


def _fast_via_accepts(item: str) -> bool:
    """``FAST_VIA_RE.match(item) is not None``, asked once per shape of Via."""
    cut = cut_param_value(item, ";branch=")
    if cut is None:
        return FAST_VIA_RE.match(item) is not None
    shape = cut[0]
    if shape in _valid_via_shapes:
        return True
    if FAST_VIA_RE.match(shape) is None:
        return False
    if len(_valid_via_shapes) >= VIA_SHAPE_ENTRIES:
        _valid_via_shapes.clear()
    _valid_via_shapes.add(shape)
    return True


_first_via_memo = memoised_by_text(_read_first_via)

# A Via line goes into the memo on its second reading, not its first.  At an edge in front of
# an external core every Via line is read once (each request has a new branch: the WIC's
# REGISTER, the core's response), and there a memo only costs: the insertion, the eviction
# of an older parse and a copy for the message.  In front of the embedded core the same text
# is read again within a few reactor turns (the core reads the lines the edge read, the edge
# reads its response's): from the second reading on it is memoised as before.  The texts
# read once are remembered by hash only (a collision merely sends a text to the memo).
VIA_SEEN_ENTRIES = 1024
_via_lines_seen: set[int] = set()
clear_with_memos(_via_lines_seen.clear)


# Our own Via (RFC 3261 §16.6 step 8) comes back first on every response to a request we
# forwarded (§8.2.6.2: the UAS copies the Vias as they came).  The proxy tells this module each
# Via it writes (``remember_own_via``), so that the response's check and top-Via view take the
# fields kept with the text instead of running the Via pattern again.  The part before the
# branch is read once per distinct text by ``_read_first_via`` itself, and the branch must be
# a plain token: a kept text then reads exactly as ``_read_first_via`` reads it.  Bounded like
# ``_via_lines_seen`` (responses come back within a few reactor turns).
OWN_VIA_ENTRIES = 1024
_own_vias: dict[str, tuple[str, str, int | None, str]] = {}
_own_via_prefixes: dict[str, tuple[str, str, int | None] | None] = {}
_PLAIN_BRANCH_CHARACTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-"  # [A-Za-z0-9.-]+
clear_with_memos(_own_vias.clear)
clear_with_memos(_own_via_prefixes.clear)


def remember_own_via(text: str, branch: str) -> None:
    """``text`` is a Via we write: ``SIP/2.0/<transport> <sent-by>;branch=<branch>``."""
    if not branch or branch.strip(_PLAIN_BRANCH_CHARACTERS) or not text.endswith(";branch=" + branch):
        return
    prefix = text[: len(text) - len(branch)]
    fields = _own_via_prefixes.get(prefix, _MISSING)
    if fields is _MISSING:
        fields = None
        try:
            sample = _read_first_via(prefix + "z9hG4bK")
            if list(sample.params.items()) == [("branch", "z9hG4bK")] and sample.protocol == "SIP/2.0":
                fields = (sample.transport, sample.host, sample.port)
        except HeaderError:
            pass
        if len(_own_via_prefixes) >= 64:  # a handful per node: one per transport and sent-by
            _own_via_prefixes.clear()
        _own_via_prefixes[prefix] = fields
    if fields is None:
        return
    if len(_own_vias) >= OWN_VIA_ENTRIES:
        _own_vias.clear()
    _own_vias[text] = (*fields, branch)  # type: ignore[misc]


def _first_via_of_line(line: str) -> tuple[Via, bool]:
    """``_read_first_via(line)`` and whether the object is the memo's (shared: copy it
    before it leaves this module) or a parse of its own.  Raises ``HeaderError`` as it."""
    if _own_vias:
        # The first item as ``_read_first_via`` cuts it (a kept text has no quote, '<' or LWS).
        own = _own_vias.get(line.partition(",")[0])
        if own is not None:
            transport, host, port, branch = own
            return Via(transport, host, port, Params.from_found([("branch", branch)])), False
    key = hash(line)
    seen = _via_lines_seen
    if key in seen:
        return _first_via_memo(line), True
    if len(seen) >= VIA_SEEN_ENTRIES:
        seen.clear()
    seen.add(key)
    return _read_first_via(line), False


def check_via_line(value: str, headers: Headers | None = None) -> None:
    """Raises ``HeaderError`` exactly when ``parse_via_list(value)`` does, without building
    every Via: the parser's check of each Via line.  Given the message's ``headers`` (for its
    first Via line), a valid one-Via line becomes its ``top_via_view`` here, so the memo is
    asked once per message rather than twice."""
    if "," not in value:
        try:
            parsed, shared = _first_via_of_line(value)
        except HeaderError:
            parse_via_list(value)  # names the problem
            return
        if headers is not None:
            headers._views[("top-via", value)] = parsed.copy() if shared else parsed  # what ``_parse_first_via`` gives
        return
    items = split_header_list(value)
    if not items:
        parse_via_list(value)  # raises: empty value
    rest = items
    if headers is not None and '"' not in value and "<" not in value and value.split(",", 1)[0].strip(" \t"):
        # The first item is then the text before the first comma, which ``_parse_first_via``
        # reads: one read serves as its check and as the top-Via view.  (On a response this
        # line usually holds our own Via and the requester's, RFC 3261 §8.2.6.2.)
        try:
            parsed, shared = _first_via_of_line(value)
            headers._views[("top-via", value)] = parsed.copy() if shared else parsed
            rest = items[1:]
        except HeaderError:
            pass  # checked below, which names the problem
    for item in rest:  # what parse_via_list checks, with the fast pattern first
        if "ttl" in item or not _fast_via_accepts(item):
            parse_via(item)


def top_via(message: Message) -> Via | None:
    """The first Via of the message, or None when it has none (a new object: may be changed)."""
    value = message.headers.get("via")
    if value is None:
        return None
    return _parse_first_via(value)


def view_of_first(headers: Headers, key: str, kind: str, parse: Callable[[str], _View]) -> _View | None:
    """``cached_view(headers, kind, value, parse)`` of the first line of the canonical ``key``
    (None without one): ``Headers.get`` and ``cached_view`` in one call, for the views read
    several times per message on every message's path."""
    index = headers._index
    values = (index if index is not None else headers._lookup()).get(key)
    if not values:
        return None
    view_key = (kind, values[0])
    views = headers._views
    found = views.get(view_key, _MISSING)
    if found is _MISSING:
        found = views[view_key] = parse(values[0])
    return found  # type: ignore[return-value]


def top_via_view(message: Message) -> Via | None:
    """``top_via`` parsed once per message (``cached_view``): shared, read-only."""
    return view_of_first(message.headers, "via", "top-via", _parse_first_via)


def via_line_view(headers: Headers, line: str) -> list[Via]:
    """``parse_via_list(line)`` parsed once per message (shared, read-only); a line holding
    one Via shares its parse with ``top_via_view``."""
    if "," not in line and line.strip():
        return [cached_view(headers, "top-via", line, _parse_first_via)]
    return cached_view(headers, "via-list", line, parse_via_list)


def all_vias(message: Message) -> list[Via]:
    vias: list[Via] = []
    for value in message.headers.get_all("via"):
        vias.extend(parse_via_list(value))
    return vias


# ---------------------------------------------------------------------------
# CSeq (RFC 3261 §20.16), Max-Forwards (§20.22), Content-Length (§20.14)
# ---------------------------------------------------------------------------

# RFC 3261 §8.1.1.5: the sequence number MUST be expressible as a 32-bit unsigned
# integer and less than 2**31.
CSEQ_LIMIT = 2**31


@dataclass(frozen=True)
class CSeq:
    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


# CSeq is frozen, so one parse of a text can be shared by every message that carries it
# (the request and its responses, at the eP-CSCF and at the core).
@memoised_by_text
def parse_cseq(value: str) -> CSeq:
    parts = value.split()
    if len(parts) != 2:
        raise HeaderError("CSeq", f"expected 'number method', got {value!r}")
    number_text, method = parts
    if not number_text.isdigit() or not number_text.isascii():
        raise HeaderError("CSeq", f"sequence number is not a number: {number_text!r}")
    number = int(number_text)
    if number >= CSEQ_LIMIT:
        raise HeaderError("CSeq", f"sequence number {number_text} is not below 2**31")
    if not TOKEN_RE.match(method):
        raise HeaderError("CSeq", f"method is not a token: {method!r}")
    return CSeq(number, method)


def cseq(message: Message) -> CSeq | None:
    # CSeq is frozen: one parse per message, shared (the parser leaves its parse here).
    return view_of_first(message.headers, "cseq", "cseq", parse_cseq)


def parse_max_forwards(value: str) -> int:
    text = value.strip()
    # RFC 3261 §20.22 / RFC 4475 §3.1.2.4: 1*DIGIT, and a proxy cannot forward more than 255 hops
    if not text.isdigit() or not text.isascii() or int(text) > 255:
        raise HeaderError("Max-Forwards", f"not a number from 0 to 255: {value!r}")
    return int(text)


def max_forwards(message: Message) -> int | None:
    value = message.headers.get("max-forwards")
    return None if value is None else parse_max_forwards(value)


def parse_content_length(value: str) -> int:
    text = value.strip()
    if not text.isdigit() or not text.isascii() or len(text) > 10:
        raise HeaderError("Content-Length", f"not a non-negative number: {value!r}")
    return int(text)


def content_length(message: Message) -> int | None:
    value = message.headers.get("content-length")
    return None if value is None else parse_content_length(value)


# ---------------------------------------------------------------------------
# From / To (RFC 3261 §20.20, §20.39)
# ---------------------------------------------------------------------------


def parse_address(header: str, value: str) -> NameAddr:
    """One name-addr/addr-spec value of ``header`` (From, To, Contact, ...)."""
    try:
        return parse_name_addr(value)
    except UriError as error:
        raise HeaderError(header, str(error)) from None


def from_address(message: Message) -> NameAddr | None:
    value = message.headers.get("from")
    return None if value is None else parse_address("From", value)


def to_address(message: Message) -> NameAddr | None:
    value = message.headers.get("to")
    return None if value is None else parse_address("To", value)


def _parse_from(value: str) -> NameAddr:
    return parse_address("From", value)


def _parse_to(value: str) -> NameAddr:
    return parse_address("To", value)


def from_view(message: Message) -> NameAddr | None:
    """``from_address`` parsed once per message (``cached_view``): shared, read-only."""
    headers = message.headers
    value = headers.get("from")
    return None if value is None else cached_view(headers, "from", value, _parse_from)


def to_view(message: Message) -> NameAddr | None:
    """``to_address`` parsed once per message (``cached_view``): shared, read-only."""
    headers = message.headers
    value = headers.get("to")
    return None if value is None else cached_view(headers, "to", value, _parse_to)


def to_aor(message: Message) -> str | None:
    """The To URI as text (what registrations key bindings by), worked out once per message:
    admission, limits and the registrations each ask for it per REGISTER.  Raises
    ``HeaderError`` for a malformed To, as ``to_view`` does."""
    return view_of_first(message.headers, "to", "to-aor", _aor_of_to)


@memoised_by_text
def _aor_of_to(value: str) -> str:
    # Text to text (immutable), so the bounded memo may share it: a WIC's every REGISTER
    # carries the same To, which would otherwise be parsed and written out again each time.
    return str(_parse_to(value).uri)


ADDRESS_MEMO_ENTRIES = 2048
# More entries than the other memos: each is small (the text and a tuple), and every message
# brings several From/To/Contact texts that its responses, the core and the WIC's next
# REGISTER repeat (benchmarks/w2_register.py: hits 50k of 200k at 512 entries, 178k at 4096).
@partial(memoised_by_text, entries=ADDRESS_MEMO_ENTRIES)
def address_facts(value: str) -> tuple[str | None, str | None]:
    """``(problem, tag)`` of a From/To/Contact text: why it is not a name-addr/addr-spec
    (RFC 3261 §20.10; None when it is one: ``parse_address`` raises exactly then, with this
    reason) and its tag parameter.  A pure reading of the text, so memoised: the parser's
    check and the tag views share it."""
    cut = cut_param_value(value, ";tag=")
    if cut is not None and value.rfind(">") < value.find(";tag="):
        # A tag among the header parameters (after any '>'): read by the text's shape, asked
        # once per shape, since a tag is new in every dialog (``cut_param_value``).
        shape, tag = cut
        facts = read_by_shape(_address_facts_by_shape, shape, _fast_address_facts, ADDRESS_MEMO_ENTRIES)
        if facts is not None:
            return None, tag if facts[1] == VALUE_PLACEHOLDER else facts[1]
    facts = _fast_address_facts(value)
    if facts is not None:
        return facts
    try:
        return None, parse_name_addr(value).tag
    except UriError as error:
        return str(error), None


def _fast_address_facts(value: str) -> tuple[None, str | None] | None:
    """``address_facts`` of a text ``FAST_ADDRESS_RE`` accepts (a valid address: the pattern
    accepts a subset of the grammar), None for any other: only its header parameters need
    reading, no URI parse.  The last "tag" counts, as in ``Params``."""
    match = FAST_ADDRESS_RE.match(value)
    if match is None:
        return None
    found = read_matched_header_params(match.group("params") or match.group("spec_params") or "")
    for name, param_value in reversed(found):
        if name.lower() == "tag":
            return None, param_value or None
    return None, None


#: ``_fast_address_facts`` of From/To/Contact shapes (``cut_param_value`` at ";tag=")
_address_facts_by_shape: dict[str, tuple[None, str | None]] = {}
clear_with_memos(_address_facts_by_shape.clear)


def address_problem(value: str) -> str | None:
    """Why ``value`` is not a name-addr/addr-spec, or None (see ``address_facts``)."""
    return address_facts(value)[0]


def _tag(header: str, value: str) -> str | None:
    """The tag of a From/To value; raises ``HeaderError`` exactly when ``parse_address`` does."""
    problem, tag = address_facts(value)
    if problem is not None:
        raise HeaderError(header, problem)
    return tag


def _from_tag(value: str) -> str | None:
    return _tag("From", value)


def _to_tag(value: str) -> str | None:
    return _tag("To", value)


def from_tag(message: Message) -> str | None:
    """The From tag, read once per message; raises ``HeaderError`` for a malformed From."""
    return view_of_first(message.headers, "from", "from-tag", _from_tag)


def to_tag(message: Message) -> str | None:
    """The To tag, read once per message; raises ``HeaderError`` for a malformed To."""
    return view_of_first(message.headers, "to", "to-tag", _to_tag)


def has_option_tag(message: Message, name: str, tag: str) -> bool:
    """``tag in option_tags(message, name)``, without the list: the items of each line are
    stripped and compared in C (an edge asks this of every REGISTER, RFC 3327 §5.2)."""
    for value in message.headers.lines(name):
        if tag in map(str.strip, value.split(",")):
            return True
    return False


def option_tags(message: Message, name: str) -> list[str]:
    """Require / Proxy-Require / Supported / Unsupported option tags (RFC 3261 §20.29)."""
    tags: list[str] = []
    for value in message.headers.get_all(name):
        for item in value.split(","):
            item = item.strip()
            if item:
                tags.append(item)
    return tags
