"""SIP message model (RFC 3261 §7).

A message is a start line, an ordered list of header fields and a body.  Header
values are kept as the raw text that arrived (after unfolding, RFC 3261 §7.3.1) so
that anything the proxy does not need to read is forwarded byte-for-byte; typed
views (``Via``, ``NameAddr``, ``CSeq`` ...) are parsed on demand by
``epcscf.sip.headers`` and ``epcscf.sip.uri``.

Header names are case-insensitive and have compact forms (RFC 3261 §7.3.3); the
``Headers`` container stores the name as it arrived and compares canonical names.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Iterable, Iterator, KeysView, Mapping, Sequence

# RFC 3261 §7.3.3 compact forms, plus the ones later RFCs registered
# (RFC 3515 Refer-To "r", RFC 3892 Referred-By "b", RFC 3841 "a"/"j"/"d",
# RFC 4028 Session-Expires "x", RFC 3903/6665 Event "o", RFC 5626 none).
COMPACT_FORMS: dict[str, str] = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",
    "r": "refer-to",
    "b": "referred-by",
    "u": "allow-events",
    "x": "session-expires",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
    "y": "identity",
}

# Display spelling used when we create a header ourselves.
CANONICAL_SPELLING: dict[str, str] = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "p-asserted-identity": "P-Asserted-Identity",
    "p-preferred-identity": "P-Preferred-Identity",
    "p-associated-uri": "P-Associated-URI",
    "p-charging-vector": "P-Charging-Vector",
    "p-visited-network-id": "P-Visited-Network-ID",
    "mime-version": "MIME-Version",
    "rack": "RAck",
    "rseq": "RSeq",
}


_CANONICAL_CACHE: dict[str, str] = {}


def canonical_name(name: str) -> str:
    """Lower-case long form of a header name: the key used for comparisons."""
    # Called for every header on every lookup: memoised (bounded: names come off the wire).
    cached = _CANONICAL_CACHE.get(name)
    if cached is not None:
        return cached
    lowered = name.strip().lower()
    key = COMPACT_FORMS.get(lowered, lowered)
    if len(_CANONICAL_CACHE) < 4096:
        _CANONICAL_CACHE[name] = key
    return key


_SPELLING_CACHE: dict[str, str] = {}


def display_name(name: str) -> str:
    """The conventional spelling of a header name, for headers we add."""
    cached = _SPELLING_CACHE.get(name)  # memoised like canonical_name (bounded)
    if cached is not None:
        return cached
    key = canonical_name(name)
    if key in CANONICAL_SPELLING:
        spelling = CANONICAL_SPELLING[key]
    else:
        spelling = "-".join(part.capitalize() for part in key.split("-"))
    if len(_SPELLING_CACHE) < 4096:
        _SPELLING_CACHE[name] = spelling
    return spelling


# Header fields whose values are comma-separated lists and may therefore be
# split or combined (RFC 3261 §7.3.1).  Anything not named here (notably the
# authentication headers and the date) is treated as a single value.
LIST_HEADERS: frozenset[str] = frozenset(
    {
        "via",
        "route",
        "record-route",
        "contact",
        "path",
        "service-route",
        "p-associated-uri",
        "p-asserted-identity",
        "p-preferred-identity",
        "allow",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "accept",
        "accept-encoding",
        "accept-language",
        "content-encoding",
        "allow-events",
        "reason",
    }
)


@dataclass(slots=True)
class Headers:
    """Ordered, multi-valued, case-insensitive header fields.

    Each entry is ``(name as written, value)``; one entry per header line as it
    arrived (a line may carry a comma-separated list, see ``values``).

    Lookups go through an index (canonical name → values in order) built on the first
    lookup (or handed over by the parser) and kept up to date by every method that
    changes the lines (always by putting a new list in: copies share the lists), so a message costs one pass over its header lines however often
    it is read.  Only these methods may change ``_items``.  ``_views`` holds typed views parsed from header
    values (``epcscf.sip.headers.cached_view``), keyed by the value text itself, so a
    changed value is simply parsed again: nothing there can go stale.
    """

    _items: list[tuple[str, str]] = field(default_factory=list)
    _index: dict[str, list[str]] | None = field(default=None, repr=False, compare=False)
    _views: dict[tuple[str, str], object] = field(default_factory=dict, repr=False, compare=False)
    #: True while the lines are those ``epcscf.sip.parser`` accepted (a copy's too): every
    #: method that changes a line makes it False.  A reader may then skip what the parser
    #: checked (RFC 3261 §16.3 step 1 in ``validate_request``).
    _as_parsed: bool = field(default=False, repr=False, compare=False)

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> "Headers":
        return cls(list(pairs))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def _lookup(self) -> dict[str, list[str]]:
        index = self._index
        if index is None:
            index = {}
            cache = _CANONICAL_CACHE  # inlined: this runs once per message
            for n, v in self._items:
                key = cache.get(n) or canonical_name(n)
                values = index.get(key)
                if values is None:
                    index[key] = [v]
                else:
                    values.append(v)
            self._index = index
        return index

    def lookup_index(self) -> Mapping[str, Sequence[str]]:
        """The index itself, read-only: canonical name (lower-case long form) → the values of
        its lines in order.  For readers of several fields on every message's path."""
        index = self._index
        return index if index is not None else self._lookup()

    # The readers below inline ``_lookup``'s first test: they run for every view of every message.

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        index = self._index if self._index is not None else self._lookup()
        return (_CANONICAL_CACHE.get(name) or canonical_name(name)) in index

    def names(self) -> KeysView[str]:
        """The canonical names (lower-case long form) of the header lines present."""
        index = self._index if self._index is not None else self._lookup()
        return index.keys()

    def copy(self) -> "Headers":
        # Views are immutable facts about value texts: the copy may reuse them.  The index is
        # copied too: the proxy reads both copies it makes of every request, and a copied
        # index costs a fraction of one built again from the lines.  Its lists are shared:
        # no method changes an index list in place (each puts a new list in), so a copy
        # never sees the other's changes.
        index = self._index
        return Headers(list(self._items), None if index is None else index.copy(), dict(self._views), self._as_parsed)

    def get(self, name: str, default: str | None = None) -> str | None:
        """First value of a header line named ``name``, or ``default``."""
        index = self._index if self._index is not None else self._lookup()
        values = index.get(_CANONICAL_CACHE.get(name) or canonical_name(name))
        return values[0] if values else default

    def get_all(self, name: str) -> list[str]:
        """Every header line's value for ``name``, in order (lines not split)."""
        index = self._index if self._index is not None else self._lookup()
        values = index.get(_CANONICAL_CACHE.get(name) or canonical_name(name))
        return list(values) if values else []

    def lines(self, name: str) -> Sequence[str]:
        """``get_all(name)`` without the copy, for readers on every message's path: the
        values in order, read-only (the sequence is the index's own)."""
        index = self._index if self._index is not None else self._lookup()
        values = index.get(_CANONICAL_CACHE.get(name) or canonical_name(name))
        return values if values else ()

    def count(self, name: str) -> int:
        index = self._index if self._index is not None else self._lookup()
        values = index.get(_CANONICAL_CACHE.get(name) or canonical_name(name))
        return len(values) if values else 0

    def add(self, name: str, value: str) -> None:
        """Append a header line at the end."""
        self._as_parsed = False
        self._items.append((name, value))
        index = self._index
        if index is not None:
            key = _CANONICAL_CACHE.get(name) or canonical_name(name)  # inlined: several per message
            existing = index.get(key)
            index[key] = [value] if existing is None else [*existing, value]  # a new list: see ``copy``

    def insert_first(self, name: str, value: str) -> None:
        """Put a header line before every other line of the same name (Via, Record-Route).

        If the header is absent it goes first of all, where a proxy puts its Via.
        """
        self._as_parsed = False
        key = _CANONICAL_CACHE.get(name) or canonical_name(name)
        lookup = self._index
        if lookup is not None:  # kept up to date: the proxy adds Via and Record-Route to every request
            existing = lookup.get(key)
            if existing is None:
                lookup[key] = [value]
                self._items.insert(0, (name, value))  # absent: first of all, no scan needed
                return
            lookup[key] = [value, *existing]
        cache = _CANONICAL_CACHE
        for index, (n, _) in enumerate(self._items):
            if (cache.get(n) or canonical_name(n)) == key:
                self._items.insert(index, (name, value))
                return
        self._items.insert(0, (name, value))

    def replace_first(self, name: str, value: str | None) -> bool:
        """Replace the first line of ``name`` by ``value`` where it stands, or delete that
        line when ``value`` is None; False when there is no such line.  (The proxy's Via
        work on every message: RFC 3261 §16.7 step 3, §18.2.1.)"""
        key = _CANONICAL_CACHE.get(name) or canonical_name(name)
        cache = _CANONICAL_CACHE
        items = self._items
        for position, (n, _) in enumerate(items):
            if (cache.get(n) or canonical_name(n)) == key:
                if value is None:
                    del items[position]
                else:
                    items[position] = (n, value)
                break
        else:
            return False
        self._as_parsed = False
        index = self._index
        if index is not None:
            rest = index[key][1:]
            if value is not None:
                index[key] = [value, *rest]
            elif rest:
                index[key] = rest
            else:
                del index[key]
        return True

    def set(self, name: str, value: str) -> None:
        """Replace every line of ``name`` by one line, kept at the first one's place."""
        self._as_parsed = False
        cache = _CANONICAL_CACHE  # inlined as in ``replace_all``
        key = cache.get(name) or canonical_name(name)
        index = self._index
        existing: list[str] | None = None
        if index is not None:
            # The index says how many lines there are: none → append without a walk; one → no
            # later line to drop.
            existing = index.get(key)
            index[key] = [value]
            if existing is None:
                self._items.append((name, value))
                return
        items = self._items
        for position, (n, _) in enumerate(items):
            if (cache.get(n) or canonical_name(n)) == key:
                items[position] = (n, value)
                if existing is None or len(existing) > 1:
                    items[position + 1 :] = [
                        item for item in items[position + 1 :] if (cache.get(item[0]) or canonical_name(item[0])) != key
                    ]
                return
        items.append((name, value))

    def remove(self, name: str) -> int:
        """Delete every line of ``name``; returns how many were removed."""
        self._as_parsed = False
        key = canonical_name(name)
        if self._index is not None:
            self._index.pop(key, None)
        before = len(self._items)
        self._items = [item for item in self._items if canonical_name(item[0]) != key]
        return before - len(self._items)

    def replace_all(self, name: str, values: list[str]) -> None:
        """Replace all lines of ``name`` with one line per value, at the first one's place."""
        self._as_parsed = False
        key = canonical_name(name)
        if self._index is not None:
            if values:
                self._index[key] = list(values)
            else:
                self._index.pop(key, None)
        cache = _CANONICAL_CACHE  # inlined: the proxy does this twice per message (Via)
        rest: list[tuple[str, str]] = []
        position = -1
        for item in self._items:
            if (cache.get(item[0]) or canonical_name(item[0])) == key:
                if position < 0:
                    position = len(rest)
            else:
                rest.append(item)
        if position < 0:
            position = len(rest)
        spelling = display_name(name)
        rest[position:position] = [(spelling, v) for v in values]
        self._items = rest


