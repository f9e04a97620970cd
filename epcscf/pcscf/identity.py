"""Trust-domain rules at the edge (RFC 3325, TS 24.229 §4.4 and §5.2.6.3).

The WIC is outside the IMS trust domain: whatever it claims about identity,
charging or priority is removed before its requests enter the core, and the
eP-CSCF asserts the identity the registration proved.  Toward the WIC, the
charging headers of the core are removed (TS 24.229 §4.5.5, §5.2.7.4).
"""

from __future__ import annotations

from epcscf.sip.message import Message, Request, canonical_name
from epcscf.sip.uri import Uri, UriError, parse_name_addr, split_list, uris_equal

# Headers only a trusted node may set (TS 24.229 §4.4 trust-domain table,
# RFC 3325 §5, RFC 7315).  P-Preferred-Identity is handled by assert_identity.
UNTRUSTED_FROM_WIC: tuple[str, ...] = (
    "P-Asserted-Identity",
    "P-Charging-Vector",
    "P-Charging-Function-Addresses",
    "P-Served-User",
    "P-Profile-Key",
    "P-Asserted-Service",
    "P-Early-Media",
    "P-Visited-Network-ID",
    "P-Access-Network-Info",
    "Resource-Priority",
    "Feature-Caps",
    "P-Called-Party-ID",
)

# Core-internal headers never passed to a UE (TS 24.229 §4.5.5, §5.2.7.4).
CORE_ONLY: tuple[str, ...] = (
    "P-Charging-Vector",
    "P-Charging-Function-Addresses",
    "P-Served-User",
    "P-Profile-Key",
)


# Every header either list strips, by canonical name.
_STRIPPED = frozenset(canonical_name(name) for name in UNTRUSTED_FROM_WIC + CORE_ONLY)


def _strip(message: Message, names: tuple[str, ...]) -> list[str]:
    # Every request and response at the edge passes here and usually carries none of these:
    # one set test against the header index says so; otherwise the lines are rewritten only
    # for a name that is present (``remove`` is a pass over every line).
    headers = message.headers
    if _STRIPPED.isdisjoint(headers.names()):
        return []
    return [name for name in names if name in headers and headers.remove(name)]


def strip_untrusted_headers(message: Message) -> list[str]:
    """Remove trust-domain headers a WIC must not set; returns the names removed."""
    return _strip(message, UNTRUSTED_FROM_WIC)


def strip_core_only_headers(message: Message) -> list[str]:
    """Remove charging/served-user headers from a message going to the WIC."""
    return _strip(message, CORE_ONLY)


def _identity_uri(value: str) -> Uri | None:
    try:
        return parse_name_addr(value.strip()).uri
    except (UriError, ValueError):
        return None


def assert_identity(request: Request, associated: list[str]) -> str:
    """Set P-Asserted-Identity for a request from a registered WIC (RFC 3325 §6, TS 24.229 §5.2.6.3.3).

    The WIC's P-Preferred-Identity is honoured when it is one of its associated
    identities; otherwise the default identity (the first P-Associated-URI) is
    asserted.  P-Preferred-Identity and any P-Asserted-Identity are removed.
    Returns the asserted identity.
    """
    preferred = [
        uri
        for value in request.headers.get_all("P-Preferred-Identity")
        for item in split_list(value)
        if (uri := _identity_uri(item)) is not None
    ]
    request.headers.remove("P-Preferred-Identity")
    request.headers.remove("P-Asserted-Identity")
    registered = [(text, uri) for text in associated if (uri := _identity_uri(text)) is not None]
    chosen = next(
        (text for wanted in preferred for text, uri in registered if uris_equal(uri, wanted)),
        registered[0][0] if registered else associated[0],
    )
    asserted = _identity_uri(chosen)
    value = f"<{asserted}>" if asserted is not None else chosen
    request.headers.add("P-Asserted-Identity", value)
    return value
