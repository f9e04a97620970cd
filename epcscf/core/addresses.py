"""Fast reading of the AORs of To and From and of the first Path URI of a REGISTER.

Theory of operation
-------------------
The registrar reads, of every REGISTER (RFC 3261 §10.3), only the AOR of To and From
and whether the first Path URI carries ``ob`` (RFC 5626 §5.1); Contact needs the whole
parse (``epcscf.sip.uri.parse_name_addr_list``).  The full parsers handle the whole
RFC 3261 §25.1 grammar and build objects; almost every value a registrar sees has one
plain shape::

    ["Display" | Display] <sip:user@host[:port][;uri-param...]>[;param[=token|"quoted"]...]

``ADDRESS_RE`` accepts only values of that shape whose pieces the full parsers accept as
they are (no %-escapes, no IPv6 reference, no URI headers, no backslash in a quoted
string), so a value it matches is one ``parse_name_addr`` accepts, with the URI the
groups name, read without building anything; any other value, good or bad, goes through
the full parser, which gives the precise error.  (A From carries a new tag in every
registration, so the parser's memo of whole texts does not help there.)
``tests/test_core_addresses.py`` checks both against each other.
"""

from __future__ import annotations

import re

from epcscf.sip.header_patterns import HOSTNAME_PATTERN, PARAMCHARS_PATTERN, PORT_PATTERN, TOKEN_PATTERN
from epcscf.sip.headers import HeaderError, parse_address
from epcscf.sip.uri import SipUri, TelUri, UriError, parse_name_addr_list

__all__ = ["ADDRESS_RE", "address_aor", "first_uri_has_param"]

_TOKEN = TOKEN_PATTERN
# RFC 3261 §25.1 user without escapes and without the ';', '?', '/' the full parser allows
_USER = r"[A-Za-z0-9\-_.!~*'()&=+$,]+"
_HOSTNAME = HOSTNAME_PATTERN
_PORT = PORT_PATTERN
_PARAMCHAR = PARAMCHARS_PATTERN
# a header parameter value: a quoted-string without quoted-pairs, or what the full parser
# takes up to the next ';' (no whitespace, controls, quotes or <>)
_VALUE = r'(?:"[^"\\\r\n]*"|[^;"\x00-\x20\x7f<>]+)'
_HEADER_PARAM = rf"[ \t]*;[ \t]*{_TOKEN}(?:[ \t]*=[ \t]*{_VALUE})?"

ADDRESS_RE = re.compile(
    r"[ \t]*"
    r'(?:(?P<quoted>"[^"\\\x00-\x1f]*")[ \t]*|(?P<display>[A-Za-z0-9\-.!%*_+`\'~ \t]*))'
    rf"<(?P<scheme>[Ss][Ii][Pp][Ss]?):(?:(?P<user>{_USER})@)?(?P<host>{_HOSTNAME})(?::(?P<port>{_PORT}))?"
    rf"(?P<uri_params>(?:;{_PARAMCHAR}(?:={_PARAMCHAR})?)*)>"
    rf"(?P<params>(?:{_HEADER_PARAM})*)[ \t]*\Z"
)


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


def first_uri_has_param(header: str, value: str, name: str) -> bool:
    """Whether the first address of the list ``value`` (Path, Route) is a SIP(S) URI with the
    URI parameter ``name`` (RFC 5626 §5.1 ``ob``); ``HeaderError`` when the list is malformed."""
    if "," not in value:
        match = ADDRESS_RE.match(value)
        if match is not None:
            wanted = name.lower()
            return any(part.partition("=")[0].lower() == wanted for part in match.group("uri_params").split(";")[1:])
    try:
        uri = parse_name_addr_list(value)[0].uri
    except UriError as error:
        raise HeaderError(header, str(error)) from None
    return isinstance(uri, SipUri) and name in uri.params
