"""SIP, SIPS, tel and other URIs, and name-addr values (RFC 3261 §19.1, §20.10, §25.1; RFC 3966).

Every piece is kept as written (escapes included) so that ``str()`` gives back the
text that arrived; comparison (``uris_equal``) decodes escapes and applies the
case rules of RFC 3261 §19.1.4.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

# Parameters and quoted strings live in their own module; these names stay importable from here.
from epcscf.sip.params import (
    FORBIDDEN_RE,
    LWS as _LWS,
    TOKEN_RE,
    Params,
    UriError,
    memoised_by_text,
    parse_header_params,
    scan_quoted as _scan_quoted,
)

__all__ = [
    "UriError", "Params", "TOKEN_RE", "FORBIDDEN_RE", "SCHEME_RE", "HOSTNAME_RE", "IPV6_RE", "USER_RE",
    "PASSWORD_RE", "PARAMCHAR_RE", "HEADERCHAR_RE", "BAD_ESCAPE_RE", "TEL_NUMBER_RE", "parse_params",
    "SipUri", "TelUri", "AbsoluteUri", "Uri", "parse_uri", "uris_equal", "NameAddr",
    "parse_header_params", "parse_name_addr", "split_list", "parse_name_addr_list",
]

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


@dataclass(slots=True)
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


@dataclass(slots=True)
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

    def copy(self) -> "TelUri":
        return TelUri(self.number, self.params.copy(), self.scheme)


@dataclass(slots=True)
class AbsoluteUri:
    """Any other scheme (RFC 3261 §25.1 absoluteURI), kept as text; the proxy answers 416 later."""

    scheme: str
    rest: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.rest}"

    def copy(self) -> "AbsoluteUri":
        return AbsoluteUri(self.scheme, self.rest)


Uri = SipUri | TelUri | AbsoluteUri


# The common sip:/sips: URI (no password, %-escape or ?headers) in one pattern: every
# text it matches is one ``_parse_sip_uri`` accepts, read into the same parts.  Groups:
# scheme, user, host, port, parameters.  (RFC 3261 §25.1 user, host, port, uri-parameters.)
_URI_PARAMCHARS = r"[A-Za-z0-9\-_.!~*'()\[\]/:&+$]+"
_FAST_SIP_URI_RE = re.compile(
    r"((?i:sips?)):(?:([A-Za-z0-9\-_.!~*'()&=+$,;?/]+)@)?"
    r"([A-Za-z0-9](?:[A-Za-z0-9\-_]*[A-Za-z0-9_])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-_]*[A-Za-z0-9_])?)*\.?"
    r"|\[[0-9A-Fa-f:.]+\])"
    rf"(?::([0-9]{{1,5}}))?((?:;{_URI_PARAMCHARS}(?:={_URI_PARAMCHARS})?)*)"
)
_FAST_URI_PARAM_RE = re.compile(rf";({_URI_PARAMCHARS})(?:=({_URI_PARAMCHARS}))?")


def parse_uri(text: str) -> Uri:
    """Parse a URI; raises ``UriError`` naming what is wrong.

    Every call returns a new object, which the caller may change; the parse behind it is
    memoised by text (bounded), like ``parse_name_addr``."""
    return _parsed_uri(text).copy()


def shared_uri(text: str) -> Uri:
    """``parse_uri(text)`` without the copy: the memo's own object, shared by every reader of
    that text.  For read-only views only (the Request-URI view the parser and the proxy's
    checks read on every request); never change it."""
    return _parsed_uri(text)


def _parse_uri(text: str) -> Uri:
    match = _FAST_SIP_URI_RE.fullmatch(text)
    if match is not None:
        scheme, user, host, port_text, param_text = match.groups()
        port = int(port_text) if port_text else None
        if port is None or port <= 65535:
            params = Params.from_found(_FAST_URI_PARAM_RE.findall(param_text)) if param_text else Params()
            return SipUri(host, scheme.lower(), user, None, port, params, Params())
    return _parse_uri_general(text)


def _parse_uri_general(text: str) -> Uri:
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

_DISPLAY_TOKENS_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~ \t]*\Z")


@dataclass(slots=True)
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

    def copy(self) -> "NameAddr":
        """An independent copy (URI and parameters included)."""
        return NameAddr(self.uri.copy(), self.display_name, self.params.copy(), self.quoted)


def _unquote_display(quoted: str) -> str:
    return re.sub(r"\\(.)", r"\1", quoted[1:-1], flags=re.S)


def parse_name_addr(text: str) -> NameAddr:
    """One From/To/Contact/Route value.  Raises ``UriError``.

    Every call returns new objects, which the caller may change.  The parse behind them is
    memoised by text (bounded): a registration's To, From, Contact and Path texts recur in
    most of its messages, at the eP-CSCF and again at the core."""
    return _parsed_name_addr(text).copy()


def _parse_name_addr(text: str) -> NameAddr:
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
            uri = _parse_uri(uri_text)  # the memo keeps this object: not parse_uri's copy
            return NameAddr(uri, None, parse_header_params(";" + param_text) if semi else Params())
        if lt > 0:  # a display name of tokens before the '<'
            name_part = text[:lt].strip(_LWS)
            if not _DISPLAY_TOKENS_RE.match(name_part):
                raise UriError(f"display name has non-token characters and is not quoted: {name_part!r}")
            display = " ".join(name_part.split()) or None
        rest = text[lt:]
    gt = rest.find(">")
    if gt < 0:
        raise UriError(f"'<' without '>' in {text!r}")
    uri = _parse_uri(rest[1:gt])
    return NameAddr(uri, display, parse_header_params(rest[gt + 1 :]), quoted)


# The memos' objects never leave them (callers get copies), so nothing a caller does to its
# result can show up in another's; a text that does not parse raises every time.
_parsed_name_addr = memoised_by_text(_parse_name_addr)
_parsed_uri = memoised_by_text(_parse_uri)


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
        items = []
        for piece in pieces:  # a loop, not a generator: this runs for every Via line of a response
            piece = piece.strip(_LWS)
            if piece:
                items.append(piece)
        return items
    items = []
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
