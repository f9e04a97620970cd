"""The registration information document a reg-event NOTIFY carries (RFC 3680 §5.3).

``parse_reginfo`` reads an ``application/reginfo+xml`` body with defusedxml (the core is
trusted, but a border element parses no XML with entity expansion or external DTDs) into
small frozen dataclasses; what the eP-CSCF does with them is ``epcscf.pcscf.reg_event``.

Only what TS 24.229 §5.2.5 needs is kept: each registration's AOR and state, and each
contact's state, event, expiry and URI.  Unknown elements and attributes are ignored
(RFC 3680 §5.3: the format is extensible).
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

REGINFO_NAMESPACE = "urn:ietf:params:xml:ns:reginfo"
REGINFO_TYPE = "application/reginfo+xml"
#: a reginfo body larger than this is refused unread (one user's contacts fit in a few KiB)
MAX_REGINFO_SIZE = 64 * 1024

#: contact events that end a binding (RFC 3680 §5.3: terminated contacts; TS 24.229 §5.2.5.1)
ENDING_EVENTS = frozenset({"expired", "deactivated", "probation", "unregistered", "rejected"})


class ReginfoError(ValueError):
    """The body is not a reginfo document we can use."""


@dataclass(frozen=True)
class ContactInfo:
    id: str
    state: str  # "active" | "terminated"
    event: str  # registered, created, refreshed, shortened, expired, deactivated, probation, unregistered, rejected
    uri: str
    expires: int | None  # seconds left (RFC 3680 §5.3 ``expires``), when given


@dataclass(frozen=True)
class RegistrationInfo:
    aor: str
    id: str
    state: str  # "init" | "active" | "terminated"
    contacts: tuple[ContactInfo, ...]


@dataclass(frozen=True)
class Reginfo:
    version: int
    state: str  # "full" | "partial"
    registrations: tuple[RegistrationInfo, ...]


def _tag(name: str) -> str:
    return f"{{{REGINFO_NAMESPACE}}}{name}"


def parse_reginfo(body: bytes) -> Reginfo:
    """``body`` → ``Reginfo``; ``ReginfoError`` for anything that is not a usable document."""
    if len(body) > MAX_REGINFO_SIZE:
        raise ReginfoError(f"reginfo of {len(body)} bytes (more than {MAX_REGINFO_SIZE})")
    try:
        root = fromstring(body, forbid_dtd=True)
    except (ParseError, DefusedXmlException, ValueError) as error:
        raise ReginfoError(f"not well-formed reginfo: {error}") from None
    if root.tag != _tag("reginfo"):
        raise ReginfoError(f"root element {root.tag!r} is not reginfo")
    version = _integer(root.get("version"), "version")
    if version is None:
        raise ReginfoError("reginfo without a version")
    state = root.get("state", "")
    if state not in ("full", "partial"):
        raise ReginfoError(f"reginfo state {state!r}")
    return Reginfo(version, state, tuple(_registration(element) for element in root.findall(_tag("registration"))))


def _registration(element: Element) -> RegistrationInfo:
    aor = element.get("aor")
    if not aor:
        raise ReginfoError("registration without an aor")
    return RegistrationInfo(
        aor=aor.strip(),
        id=element.get("id", ""),
        state=element.get("state", ""),
        contacts=tuple(_contact(contact) for contact in element.findall(_tag("contact"))),
    )


def _contact(element: Element) -> ContactInfo:
    uri = element.find(_tag("uri"))
    if uri is None or not (uri.text or "").strip():
        raise ReginfoError("contact without a uri")
    return ContactInfo(
        id=element.get("id", ""),
        state=element.get("state", ""),
        event=element.get("event", ""),
        uri=(uri.text or "").strip(),
        expires=_integer(element.get("expires"), "expires"),
    )


def _integer(text: str | None, what: str) -> int | None:
    if text is None:
        return None
    try:
        value = int(text.strip())
    except ValueError:
        raise ReginfoError(f"{what} {text!r} is not a number") from None
    if value < 0:
        raise ReginfoError(f"{what} {value} is negative")
    return value