@dataclass(slots=True, weakref_slot=True)  # slots: no __dict__ per message; weakrefs: tests of what is let go
class Message:
    # Not an ABC: ``isinstance(x, Request)`` runs many times per message, and against a class
    # with ABCMeta it goes through ``ABCMeta.__instancecheck__`` (Python code) instead of the
    # interpreter's own test.  Only ``Request`` and ``Response`` are ever made.
    headers: Headers
    body: bytes

    # Convenience accessors for the fields every layer reads.
    @property
    def call_id(self) -> str | None:
        return self.headers.get("call-id")

    def serialize(self) -> bytes:
        """Wire form with a correct Content-Length (RFC 3261 §20.14)."""
        headers = self.headers
        index = headers._index
        if index is not None and index.get("content-length") == [str(len(self.body))]:
            # One Content-Length and it is right (the common case): every line goes out as it is.
            lines = [self.start_line(), *map(": ".join, headers._items), "\r\n"]  # "name: value"
            return "\r\n".join(lines).encode("utf-8", "surrogateescape") + self.body
        lines = [self.start_line()]
        append = lines.append
        have_length = False
        cache = _CANONICAL_CACHE  # inlined: this runs for every header of every message sent
        for name, value in self.headers._items:
            if (cache.get(name) or canonical_name(name)) == "content-length":
                if have_length:
                    continue
                have_length = True
                append(f"{name}: {len(self.body)}")
            else:
                append(f"{name}: {value}")
        if not have_length:
            append(f"Content-Length: {len(self.body)}")
        append("\r\n")
        head = "\r\n".join(lines)
        return head.encode("utf-8", "surrogateescape") + self.body

    def start_line(self) -> str:
        """``METHOD uri SIP/2.0`` or ``SIP/2.0 status reason``."""
        raise NotImplementedError


