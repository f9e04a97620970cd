"""Registrar of the embedded core (RFC 3261 §10.3; I-CSCF and S-CSCF in one).

Theory of operation
-------------------
``Registrar.register(request)`` is sans-IO: it takes a REGISTER and returns the
final response, reading and updating the ``LocationService``.  The steps follow
RFC 3261 §10.3 in order, with the IMS additions of TS 24.229 §5.4.1:

1. the Request-URI must name our home domain (step 1);
2. every option tag in ``Require`` must be one we support, else 420 (step 2);
   we support ``path`` (RFC 3327) and ``outbound`` (RFC 5626);
3. the To AOR must be one of our users (else 403, as an I-CSCF answers for an
   identity the HSS does not know, TS 24.229 §5.3.1.2) and From must name the
   same AOR (no third-party registration in IMS, TS 24.229 §5.4.1.2.1: 403);
4. digest authentication (step 3, RFC 8760): no credentials → 401 with SHA-256
   and MD5 challenges; a stale nonce → 401 ``stale=true``; wrong credentials, or
   credentials of another user → 403 (step 4: the authenticated user must own
   the AOR).  A REGISTER from a trusted node (``trusted_node``: the eP-CSCF, when so
   configured) marked ``integrity-protected="auth-done"`` is not challenged: that node
   authenticated the user itself (web-credential access, TS 33.203 Annex U; TS 24.229
   §5.4.1.1), and the username it asserts must still own the AOR;
5. Contact processing (steps 6-7): ``*`` with ``Expires: 0`` removes every
   binding; each contact's expiry comes from its ``expires`` parameter, else the
   ``Expires`` header, else the default, is answered with 423 + ``Min-Expires``
   below the minimum and clamped to the maximum; an existing binding (same
   contact URI, or with RFC 5626 the same ``+sip.instance`` and ``reg-id``, §6)
   is replaced or removed only if the Call-ID differs or the CSeq is higher,
   otherwise the whole request fails and nothing changes;
6. 200 OK (step 8) lists every current binding with its remaining ``expires``,
   echoes ``Path`` (RFC 3327 §5.3), and adds ``Service-Route`` (RFC 3608 §6) and
   ``P-Associated-URI`` (RFC 7315 §4.1, first = default public identity).

Merged requests (482, RFC 3261 §8.2.2.2) are caught before the registrar, by
the transaction user in ``epcscf.core.service``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Protocol

from epcscf.core.addresses import address_aor, first_uri_has_param
from epcscf.sip.digest import DigestParseError, parse_digest
from epcscf.core.location import Binding, LocationService
from epcscf.core.randomness import random_hex
from epcscf.sip.headers import HeaderError, cseq, option_tags
from epcscf.sip.message import Headers, Request, Response, make_response
from epcscf.sip.uri import NameAddr, SipUri, UriError, parse_name_addr_list, parse_uri, split_list

# Option tags this registrar supports (RFC 3261 §8.2.2.3, §10.3 step 2).
SUPPORTED_OPTIONS: tuple[str, ...] = ("path", "outbound")

DEFAULT_EXPIRES = 3600  # RFC 3261 §10.3 step 7: "a locally-configured default"
DEFAULT_MIN_EXPIRES = 60  # RFC 3261 §10.2.8 / §20.23 (Min-Expires)
# Request-URIs remembered by the domain check before the memo starts again.
_SERVED_URIS_KEPT = 64


class Verification(Protocol):
    """What the registrar reads from a digest verification (``epcscf.core.digest.AuthResult``)."""

    @property
    def ok(self) -> bool: ...

    @property
    def stale(self) -> bool: ...

    @property
    def username(self) -> str | None: ...


class Authenticator(Protocol):
    """Digest authentication (``epcscf.core.digest``)."""

    def challenge(self, stale: bool = False) -> list[str]:
        """WWW-Authenticate values, strongest algorithm first (RFC 8760 §2.4)."""

    def verify(self, method: str, authorization: str, request_uri: str | None = None) -> Verification: ...


class UserDirectory(Protocol):
    """The users the core serves (``epcscf.core.users``)."""

    def public_identities(self, user: str) -> list[str] | None:
        """The user's public identities (first = default), or None for an unknown user."""


@dataclass(frozen=True)
class RegistrarSettings:
    domain: str
    #: RFC 3608: the URI of the core that originating requests of a registered user must traverse
    service_route: str
    min_expires: int = DEFAULT_MIN_EXPIRES
    max_expires: int = DEFAULT_EXPIRES
    default_expires: int = DEFAULT_EXPIRES


