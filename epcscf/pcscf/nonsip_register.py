"""Registration of a non-SIP WIC's user agent (TS 24.371 §7.2.1): REGISTER on its flow.

The UA registers as a SIP WIC would: ``+sip.instance`` and ``reg-id`` in the Contact ask for
RFC 5626 outbound (§4.2), so the P-CSCF binds the registration to the UA's flow and the core
reaches it through our Path; a digest challenge is answered once with the WIC's password
(RFC 3261 §22.2, RFC 7616 §3.4, the strongest algorithm of RFC 8760 offered); the binding is
refreshed at half its granted time (RFC 3261 §10.2.4 leaves the moment to the UA).
"""

from __future__ import annotations

import enum
import secrets
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from epcscf.sip.digest import ALGORITHMS, DigestParseError, compute_response, parse_digest
from epcscf.sip.message import Request, Response, new_tag
from epcscf.sip.proxy_rules import list_values
from epcscf.sip.transaction import ClientTransaction

__all__ = ["Credentials", "RegState", "UaEvent", "Registration", "TransactionOutcome", "identity_name_addr", "REGISTER_EXPIRES"]

REGISTER_EXPIRES = 600


class RegState(enum.Enum):
    UNREGISTERED = "unregistered"
    REGISTERING = "registering"
    REGISTERED = "registered"
    UNREGISTERING = "unregistering"


@dataclass(frozen=True)
class Credentials:
    aor: str  # sip:user@domain, the public identity
    user: str
    domain: str
    authuser: str
    secret: str
    display_name: str = ""
    #: a token from the WIC's web login (the Janus request's ``token``): sent as ``Authorization:
    #: Bearer`` (RFC 8898 §2.1) for the eP-CSCF's web-credential access to verify
    token: str | None = None


@dataclass(frozen=True)
class UaEvent:
    """One event for the WIC: ``result`` is the Janus SIP plugin's ``result`` object."""

    result: dict[str, Any]
    sdp: tuple[str, str] | None = None  # (jsep type, sdp)
    call_id: str | None = None


def identity_name_addr(credentials: Credentials) -> str:
    """``"Display" <sip:user@domain>`` for From (RFC 3261 §25.1: ``"`` and ``\\`` as quoted-pairs)."""
    if not credentials.display_name:
        return f"<{credentials.aor}>"
    quoted = credentials.display_name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}" <{credentials.aor}>'


class TransactionOutcome:
    """A ``ClientTransactionUser`` that hands every response to one callback; a timeout is a
    408 and a transport failure a 503 (RFC 3261 §8.1.3.1)."""

    def __init__(self, callback: Callable[[Response], None]) -> None:
        self._callback = callback

    def response_received(self, response: Response, transaction: ClientTransaction) -> None:
        self._callback(response)

    def timed_out(self, transaction: ClientTransaction) -> None:
        self._callback(Response(408, "Request Timeout"))

    def transport_failed(self, transaction: ClientTransaction, reason: str) -> None:
        self._callback(Response(503, "Service Unavailable"))


class RegisterHost(Protocol):
    """What the registration needs of its UA."""

    def via(self) -> str: ...

    def contact(self) -> str: ...

    def send(self, request: Request, user: Any) -> ClientTransaction: ...

    def emit(self, event: UaEvent) -> None: ...


def answer_challenge(request: Request, response: Response, credentials: Credentials) -> tuple[str, str] | None:
    """(header name, value) answering a 401/407 with the strongest digest algorithm we know."""
    header = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
    best: dict[str, str] | None = None
    for value in response.headers.get_all(header):
        try:
            params = parse_digest(value)
        except DigestParseError:
            continue
        algorithm = params.get("algorithm", "MD5").upper()
        if algorithm not in ALGORITHMS or "nonce" not in params or "realm" not in params:
            continue
        if best is None or (best["algorithm"] == "MD5" and algorithm != "MD5"):
            best = {**params, "algorithm": algorithm}
    if best is None:
        return None
    c = credentials
    cnonce, nc = secrets.token_hex(8), "00000001"
    qop = "auth" if "auth" in (best.get("qop") or "").replace(" ", "").split(",") else None
    digest = compute_response(
        best["algorithm"], c.authuser, best["realm"], c.secret, request.method, request.uri, best["nonce"],
        nc if qop else None, cnonce if qop else None, qop,
    )
    value = (
        f'Digest username="{c.authuser}", realm="{best["realm"]}", nonce="{best["nonce"]}", uri="{request.uri}", '
        f'response="{digest}", algorithm={best["algorithm"]}'
    )
    if "opaque" in best:
        value += f', opaque="{best["opaque"]}"'
    if qop:
        value += f', qop={qop}, nc={nc}, cnonce="{cnonce}"'
    return ("Authorization" if response.status == 401 else "Proxy-Authorization"), value