@dataclass(slots=True)
class Request(Message):
    method: str = ""
    uri: str = ""
    version: str = "SIP/2.0"

    def __init__(
        self,
        method: str,
        uri: str,
        headers: Headers | None = None,
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        self.method = method
        self.uri = uri
        self.version = version
        self.headers = headers if headers is not None else Headers()
        self.body = body

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    def copy(self) -> "Request":
        return Request(self.method, self.uri, self.headers.copy(), self.body, self.version)


@dataclass(slots=True)
class Response(Message):
    status: int = 0
    reason: str = ""
    version: str = "SIP/2.0"

    def __init__(
        self,
        status: int,
        reason: str = "",
        headers: Headers | None = None,
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers if headers is not None else Headers()
        self.body = body

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def copy(self) -> "Response":
        return Response(self.status, self.reason, self.headers.copy(), self.body, self.version)


# RFC 3261 §21 (plus RFC 3329 494, RFC 5626 430/439, RFC 6228 199, RFC 8599 555)
REASON_PHRASES: dict[int, str] = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 199: "Early Dialog Terminated",
    200: "OK", 202: "Accepted", 204: "No Notification",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Moved Temporarily",
    305: "Use Proxy", 380: "Alternative Service",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    407: "Proxy Authentication Required", 408: "Request Timeout", 410: "Gone",
    412: "Conditional Request Failed", 413: "Request Entity Too Large",
    414: "Request-URI Too Long", 415: "Unsupported Media Type",
    416: "Unsupported URI Scheme", 417: "Unknown Resource-Priority", 420: "Bad Extension",
    421: "Extension Required", 422: "Session Interval Too Small", 423: "Interval Too Brief",
    428: "Use Identity Header", 429: "Provide Referrer Identity", 430: "Flow Failed",
    433: "Anonymity Disallowed", 436: "Bad Identity-Info", 437: "Unsupported Certificate",
    438: "Invalid Identity Header", 439: "First Hop Lacks Outbound Support",
    440: "Max-Breadth Exceeded", 469: "Bad Info Package", 470: "Consent Needed",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
    482: "Loop Detected", 483: "Too Many Hops", 484: "Address Incomplete", 485: "Ambiguous",
    486: "Busy Here", 487: "Request Terminated", 488: "Not Acceptable Here",
    489: "Bad Event", 491: "Request Pending", 493: "Undecipherable",
    494: "Security Agreement Required",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 555: "Push Notification Service Not Supported",
    580: "Precondition Failure",
    600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere",
    606: "Not Acceptable", 607: "Unwanted", 608: "Rejected",
}


# RFC 3261 §19.3: a tag needs at least 32 bits of randomness; 48 bits, as 12 hex digits.
TAG_BYTES = 6


def new_tag() -> str:
    """A fresh To/From tag (RFC 3261 §19.3): every tag this element makes comes from here."""
    return secrets.token_hex(TAG_BYTES)


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    to_tag: str | None = None,
) -> Response:
    """A response to ``request`` per RFC 3261 §8.2.6.2.

    Via (all values, in order), From, Call-ID and CSeq are copied; To is copied and
    gets ``to_tag`` unless it already carries a tag (or the status is 100, which
    never gets one).
    """
    response = Response(status, reason if reason is not None else REASON_PHRASES.get(status, ""))
    add = response.headers.add
    cache = _CANONICAL_CACHE  # inlined: the core answers every REGISTER twice
    for name, value in request.headers._items:
        key = cache.get(name) or canonical_name(name)
        if key in _COPIED_TO_RESPONSES:
            add(name, value)
        elif key == "to":
            if to_tag and status != 100 and ";tag=" not in value.replace(" ", "").lower():
                value = f"{value};tag={to_tag}"
            add(name, value)
    return response


# RFC 3261 §8.2.6.2: what a response copies from its request as it is (To gets a tag).
_COPIED_TO_RESPONSES = frozenset({"via", "from", "call-id", "cseq"})
