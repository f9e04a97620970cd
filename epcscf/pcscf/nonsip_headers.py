"""Which of a non-SIP WIC's custom headers (the Janus SIP plugin's ``headers`` object) the
eP-CSCF's UA writes into its SIP requests: a short allow-list, because this is a border.

Janus's plugin copies any ``{"Name": "value"}`` into the request.  Here the UA writes the
identity, routing, security and dialog headers itself (TS 24.229 §5.2.6.3: the P-CSCF asserts
identity, RFC 3325; Route/Via/Contact/From/To/Call-ID/CSeq are the UA's, RFC 3261 §8.1.1), and
whatever the core reads as an instruction must not come from a page.  What is let through is
informational, end to end, and meaningless to every node on the path:

* ``Subject`` (RFC 3261 §20.36) — the call's subject, shown to the callee;
* ``User-to-User`` (RFC 7433) — application data for the far end (contact-centre context);
* ``Accept-Language`` (RFC 3261 §20.3) — languages for reason phrases and announcements.

Only on ``call`` (the INVITE) and ``accept`` (its 200).  Everything else — ``X-`` names the core
may trust, ``P-`` headers, ``Priority``/``Resource-Priority`` (emergency handling is the
network's), ``Call-Info``/``Alert-Info`` (URIs a page chooses), ``Reason`` — is refused with the
plugin's 444, as is any ``headers`` on other requests (a REGISTER carries only what the UA
writes: the registrar needs nothing of the page's).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["ALLOWED", "CustomHeaderError", "custom_headers"]

#: lower-case name → the spelling written
ALLOWED = {"subject": "Subject", "user-to-user": "User-to-User", "accept-language": "Accept-Language"}
#: at most this many custom headers, each value at most this long (RFC 7433 §4: UUI data up to
#: 128 octets before encoding, so 256 hex characters plus parameters fit)
MAX_HEADERS = 4
MAX_VALUE = 300

# RFC 3261 §25.1: a header value is TEXT-UTF8 on one line: no CR, LF or other control character
_VALUE = re.compile(r"[^\x00-\x1f\x7f]*")


class CustomHeaderError(ValueError):
    """A ``headers`` object the UA will not write (the reason names what and why)."""


def custom_headers(value: Any) -> tuple[tuple[str, str], ...]:
    """The Janus ``headers`` object as ``(name, value)`` pairs to add; CustomHeaderError otherwise."""
    if not isinstance(value, dict):
        raise CustomHeaderError("headers should be an object of name: value")
    if len(value) > MAX_HEADERS:
        raise CustomHeaderError(f"at most {MAX_HEADERS} custom headers")
    pairs = []
    for name, text in value.items():
        spelling = ALLOWED.get(str(name).lower())
        if spelling is None:
            allowed = ", ".join(ALLOWED.values())
            raise CustomHeaderError(f"header {str(name)[:40]!r} is not let through a border element (allowed: {allowed})")
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_VALUE or not _VALUE.fullmatch(text):
            raise CustomHeaderError(f"{spelling} should be one line of text, at most {MAX_VALUE} characters")
        pairs.append((spelling, text.strip()))
    return tuple(pairs)
