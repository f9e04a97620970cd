"""SIP, SIPS, tel and other URIs, and name-addr values (RFC 3261 §19.1, §20.10, §25.1; RFC 3966).

Every piece is kept as written (escapes included) so that ``str()`` gives back the
text that arrived; comparison (``uris_equal``) decodes escapes and applies the
case rules of RFC 3261 §19.1.4.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator, MutableMapping
from urllib.parse import unquote


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
        return Params(self._items.values())

    def serialize(self) -> str:
        """``;name=value;flag`` in order, as written."""
        return "".join(
            f";{name}" if value is None else f";{name}={value}" for name, value in self._items.values()
        )


# RFC 3261 §25.1 token (also method and parameter names).
TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*\Z")
HOSTNAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-_]*[A-Za-z0-9_])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-_]*[A-Za-z0-9_])?)*\.?\Z")
IPV6_RE = re.compile(r"\[[0-9A-Fa-f:.]+\]\Z")
# RFC 3261 §25.1 user / password / param / header characters (unreserved, escaped and
# the extra punctuation each rule allows).  '%' is checked by ESCAPE_OK_RE.
USER_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()%&=+$,;?/]+\Z")
PASSWORD_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()%&=+$,]*\Z")
PARAMCHAR_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()%\[\]/:&+$]+\Z")
HEADERCHAR_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()%\[\]/?:+$]*\Z")
BAD_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Characters that can never appear in any URI we accept (whitespace, controls, <>").
FORBIDDEN_RE = re.compile(r'[\x00-\x20\x7f<>"]')
# RFC 3966 §3: telephone-subscriber characters (digits, visual separators, hex for local).
TEL_NUMBER_RE = re.compile(r"\+?[0-9A-Fa-f*#\-.()pPwW]+\Z")


def _check_escapes(text: str, what: str) -> None:
    if BAD_ESCAPE_RE.search(text):
        raise UriError(f"bad %-escape in {what}: {text!r}")


def parse_params(text: str, what: str, value_re: re.Pattern[str] | None = PARAMCHAR_RE) -> Params:
    """``;a=b;c`` (leading ';' already removed from nothing: ``text`` starts after the host)."""
    params = Params()
    if not text:
        return params
    for part in text.split(";"):
        if part == "":
            raise UriError(f"empty {what} parameter")
        name, sep, value = part.partition("=")
        if value_re is not None and (not value_re.match(name) or (sep and not value_re.match(value))):
            raise UriError(f"bad {what} parameter {part!r}")
        _check_escapes(part, f"{what} parameter")
        params[name] = value if sep else None
    return params


@dataclass
class SipUri:
    """A sip: or sips: URI (RFC 3261 §19.1.1).  Text fields keep their %-escapes."""

    host: str
    scheme: str = "sip"
    user: str | None = None
    password: str | None = None
    port: int | None = None
    params: Params = field(default_factory=Params)
    headers: Params = field(default_factory=Params)

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":" + self.password)
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out.append(f":{self.port}")
        out.append(self.params.serialize())
        if self.headers:
            out.append("?" + "&".join(f"{k}={v or ''}" for k, v in self.headers.items()))
        return "".join(out)

    @property
    def user_decoded(self) -> str | None:
        """The user part with %-escapes decoded once (RFC 3261 §19.1.4, RFC 4475 §3.1.1.3)."""
        return _decoded(self.user)

    @property
    def host_without_brackets(self) -> str:
        return self.host[1:-1] if self.host.startswith("[") else self.host

    @property
    def transport(self) -> str | None:
        value = self.params.get("transport")
        return value.lower() if value else None

    def copy(self) -> "SipUri":
        return SipUri(
            self.host, self.scheme, self.user, self.password, self.port, self.params.copy(), self.headers.copy()
        )


@dataclass
class TelUri:
    """A tel: URI (RFC 3966): a number plus parameters."""

    number: str
    params: Params = field(default_factory=Params)
    scheme: str = "tel"

    def __str__(self) -> str:
        return f"{self.scheme}:{self.number}{self.params.serialize()}"

    @property
    def is_global(self) -> bool:
        return self.number.startswith("+")


@dataclass
class AbsoluteUri:
    """Any other scheme (RFC 3261 §25.1 absoluteURI), kept as text; the proxy answers 416 later."""

    scheme: str
    rest: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.rest}"


Uri = SipUri | TelUri | AbsoluteUri


def parse_uri(text: str) -> Uri:
    """Parse a URI; raises ``UriError`` naming what is wrong."""
    if not text or FORBIDDEN_RE.search(text):
        raise UriError(f"URI is empty or has whitespace, quotes or <>: {text!r}")
    scheme, colon, rest = text.partition(":")
    if not colon or not SCHEME_RE.match(scheme):
        raise UriError(f"URI has no valid scheme: {text!r}")
    lowered = scheme.lower()
    if lowered in ("sip", "sips"):
        return _parse_sip_uri(lowered, rest, text)
    if lowered == "tel":
        return _parse_tel_uri(rest, text)
    if not rest:
        raise UriError(f"URI has nothing after the scheme: {text!r}")
    return AbsoluteUri(scheme, rest)


def _parse_sip_uri(scheme: str, rest: str, text: str) -> SipUri:
    user: str | None = None
    password: str | None = None
    # RFC 3261 §25.1: '@' never appears unescaped in user/password or host, and the
    # user part may itself contain ';' and '?' (RFC 4475 §3.1.1.9).
    at = rest.find("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, sep, pw = userinfo.partition(":")
        if not user or not USER_RE.match(user):
            raise UriError(f"bad user part in {text!r}")
        _check_escapes(user, "user")
        if sep:
            if not PASSWORD_RE.match(pw):
                raise UriError(f"bad password in {text!r}")
            _check_escapes(pw, "password")
            password = pw
    hostport, qmark, header_text = rest.partition("?")
    hostport, semi, param_text = hostport.partition(";")
    if hostport.startswith("["):
        close = hostport.find("]")
        if close < 0:
            raise UriError(f"unterminated IPv6 reference in {text!r}")
        host, port_text = hostport[: close + 1], hostport[close + 1 :]
        if not IPV6_RE.match(host):
            raise UriError(f"bad IPv6 reference in {text!r}")
        if port_text and not port_text.startswith(":"):
            raise UriError(f"junk after IPv6 reference in {text!r}")
        port_text = port_text[1:] if port_text else ""
        has_port = bool(port_text) or hostport.endswith(":")
    else:
        host, has_colon, port_text = hostport.partition(":")
        has_port = bool(has_colon)
        if not HOSTNAME_RE.match(host):
            raise UriError(f"bad host in {text!r}")
    port: int | None = None
    if has_port:
        if not port_text.isdigit() or len(port_text) > 5 or int(port_text) > 65535:
            raise UriError(f"bad port in {text!r}")
        port = int(port_text)
    params = parse_params(param_text, "URI") if semi else Params()
    headers = Params()
    if qmark:
        for part in header_text.split("&"):
            name, eq, value = part.partition("=")
            if not name or not eq or not HEADERCHAR_RE.match(name) or not HEADERCHAR_RE.match(value):
                raise UriError(f"bad URI header {part!r} in {text!r}")
            _check_escapes(part, "URI header")
            headers[name] = value
    return SipUri(host, scheme, user, password, port, params, headers)


def _parse_tel_uri(rest: str, text: str) -> TelUri:
    number, semi, param_text = rest.partition(";")
    if not TEL_NUMBER_RE.match(number):
        raise UriError(f"bad telephone number in {text!r}")
    params = parse_params(param_text, "tel", None) if semi else Params()
    return TelUri(number, params)


# ---------------------------------------------------------------------------
# Comparison, RFC 3261 §19.1.4
# ---------------------------------------------------------------------------

# RFC 3261 §19.1.4: these parameters, if present in one URI, must be present in both.
_MUST_MATCH_PARAMS = ("user", "ttl", "method", "maddr", "transport")
_VISUAL_SEPARATORS = re.compile(r"[\-.()]")


def _decoded(text: str | None) -> str | None:
    return None if text is None else unquote(text, errors="surrogateescape")


def _param_value(value: str | None) -> str | None:
    return None if value is None else _decoded(value).lower()  # type: ignore[union-attr]


def uris_equal(a: Uri, b: Uri) -> bool:
    """RFC 3261 §19.1.4 URI equivalence (RFC 3966 §4 for tel)."""
    if isinstance(a, SipUri) and isinstance(b, SipUri):
        if a.scheme != b.scheme:
            return False
        # user and password are case-sensitive, compared after decoding escapes
        if _decoded(a.user) != _decoded(b.user) or _decoded(a.password) != _decoded(b.password):
            return False
        if a.host.lower() != b.host.lower() or a.port != b.port:
            return False
        for name in _MUST_MATCH_PARAMS:
            if _param_value(a.params.get(name)) != _param_value(b.params.get(name)):
                return False
            if (name in a.params) != (name in b.params):
                return False
        for name, value in a.params.items():
            if name in b.params and _param_value(value) != _param_value(b.params[name]):
                return False
        # headers: every header in either must be in both, values compared decoded
        if {k.lower() for k in a.headers} != {k.lower() for k in b.headers}:
            return False
        return all(_decoded(v) == _decoded(b.headers[k]) for k, v in a.headers.items())
    if isinstance(a, TelUri) and isinstance(b, TelUri):
        strip = lambda n: _VISUAL_SEPARATORS.sub("", n).lower()  # noqa: E731
        if strip(a.number) != strip(b.number):
            return False
        pa = {k.lower(): _param_value(v) for k, v in a.params.items()}
        pb = {k.lower(): _param_value(v) for k, v in b.params.items()}
        return pa == pb
    if isinstance(a, AbsoluteUri) and isinstance(b, AbsoluteUri):
        return a.scheme.lower() == b.scheme.lower() and _decoded(a.rest) == _decoded(b.rest)
    return False


# ---------------------------------------------------------------------------
# name-addr / addr-spec (RFC 3261 §20.10, §25.1)
# ---------------------------------------------------------------------------

_LWS = " \t"
_DISPLAY_TOKENS_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~ \t]*\Z")


@dataclass
class NameAddr:
    """``"Display" <uri>;param=value`` (or a bare addr-spec) as in From, To, Contact, Route."""

    uri: Uri
    display_name: str | None = None  # unquoted, backslash escapes removed
    params: Params = field(default_factory=Params)
    quoted: bool = False  # display name was a quoted-string

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        name = ""
        if self.display_name:
            if self.quoted or not _DISPLAY_TOKENS_RE.match(self.display_name):
                escaped = self.display_name.replace("\\", "\\\\").replace('"', '\\"')
                name = f'"{escaped}" '
            else:
                name = f"{self.display_name} "
        return f"{name}<{self.uri}>{self.params.serialize()}"


_QUOTED_RE = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)


def _scan_quoted(text: str, start: int) -> int:
    """Index just after the closing quote of the quoted-string at ``text[start]``."""
    match = _QUOTED_RE.match(text, start)
    if match is None:
        raise UriError("unterminated quoted string")
    return match.end()


def _unquote_display(quoted: str) -> str:
    return re.sub(r"\\(.)", r"\1", quoted[1:-1], flags=re.S)


def parse_header_params(text: str) -> Params:
    """Header parameters after a name-addr or value: ``;tag=x;expires=3600`` with LWS allowed.

    Values may be tokens, hosts or quoted strings (RFC 3261 §25.1 generic-param).
    """
    params = Params()
    text = text.strip(_LWS)
    if not text:
        return params
    if text[0] != ";":
        raise UriError(f"expected ';' before parameters: {text!r}")
    if '"' not in text:
        # Fast path: no quoted values, so ';' and '=' are plain separators.
        for part in text[1:].split(";"):
            name, sep, value = part.partition("=")
            name = name.strip(_LWS)
            if not TOKEN_RE.match(name):
                raise UriError(f"bad parameter name {name!r}")
            if sep:
                value = value.strip(_LWS)
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
        while j < n and text[j] not in ";=\"" :
            j += 1
        name = text[i:j].strip(_LWS)
        if not name or not TOKEN_RE.match(name):
            raise UriError(f"bad parameter name {text[i:j]!r}")
        value: str | None = None
        i = j
        if i < n and text[i] == "=":
            i += 1
            while i < n and text[i] in _LWS:
                i += 1
            if i < n and text[i] == '"':
                end = _scan_quoted(text, i)
                value = text[i:end]
                i = end
                while i < n and text[i] in _LWS:
                    i += 1
            else:
                j = i
                while j < n and text[j] != ";":
                    j += 1
                value = text[i:j].strip(_LWS)
                if not value or FORBIDDEN_RE.search(value):
                    raise UriError(f"bad value for parameter {name!r}")
                i = j
        params[name] = value
        if i >= n:
            return params
        if text[i] != ";":
            raise UriError(f"junk after parameter {name!r}: {text[i:]!r}")
        i += 1


def parse_name_addr(text: str) -> NameAddr:
    """One From/To/Contact/Route value.  Raises ``UriError``."""
    text = text.strip(_LWS)
    if not text:
        raise UriError("empty address")
    display: str | None = None
    quoted = False
    if text[0] == '"':
        end = _scan_quoted(text, 0)
        display = _unquote_display(text[:end])
        quoted = True
        rest = text[end:].lstrip(_LWS)
        if not rest.startswith("<"):
            raise UriError("quoted display name not followed by <URI>")
    else:
        lt = text.find("<")
        if lt < 0:
            # addr-spec: RFC 3261 §20.10, parameters after the URI belong to the header,
            # so a URI with its own ';', '?' or ',' must have been enclosed in <>.
            uri_text, semi, param_text = text.partition(";")
            uri_text = uri_text.rstrip(_LWS)
            if "?" in uri_text or "," in uri_text:
                raise UriError(f"URI with '?' or ',' must be enclosed in angle brackets: {text!r}")
            uri = parse_uri(uri_text)
            return NameAddr(uri, None, parse_header_params(";" + param_text) if semi else Params())
        name_part = text[:lt].strip(_LWS)
        if not _DISPLAY_TOKENS_RE.match(name_part):
            raise UriError(f"display name has non-token characters and is not quoted: {name_part!r}")
        display = " ".join(name_part.split()) or None
        rest = text[lt:]
    gt = rest.find(">")
    if gt < 0:
        raise UriError(f"'<' without '>' in {text!r}")
    uri = parse_uri(rest[1:gt])
    return NameAddr(uri, display, parse_header_params(rest[gt + 1 :]), quoted)


def split_list(text: str) -> list[str]:
    """Split a comma-separated header value, ignoring commas in quotes and <...>."""
    if "," not in text:
        stripped = text.strip(_LWS)
        return [stripped] if stripped else []
    if '"' not in text:
        # No quoted strings: only <...> can hide a comma.  Cut at every comma and glue the
        # pieces back while a '<' is still open (the same rule as the scan below).
        if "<" not in text:
            pieces = text.split(",")
        else:
            pieces = []
            pending: str | None = None
            for piece in text.split(","):
                current = piece if pending is None else pending + "," + piece
                if current.rfind("<") > current.rfind(">"):
                    pending = current
                else:
                    pieces.append(current)
                    pending = None
            if pending is not None:
                pieces.append(pending)
        return [item for item in (piece.strip(_LWS) for piece in pieces) if item]
    items: list[str] = []
    start = 0
    i = 0
    n = len(text)
    in_angle = False
    while i < n:
        ch = text[i]
        if ch == '"' and not in_angle:
            try:
                i = _scan_quoted(text, i)
            except UriError:
                i = n
            continue
        if ch == "<":
            in_angle = True
        elif ch == ">":
            in_angle = False
        elif ch == "," and not in_angle:
            items.append(text[start:i].strip(_LWS))
            start = i + 1
        i += 1
    items.append(text[start:].strip(_LWS))
    return [item for item in items if item]


def parse_name_addr_list(text: str) -> list[NameAddr]:
    """Contact/Route/Record-Route/Path list; raises ``UriError`` on any bad element."""
    items = split_list(text)
    if not items:
        raise UriError("empty address list")
    return [parse_name_addr(item) for item in items]