def granted_expires(response: Response, asked: int) -> int:
    """The expiry the registrar granted (Contact ``expires``, else Expires, else ours)."""
    for value in list_values(response.headers, "Contact"):
        for param in value.split(";")[1:]:
            name, _, number = param.strip().partition("=")
            if name.lower() == "expires" and number.isdigit():
                return int(number)
    header = response.headers.get("Expires")
    return int(header) if header and header.isdigit() else asked


class Registration:
    """The UA's one registration: its state, REGISTER requests and refresh timer."""

    def __init__(self, reactor: Any, host: RegisterHost) -> None:
        self._reactor = reactor
        self._host = host
        self.instance = f"<urn:uuid:{uuid.uuid4()}>"  # RFC 5626 §4.1
        self.credentials: Credentials | None = None
        self.state = RegState.UNREGISTERED
        self._call_id = secrets.token_hex(10)
        self._cseq = 0
        self._refresh: Any = None
        self._challenge_answered = False

    def register(self, credentials: Credentials) -> None:
        self.credentials = credentials
        self.state = RegState.REGISTERING
        self._host.emit(UaEvent({"event": "registering"}))
        self._send(REGISTER_EXPIRES, None)

    def unregister(self, quietly: bool = False) -> bool:
        """REGISTER with expires 0 (RFC 3261 §10.2.2); False when not registered."""
        if self.state is not RegState.REGISTERED:
            return False
        self.state = RegState.UNREGISTERING
        if not quietly:
            self._host.emit(UaEvent({"event": "unregistering"}))
        self._send(0, None)
        return True

    def stop_refreshing(self) -> None:
        if self._refresh is not None and self._refresh.active():
            self._refresh.cancel()
        self._refresh = None

    def flow_lost(self) -> None:
        """RFC 5626 §5.3.1: the binding failed with its flow."""
        self.stop_refreshing()
        if self.state is not RegState.UNREGISTERED:
            self.state = RegState.UNREGISTERED
            self._host.emit(UaEvent({"event": "registration_failed", "code": 430, "reason": "Flow Failed"}))

    def _send(self, expires: int, authorization: tuple[str, str] | None) -> None:
        assert self.credentials is not None
        self.stop_refreshing()
        self._cseq += 1
        c = self.credentials
        request = Request("REGISTER", f"sip:{c.domain}")
        request.headers.add("Via", self._host.via())
        request.headers.add("Max-Forwards", "70")
        request.headers.add("From", f"{identity_name_addr(c)};tag={new_tag()}")
        request.headers.add("To", f"<{c.aor}>")
        request.headers.add("Call-ID", self._call_id)
        request.headers.add("CSeq", f"{self._cseq} REGISTER")
        # RFC 5626 §4.2: instance id and reg-id ask for outbound: the binding lives on this flow.
        request.headers.add("Contact", f'{self._host.contact()};+sip.instance="{self.instance}";reg-id=1;expires={expires}')
        request.headers.add("Supported", "path, outbound")
        request.headers.add("Expires", str(expires))
        if authorization is not None:
            request.headers.add(*authorization)
        elif c.token is not None:
            request.headers.add("Authorization", f"Bearer {c.token}")
        self._host.send(request, TransactionOutcome(lambda response: self._answered(request, expires, response)))

    def _answered(self, request: Request, expires: int, response: Response) -> None:
        if response.status < 200 or self.credentials is None:
            return
        if response.status in (401, 407) and not self._challenge_answered and self.credentials.secret:
            authorization = answer_challenge(request, response, self.credentials)
            if authorization is not None:
                self._challenge_answered = True
                self._send(expires, authorization)
                return
        self._challenge_answered = False
        if expires == 0:
            self.state = RegState.UNREGISTERED
            self._host.emit(UaEvent({"event": "unregistered", "username": self.credentials.aor}))
        elif 200 <= response.status < 300:
            first = self.state is not RegState.REGISTERED
            self.state = RegState.REGISTERED
            granted = granted_expires(response, expires)
            self._refresh = self._reactor.callLater(max(granted / 2, 1.0), self._send, expires, None)
            if first:
                self._host.emit(UaEvent({"event": "registered", "username": self.credentials.user, "register_sent": True}))
        else:
            self.state = RegState.UNREGISTERED
            self._host.emit(UaEvent({"event": "registration_failed", "code": response.status, "reason": response.reason}))
