"""Parameters of URIs and header values, and the quoted-string they may hold (RFC 3261 §7.3.1, §25.1).

``Params`` is the ordered, case-insensitive parameter map every typed view uses;
``parse_header_params`` reads the ``;name=value`` list after a header value.  Both are
re-exported by ``epcscf.sip.uri`` (import them from there).  ``memoised_by_text`` is the
bounded memo the sip modules put in front of their pure parses of header texts.
"""

from __future__ import annotations

import re
from functools import lru_cache, wraps
from typing import Callable, Iterable, Iterator, MutableMapping, TypeVar


class UriError(ValueError):
    """A URI or name-addr that does not follow the RFC 3261 §25.1 grammar."""


class Params(MutableMapping[str, "str | None"]):
    """Ordered parameters with case-insensitive names (RFC 3261 §7.3.1, §19.1.4).

    A valueless parameter (``;lr``, ``;rport``) maps to ``None``.  The name is kept as
    written for serialisation; lookups ignore case.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str | None]] | None = None) -> None:
        self._items: dict[str, tuple[str, str | None]] = {}
        if items is not None:
            for name, value in items:
                self[name] = value

    @classmethod
    def from_found(cls, found: list[tuple[str, str]]) -> "Params":
        """Built from a parser's ``(name, value)`` pairs where ``""`` means a valueless
        parameter (what ``re.findall`` gives for an absent group): one dict build instead of
        one ``__setitem__`` per parameter."""
        params = cls.__new__(cls)
        items: dict[str, tuple[str, str | None]] = {}
        for name, value in found:
            key = name.lower()
            if key in items:  # a repeated name keeps its first spelling, as __setitem__ does
                name = items[key][0]
            items[key] = (name, value or None)
        params._items = items
        return params

    def __getitem__(self, name: str) -> str | None:
        return self._items[name.lower()][1]

    def __setitem__(self, name: str, value: str | None) -> None:
        key = name.lower()
        existing = self._items.get(key)
        self._items[key] = (existing[0] if existing else name, value)

    def __delitem__(self, name: str) -> None:
        del self._items[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        # Mapping.get goes through __getitem__ and KeyError: this runs for every branch/tag read.
        item = self._items.get(name.lower())
        return default if item is None else item[1]

    def __iter__(self) -> Iterator[str]:
        return (written for written, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Params({list(self._items.values())!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Params):
            return {k: v for k, (_, v) in self._items.items()} == {
                k: v for k, (_, v) in other._items.items()
            }
        return NotImplemented

    def copy(self) -> "Params":
        params = Params.__new__(Params)
        params._items = dict(self._items)  # the (name, value) pairs are immutable: shared
        return params

    def serialize(self) -> str:
        """``;name=value;flag`` in order, as written."""
        return "".join(
            f";{name}" if value is None else f";{name}={value}" for name, value in self._items.values()
        )


# Longest text whose parse or verdict the sip modules memoise (a memo keeps its keys alive):
# From/To/Contact/Path/Via texts are far shorter; anything longer is simply parsed.
MEMO_TEXT_LENGTH = 512
# Entries per memo.  The reuse these memos serve is short-range (the eP-CSCF and the core
# reading one exchange's texts within a few reactor turns), and each entry costs ~400 bytes
# that stay resident: 512 keeps most of the hits of 4096 (benchmarks/w2_register.py: 0.75
# against ~0.72 ms of CPU per registration) for ~1 MB in all instead of ~7 MB, which at
# 1,000 idle wss connections is the difference between 38.6 and 45.3 KiB per connection.
MEMO_ENTRIES = 512

_Result = TypeVar("_Result")

#: every memo made by ``memoised_by_text`` (their ``cache_clear``), for ``clear_memos``
_MEMOS: list[Callable[[], None]] = []


def clear_memos() -> None:
    """Forget every text memo: called once a burst is over and the node is quiet.

    A memo keeps its last ``MEMO_ENTRIES`` texts; after a burst they are hostile or one-off
    texts, made throughout it and scattered over the memory it used, which they keep from
    going back (docs/performance.md, "What pins a fuzz burst's memory").  The next messages
    fill the memos again at the cost of a parse each.
    """
    for clear in _MEMOS:
        clear()


def clear_with_memos(clear: Callable[[], None]) -> None:
    """Have ``clear_memos`` call ``clear`` too (a memo-like table kept outside ``memoised_by_text``)."""
    _MEMOS.append(clear)


# RFC 3261 §25.1 token characters, for ``str.strip``: ``not text.strip(TOKEN_CHARACTERS)``
# says a text is made of them only.
TOKEN_CHARACTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.!%*_+`'~"
_TOKEN_OCTETS = TOKEN_CHARACTERS.encode()
#: what ``cut_param_value`` puts in place of the value it takes out: a token (so that a text
#: and its shape read alike) of one character, so that one search tells a text holding it
#: (not cut) and ``str.replace`` puts the value back
VALUE_PLACEHOLDER = "~"


def cut_param_value(text: str, mark: str) -> tuple[str, str] | None:
    """``(shape, value)`` for a header text holding ``mark`` (``";branch="``, ``";tag="``)
    followed by a token up to the next ``;`` or the end: ``shape`` is the text with that
    value replaced by ``VALUE_PLACEHOLDER``.  None for anything else (no mark, an empty or
    non-token value, a quote anywhere, the placeholder already in the text).

    A branch (RFC 3261 §8.1.1.7) or tag (§19.3) is new in every transaction or dialog, so
    a memo keyed by the whole text never meets it twice; keyed by the shape it does.  A
    pattern whose verdict does not depend on which token fills a parameter value reads a
    text and its shape alike, and the placeholder, found in no cut text, marks where the
    value goes back."""
    # ``partition``, not ``find``: ``str.find`` parses its arguments with ``PyArg_ParseTuple``
    # (~450 instructions a call in CPython 3.11), ``partition`` takes one argument as it is.
    head, found, tail = text.partition(mark)
    if not found:
        return None
    value, semicolon, rest = tail.partition(";")
    if not value.isascii():
        return None
    # A token: ASCII letters and digits (the usual branch or tag), else token characters only
    # (the octets' tests: ``str.isalnum`` asks Unicode's tables for every character).
    octets = value.encode()
    if not (octets.isalnum() or (octets and not octets.translate(None, _TOKEN_OCTETS))):
        return None
    if VALUE_PLACEHOLDER in text or '"' in text:
        return None
    return head + mark + VALUE_PLACEHOLDER + semicolon + rest, value


def read_by_shape(memo: dict[str, _Result], shape: str, read: Callable[[str], _Result | None], entries: int) -> _Result | None:
    """``read(shape)``, kept in ``memo`` (emptied when it holds ``entries``); a None is not kept."""
    found = memo.get(shape)
    if found is None:
        found = read(shape)
        if found is not None:
            if len(memo) >= entries:
                memo.clear()
            memo[shape] = found
    return found


def memoised_by_text(parse: Callable[[str], _Result], entries: int = MEMO_ENTRIES) -> Callable[[str], _Result]:
    """``parse`` remembered for the last ``entries`` texts up to ``MEMO_TEXT_LENGTH`` long.

    Header texts recur: the core reads the very From/To/Contact/Path/Via/CSeq texts the
    eP-CSCF read, and a dialog repeats them in every message.  Only for a pure ``parse``
    whose result is immutable or is copied before it leaves its module (the memo's objects
    must never reach a caller who could change them).  A text that raises is not kept: it
    raises again each time.
    """
    remembered = lru_cache(maxsize=entries)(parse)
    _MEMOS.append(remembered.cache_clear)

    @wraps(parse)
    def memoised(text: str) -> _Result:
        return remembered(text) if len(text) <= MEMO_TEXT_LENGTH else parse(text)

    # The cache itself, for a caller on every message's path that does the length test inline
    # (one Python call fewer per reading): ``memoised(t) == memoised.remembered(t)`` for
    # ``len(t) <= MEMO_TEXT_LENGTH``.
    memoised.remembered = remembered  # type: ignore[attr-defined]
    return memoised


# RFC 3261 §25.1 token (also method and parameter names).
TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
# Characters that can never appear in any URI we accept (whitespace, controls, <>").
FORBIDDEN_RE = re.compile(r'[\x00-\x20\x7f<>"]')
LWS = " \t"

# RFC 3261 §25.1 quoted-string: DQUOTE *(qdtext / quoted-pair) DQUOTE.  Written as runs of
# qdtext between quoted-pairs: the same language as '"(?:[^"\\]|\\.)*"', matched a run at a
# time rather than a character at a time.
_QUOTED = r'"[^"\\]*(?:\\.[^"\\]*)*"'
QUOTED_RE = re.compile(_QUOTED, re.S)


def scan_quoted(text: str, start: int) -> int:
    """Index just after the closing quote of the quoted-string at ``text[start]``."""
    match = QUOTED_RE.match(text, start)
    if match is None:
        raise UriError("unterminated quoted string")
    return match.end()


# RFC 3261 §25.1 generic-param: SEMI token [ EQUAL gen-value ], with LWS around SEMI and EQUAL.
# The value is a quoted-string or a run of characters a URI may hold (``FORBIDDEN_RE``
# excluded): exactly what the scanner in ``parse_header_params`` accepts, so a text either
# matches ``_HEADER_PARAMS_RE`` and is read with one ``findall`` or is scanned (and the
# scanner names the problem).
_PARAM_NAME = r"[A-Za-z0-9\-.!%*_+`'~]+"
_PARAM_VALUE = _QUOTED + r'|[^\x00-\x20\x7f<>";]+'
_HEADER_PARAM_RE = re.compile(rf";[ \t]*({_PARAM_NAME})[ \t]*(?:=[ \t]*({_PARAM_VALUE})[ \t]*)?", re.S)
_HEADER_PARAMS_RE = re.compile(rf"[ \t]*(?:;[ \t]*{_PARAM_NAME}[ \t]*(?:=[ \t]*(?:{_PARAM_VALUE})[ \t]*)?)*", re.S)


def parse_header_params(text: str) -> Params:
    """Header parameters after a name-addr or value: ``;tag=x;expires=3600`` with LWS allowed.

    Values may be tokens, hosts or quoted strings (RFC 3261 §25.1 generic-param); a
    quoted value is kept with its quotes.
    """
    if _HEADER_PARAMS_RE.fullmatch(text) is not None:
        return Params.from_found(_HEADER_PARAM_RE.findall(text))
    return _scan_header_params(text)


def read_matched_header_params(text: str) -> list[tuple[str, str]]:
    """The ``(name, value)`` pairs of header parameters ``text`` that a stricter pattern has
    already matched (the fast Via and address patterns of ``epcscf.sip.headers``): read
    without checking again.  ``""`` stands for no value, as in ``Params.from_found``."""
    return _HEADER_PARAM_RE.findall(text)


def _scan_header_params(text: str) -> Params:
    # The general reader, reached only by text the pattern above rejects: it names the problem.
    params = Params()
    text = text.strip(LWS)
    if not text:
        return params
    if text[0] != ";":
        raise UriError(f"expected ';' before parameters: {text!r}")
    if '"' not in text:
        # No quoted values, so ';' and '=' are plain separators.
        for part in text[1:].split(";"):
            name, sep, value = part.partition("=")
            name = name.strip(LWS)
            if not TOKEN_RE.match(name):
                raise UriError(f"bad parameter name {name!r}")
            if sep:
                value = value.strip(LWS)
                if not value or FORBIDDEN_RE.search(value):
                    raise UriError(f"bad value for parameter {name!r}")
                params[name] = value
            else:
                params[name] = None
        return params
    i, n = 1, len(text)
    while True:
        # name
        j = i
        while j < n and text[j] not in ";=\"":
            j += 1
        name = text[i:j].strip(LWS)
        if not name or not TOKEN_RE.match(name):
            raise UriError(f"bad parameter name {text[i:j]!r}")
        value: str | None = None
        i = j
        if i < n and text[i] == "=":
            i += 1
            while i < n and text[i] in LWS:
                i += 1
            if i < n and text[i] == '"':
                end = scan_quoted(text, i)
                value = text[i:end]
                i = end
                while i < n and text[i] in LWS:
                    i += 1
            else:
                j = i
                while j < n and text[j] != ";":
                    j += 1
                value = text[i:j].strip(LWS)
                if not value or FORBIDDEN_RE.search(value):
                    raise UriError(f"bad value for parameter {name!r}")
                i = j
        params[name] = value
        if i >= n:
            return params
        if text[i] != ";":
            raise UriError(f"junk after parameter {name!r}: {text[i:]!r}")
        i += 1