@dataclass
class Rejection(Exception):
    """A final non-2xx answer to the REGISTER, with headers to add."""

    status: int
    reason: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class ContactUpdate:
    """One Contact of the REGISTER, resolved against the store (RFC 3261 §10.3 step 7)."""

    contact: NameAddr
    expires: int
    instance: str | None
    reg_id: int | None
    existing: Binding | None


class Registrar:
    """Answers REGISTER requests and maintains the location service."""

    def __init__(
        self,
        settings: RegistrarSettings,
        location: LocationService,
        authenticator: Authenticator,
        users: UserDirectory,
    ) -> None:
        self.settings = settings
        self.location = location
        self.authenticator = authenticator
        self.users = users
        # Fixed for the registrar's life (settings are frozen): built once, not per REGISTER.
        self._domain = settings.domain.lower()
        self._service_route = f"<{settings.service_route}>"
        self._supported = ", ".join(SUPPORTED_OPTIONS)
        #: Request-URI text → whether it names our domain (a handful of distinct values)
        self._served_uris: dict[str, bool] = {}

    def register(self, request: Request, trusted_node: bool = False) -> Response:
        """The final response to ``request`` (a REGISTER); ``trusted_node``: it came from a node
        whose ``integrity-protected="auth-done"`` assertion is believed."""
        to_tag = random_hex(6)
        try:
            return self._register(request, to_tag, trusted_node)
        except Rejection as rejection:
            response = make_response(request, rejection.status, rejection.reason, to_tag=to_tag)
            for name, value in rejection.headers:
                response.headers.add(name, value)
            return response
        except (HeaderError, UriError) as error:
            # Bad input gets a 400 naming the field, never a traceback.
            return make_response(request, 400, f"Bad Request ({_one_line(error)})", to_tag=to_tag)

    # --- the steps ---

    def _register(self, request: Request, to_tag: str, trusted_node: bool = False) -> Response:
        if request.method != "REGISTER":
            raise Rejection(405, headers=[("Allow", "REGISTER")])
        self._check_domain(request)
        self._check_require(request)
        aor, user, identities = self._check_identity(request)
        if not (trusted_node and self._asserted(request, user)):
            self._authenticate(request, user)
        updates, wildcard = self._contact_updates(request, aor)
        call_id = request.headers.get("call-id") or ""
        outbound = self._apply(request, aor, updates, wildcard, call_id, _cseq_number(request))
        return self._success(request, to_tag, aor, identities, outbound)

    def _check_domain(self, request: Request) -> None:
        # RFC 3261 §10.3 step 1: a registrar answers for its own domain only.
        served = self._served_uris.get(request.uri)
        if served is None:
            target = parse_uri(request.uri)
            served = isinstance(target, SipUri) and target.host.lower() == self._domain
            if len(self._served_uris) >= _SERVED_URIS_KEPT:
                self._served_uris.clear()
            self._served_uris[request.uri] = served
        if not served:
            raise Rejection(404, "Domain Not Served Here")

    def _check_require(self, request: Request) -> None:
        # RFC 3261 §10.3 step 2 / §8.2.2.3: 420 listing what we do not support.
        unsupported = [tag for tag in option_tags(request, "require") if tag.lower() not in SUPPORTED_OPTIONS]
        if unsupported:
            raise Rejection(420, headers=[("Unsupported", ", ".join(unsupported))])

    def _check_identity(self, request: Request) -> tuple[str, str, list[str]]:
        """(AOR, user name, public identities) of the To header, once checked."""
        headers = request.headers
        to_value = headers.get("to")
        from_value = headers.get("from")
        if to_value is None or from_value is None:
            raise HeaderError("To", "REGISTER without To or From")
        # Both are read (and so checked) before either is judged, as the full parse would.
        aor, user, host = address_aor("To", to_value)
        from_aor = address_aor("From", from_value)[0]
        identities = None
        if user and host is not None and host.lower() == self._domain:
            identities = self.users.public_identities(user)
        if identities is None or user is None:
            # TS 24.229 §5.3.1.2: the I-CSCF answers 403 for an identity the HSS does not know.
            raise Rejection(403, f"Unknown User {aor}")
        if from_aor != aor:
            # TS 24.229 §5.4.1.2.1 / RFC 3261 §10.3 step 4: no third-party registration here.
            raise Rejection(403, "From Does Not Match To")
        return aor, user, identities

    def _authenticate(self, request: Request, to_user: str) -> None:
        credentials = request.headers.get_all("authorization")
        if not credentials:
            # RFC 3261 §22.4 / RFC 8760 §2.4: challenge with every algorithm we accept.
            raise Rejection(401, headers=[("WWW-Authenticate", value) for value in self.authenticator.challenge()])
        # RFC 7616 §3.4.6: the credentials must be for this very Request-URI.
        result = self.authenticator.verify(request.method, credentials[0], request.uri)
        if result.stale:
            # RFC 7616 §3.3 (via RFC 8760): a good response to an expired nonce → new nonce, stale=true.
            raise Rejection(
                401, headers=[("WWW-Authenticate", value) for value in self.authenticator.challenge(stale=True)]
            )
        if not result.ok:
            raise Rejection(403, "Bad Credentials")
        if result.username is None or result.username != to_user:
            # RFC 3261 §10.3 step 4: the authenticated user must be allowed to modify this AOR.
            raise Rejection(403, "Credentials Belong To Another User")

    def _asserted(self, request: Request, to_user: str) -> bool:
        """TS 24.229 §5.4.1.1: an ``integrity-protected="auth-done"`` REGISTER skips the challenge;
        its username (``user`` or ``user@domain``) must own the AOR (RFC 3261 §10.3 step 4)."""
        credentials = request.headers.get_all("authorization")
        if not credentials:
            return False
        try:
            params = parse_digest(credentials[0])
        except DigestParseError:
            return False
        if params.get("integrity-protected", "").lower() != "auth-done":
            return False
        username = params.get("username", "")
        if username not in (to_user, f"{to_user}@{self._domain}"):
            raise Rejection(403, "Asserted Identity Belongs To Another User")
        return True

    def _contact_updates(self, request: Request, aor: str) -> tuple[list[ContactUpdate], bool]:
        values = [item for value in request.headers.get_all("contact") for item in split_list(value)]
        header_expires = _expires_header(request)
        if "*" in values:
            # RFC 3261 §10.3 step 6: "*" only alone and only with Expires: 0.
            if len(values) != 1 or header_expires != 0:
                raise Rejection(400, "Bad Request (Contact * needs Expires: 0 and no other Contact)")
            return [], True
        contacts = [contact for value in values for contact in _parse_addresses("Contact", value)]
        first_hop_outbound = _first_hop_supports_outbound(request.headers.get_all("path"))
        outbound_supported: bool | None = None
        updates: list[ContactUpdate] = []
        for contact in contacts:
            if not isinstance(contact.uri, SipUri):
                raise HeaderError("Contact", f"not a SIP URI: {contact.uri}")
            expires = self._expires_for(contact, header_expires)
            instance = contact.params.get("+sip.instance")
            instance = instance.strip('"') if instance else None
            reg_id = _reg_id(contact.params.get("reg-id"))
            if instance is not None and reg_id is not None and not first_hop_outbound:
                # RFC 5626 §6: the first hop does not keep the flow (no Path with "ob" on its
                # first URI; the core itself keeps no flows toward user agents).
                if outbound_supported is None:
                    outbound_supported = "outbound" in _lower(option_tags(request, "supported"))
                if outbound_supported:
                    raise Rejection(439)
                reg_id = None
            if instance is None:
                reg_id = None
            existing = None
            if instance is not None and reg_id is not None:
                existing = self.location.find_flow(aor, instance, reg_id)
            if existing is None:
                existing = self.location.find(aor, str(contact.uri))
            updates.append(ContactUpdate(contact, expires, instance, reg_id, existing))
        too_brief = [u for u in updates if 0 < u.expires < self.settings.min_expires]
        if too_brief:
            # RFC 3261 §10.3 step 7 / §21.4.17: 423 with the shortest interval we accept.
            raise Rejection(423, headers=[("Min-Expires", str(self.settings.min_expires))])
        return updates, False

    def _expires_for(self, contact: NameAddr, header_expires: int | None) -> int:
        # RFC 3261 §10.3 step 7: contact parameter, else Expires header, else local default.
        expires = _delta_seconds(contact.params.get("expires"))
        if expires is None:
            expires = header_expires
        if expires is None:
            expires = self.settings.default_expires
        return min(expires, self.settings.max_expires)

    def _apply(
        self,
        request: Request,
        aor: str,
        updates: list[ContactUpdate],
        wildcard: bool,
        call_id: str,
        cseq: int,
    ) -> bool:
        """Check ordering for every contact, then change the store; True if RFC 5626 outbound was used."""
        existing = self.location.bindings(aor) if wildcard else [u.existing for u in updates if u.existing]
        for binding in existing:
            # RFC 3261 §10.3 step 7 (and step 6 for "*"): same Call-ID needs a higher CSeq.
            if binding is not None and binding.call_id == call_id and cseq <= binding.cseq:
                raise Rejection(500, "Out Of Order REGISTER (CSeq Not Higher)", headers=[("Retry-After", "1")])
        if wildcard:
            self.location.remove_all(aor)
            return False
        now = self.location.now()
        path = tuple(item for value in request.headers.get_all("path") for item in split_list(value))
        outbound = False
        for update in updates:
            if update.existing is not None:
                self.location.remove(update.existing)
            if update.expires == 0:
                continue
            outbound = outbound or update.reg_id is not None
            self.location.put(
                Binding(
                    aor=aor,
                    contact=str(update.contact.uri),
                    contact_params=_params_without(update.contact, "expires"),
                    path=path,
                    instance=update.instance,
                    reg_id=update.reg_id,
                    call_id=call_id,
                    cseq=cseq,
                    expires_at=now + update.expires,
                    registered_at=now,
                    q=_q_value(update.contact.params.get("q")),
                )
            )
        return outbound

    def _success(self, request: Request, to_tag: str, aor: str, identities: list[str], outbound: bool) -> Response:
        response = make_response(request, 200, to_tag=to_tag)
        now = self.location.now()
        headers: Headers = response.headers
        for binding in self.location.bindings(aor):
            headers.add("Contact", f"<{binding.contact}>{binding.contact_params};expires={binding.remaining(now)}")
        path_values = request.headers.get_all("path")
        if path_values and "path" in _lower(option_tags(request, "supported") + option_tags(request, "require")):
            # RFC 3327 §5.3: the registrar returns the stored Path to a UA that supports it.
            for value in path_values:
                headers.add("Path", value)
        # RFC 3608 §6: the route originating requests of this user must take (through us).
        headers.add("Service-Route", self._service_route)
        # RFC 7315 §4.1: the public identities of the user, the default first.
        headers.add("P-Associated-URI", ", ".join(f"<{identity}>" for identity in identities))
        if outbound:
            # RFC 5626 §6: a registrar that used outbound says so in Require.
            headers.add("Require", "outbound")
        headers.add("Supported", self._supported)
        # RFC 3261 §10.3 step 8: the response SHOULD carry a Date.
        headers.add("Date", _http_date(now))
        return response


