"""Fast reading of the name-addr headers of a REGISTER (To, From, Contact, Path).

Theory of operation
-------------------
The registrar reads four address headers of every REGISTER (RFC 3261 §10.3): the AOR of
To and From, every Contact with its parameters, and the first Path URI.  The full parsers
of ``epcscf.sip.uri`` handle the whole RFC 3261 §25.1 grammar; almost every value a
registrar sees has one plain shape::

    ["Display" | Display] <sip:user@host[:port][;uri-param...]>[;param[=token|"quoted"]...]

``ADDRESS_RE`` accepts only values of that shape whose pieces the full parsers accept as
they are (no %-escapes, no IPv6 reference, no URI headers, no backslash in a quoted
string), so a value it matches is exactly what ``parse_name_addr`` makes of it; any
other value, good or bad, goes through the full parser, which gives the precise error.
``tests/test_core_addresses.py`` checks both against each other.
"""

from __future__ import annotations

import re

from epcscf.sip.headers import HeaderError, parse_address
from epcscf.sip.uri import NameAddr, Params, SipUri, TelUri, UriError, parse_name_addr_list

__all__ = ["ADDRESS_RE", "address_aor", "read_address", "read_address_list"]

_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
# RFC 3261 §25.1 user without escapes and without the ';', '?', '/' the full parser allows
_USER = r"[A-Za-z0-9\-_.!~*'()&=+$,]+"
# epcscf.sip.uri.HOSTNAME_RE (an IPv4 address is one too)
_HOSTNAME = r"[A-Za-z0-9](?:[A-Za-z0-9\-_]*[A-Za-z0-9_])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-_]*[A-Za-z0-9_])?)*\.?"
# at most five digits and at most 65535 (what parse_uri checks)
_PORT = r"(?:[0-9]{1,4}|[0-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
# epcscf.sip.uri.PARAMCHAR_RE without '%'
_PARAMCHAR = r"[A-Za-z0-9\-_.!~*'()\[\]/:&+$]+"
# a header parameter value: a quoted-string without quoted-pairs, or what the full parser
# takes up to the next ';' (no whitespace, controls, quotes or <>)
_VALUE = r'(?:"[^"\\\r\n]*"|[^;"\x00-\x20\x7f<>]+)'
_HEADER_PARAM = rf"[ \t]*;[ \t]*({_TOKEN})(?:[ \t]*=[ \t]*({_VALUE}))?"

ADDRESS_RE = re.compile(
    r"[ \t]*"
    r'(?:(?P<quoted>"[^"\\\x00-\x1f]*")[ \t]*|(?P<display>[A-Za-z0-9\-.!%*_+`\'~ \t]*))'
    rf"<(?P<scheme>[Ss][Ii][Pp][Ss]?):(?:(?P<user>{_USER})@)?(?P<host>{_HOSTNAME})(?::(?P<port>{_PORT}))?"
    rf"(?P<uri_params>(?:;{_PARAMCHAR}(?:={_PARAMCHAR})?)*)>"
    rf"(?P<params>(?:{_HEADER_PARAM})*)[ \t]*\Z"
)
_HEADER_PARAM_RE = re.compile(_HEADER_PARAM)


def address_aor(header: str, value: str) -> tuple[str, str | None, str | None]:
    """(AOR as ``epcscf.core.location.aor_of`` writes it, SIP user, SIP host) of one address.

    User and host are None unless the URI is a SIP(S) URI (the user also when it has none).
    Raises ``HeaderError`` when the value is not a name-addr/addr-spec.
    """
    match = ADDRESS_RE.match(value)
    if match is not None:
        scheme, user, host = match.group("scheme", "user", "host")
        aor = f"{scheme.lower()}:{user}@{host.lower()}" if user is not None else f"{scheme.lower()}:{host.lower()}"
        return aor, user, host
    uri = parse_address(header, value).uri
    if isinstance(uri, SipUri):
        at = f"{uri.user}@" if uri.user is not None else ""
        return f"{uri.scheme}:{at}{uri.host.lower()}", uri.user, uri.host
    if isinstance(uri, TelUri):
        return f"tel:{uri.number}", None, None
    return str(uri), None, None


def read_address(header: str, value: str) -> NameAddr:
    """``parse_address(header, value)``: one name-addr (``HeaderError`` when malformed)."""
    match = ADDRESS_RE.match(value)
    if match is None:
        return parse_address(header, value)
    quoted, display, scheme, user, host, port, uri_params, params = match.group(
        "quoted", "display", "scheme", "user", "host", "port", "uri_params", "params"
    )
    # What parse_uri / parse_params build from the same text.
    uri_params_map = Params()
    if uri_params:
        for part in uri_params[1:].split(";"):
            name, sep, param_value = part.partition("=")
            uri_params_map[name] = param_value if sep else None
    uri = SipUri(host, scheme.lower(), user, None, int(port) if port is not None else None, uri_params_map, Params())
    header_params = Params()
    if params:
        for name, param_value in _HEADER_PARAM_RE.findall(params):
            # findall gives "" for an absent value; a present one is never empty
            header_params[name] = param_value if param_value else None
    if quoted is not None:
        return NameAddr(uri, quoted[1:-1], header_params, True)
    return NameAddr(uri, " ".join(display.split()) or None, header_params, False)


def read_address_list(header: str, value: str) -> list[NameAddr]:
    """``parse_name_addr_list(value)`` (Contact, Path): ``HeaderError`` when malformed."""
    if "," not in value:
        # split_list: one element, LWS-stripped (none when blank: the full parser's error)
        item = value.strip(" \t")
        if item:
            return [read_address(header, item)]
    try:
        return parse_name_addr_list(value)
    except UriError as error:
        raise HeaderError(header, str(error)) from None