# --- small field readers ---


_last_date: tuple[int, str] = (-1, "")


def _http_date(now: float) -> str:
    """RFC 3261 §20.17 Date (RFC 1123 form, GMT); formatted once per second, not per REGISTER."""
    global _last_date
    second = int(now)
    if _last_date[0] != second:
        _last_date = (second, formatdate(second, usegmt=True))
    return _last_date[1]


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _lower(tags: list[str]) -> set[str]:
    return {tag.lower() for tag in tags}


def _parse_addresses(header: str, value: str) -> list[NameAddr]:
    try:
        return parse_name_addr_list(value)
    except UriError as error:
        raise HeaderError(header, str(error)) from None


def _first_hop_supports_outbound(path_values: list[str]) -> bool:
    """RFC 5626 §5.1/§6: the edge proxy marks its Path URI with ``ob`` when it keeps the flow."""
    if not path_values:
        return False
    return first_uri_has_param("Path", path_values[0], "ob")


def _params_without(contact: NameAddr, name: str) -> str:
    params = contact.params.copy()
    params.pop(name, None)
    return params.serialize()


def _cseq_number(request: Request) -> int:
    value = cseq(request)
    if value is None or value.method != request.method:
        raise HeaderError("CSeq", f"missing or not for {request.method}")
    return value.number


def _expires_header(request: Request) -> int | None:
    value = request.headers.get("expires")
    if value is None:
        return None
    seconds = _delta_seconds(value)
    if seconds is None:
        raise HeaderError("Expires", f"not a number of seconds: {value!r}")
    return seconds


def _delta_seconds(value: str | None) -> int | None:
    # RFC 3261 §25.1 delta-seconds; values beyond 2**32-1 are taken as 2**32-1 (§20.19 note).
    if value is None:
        return None
    text = value.strip().strip('"')
    if not text.isdigit():
        return None
    return min(int(text), 2**32 - 1)


def _reg_id(value: str | None) -> int | None:
    # RFC 5626 §4.2: reg-id = 1*DIGIT, 1..2**31-1.
    if value is None or not value.strip().isdigit():
        return None
    number = int(value.strip())
    return number if 1 <= number < 2**31 else None


def _q_value(value: str | None) -> float:
    try:
        q = float(value) if value is not None else 1.0
    except ValueError:
        return 1.0
    return q if 0.0 <= q <= 1.0 else 1.0


__all__ = [
    "Authenticator",
    "Rejection",
    "Registrar",
    "RegistrarSettings",
    "SUPPORTED_OPTIONS",
    "UserDirectory",
    "Verification",
]
