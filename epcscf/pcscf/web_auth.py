"""Web-credential access: a WIC admitted on a token its WWSF issued.

TS 24.371 §5 and TS 33.203 Annex U let the operator's web site (the WWSF) authenticate the
user and hand the WebRTC client a token; the eP-CSCF admits the WIC on that token and
registers it toward the core as a trusted node, without a digest exchange.  Here the token
is a JWT (RFC 7519) that the WIC presents

* in REGISTER as ``Authorization: Bearer <token>`` (RFC 8898 §2, RFC 6750 §2.1), and/or
* at the WebSocket opening handshake as ``?access_token=<token>`` in the URL (RFC 6750 §2.3)
  or an ``Authorization: Bearer`` header.  A browser's WebSocket API can set neither headers
  nor (JsSIP) extra subprotocols, and a cookie only reaches an eP-CSCF on the WWSF's site;
  the URL is the one place every browser and JsSIP carry it.  The query is never logged.

``TokenVerifier`` checks a token with PyJWT: signature (keys from a PEM or JWKS file,
re-read by ``reload``), ``exp``/``nbf`` with a leeway, ``aud`` = this eP-CSCF, ``iss`` in
an allow-list, and reads the IMPUs it grants from one claim.  ``TokenAccess`` is the
policy hook the edge calls for every REGISTER from a WIC: it refuses what the token does
not allow (401 with a ``Bearer`` challenge, RFC 6750 §3; 403 for an identity the token
does not name) and replaces the WIC's credentials with the trusted node's assertion
(``trusted_node_authorization``).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key
from twisted.logger import Logger

from epcscf.sip.headers import HeaderError, to_view
from epcscf.sip.message import Request
from epcscf.sip.proxy import ProxiedRequest, Reject
from epcscf.sip.proxy_rules import make_local_response, with_to_tag
from epcscf.sip.uri import UriError, parse_uri, uris_equal
from epcscf.ws.protocol import HandshakeRefusal

log = Logger(namespace="epcscf.pcscf.web_auth")

MODES = ("digest", "token", "both")
#: RFC 6750 §2.3: the query parameter a bearer token travels in
QUERY_PARAMETER = "access_token"
_PHRASES = {401: "Unauthorized", 403: "Forbidden"}
_QUOTABLE = re.compile(r'[^"\\\x00-\x1f\x7f]{1,256}')
#: the first two letters of a JWS "alg" → the public key types that verify it
_KEY_FAMILIES: dict[str, tuple[type, ...]] = {
    "ES": (ec.EllipticCurvePublicKey,),
    "RS": (rsa.RSAPublicKey,),
    "PS": (rsa.RSAPublicKey,),
    "Ed": (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey),
}


@dataclass(frozen=True)
class TokenSettings:
    """The ``[auth]`` section (see ``epcscf.config``), defaults filled in."""

    mode: str  # digest | token | both
    keys: str  # PEM (one or more public keys) or JWKS file
    audience: str
    issuers: tuple[str, ...]
    algorithms: tuple[str, ...] = ("ES256", "RS256", "EdDSA")
    identity_claim: str = "sub"
    leeway: float = 30.0
    handshake: str = "optional"  # off | optional | required
    realm: str = ""  # the Bearer challenge's realm (the home domain)


class TokenRejected(Exception):
    """A token that does not admit the WIC: ``status`` and ``phrase`` for the answer, ``reason``
    the counter's label."""

    def __init__(self, status: int, phrase: str, reason: str) -> None:
        super().__init__(phrase)
        self.status = status
        self.phrase = phrase
        self.reason = reason


class KeyFileError(Exception):
    """A key file that cannot be used; ``str()`` is one line naming it."""


@dataclass(frozen=True)
class WebIdentity:
    """What a verified token grants."""

    identities: tuple[str, ...]  # the IMPUs, as URIs
    private_identity: str  # the IMPI asserted toward the core
    issuer: str
    subject: str
    expires_at: float  # the token's exp (seconds since the epoch)

    def allows(self, aor: str) -> bool:
        try:
            wanted = parse_uri(aor)
        except UriError:
            return False
        for identity in self.identities:
            try:
                if uris_equal(parse_uri(identity), wanted):
                    return True
            except UriError:
                continue
        return False


def _as_uri(value: str) -> str:
    value = value.strip()
    return value if ":" in value else f"sip:{value}"


def _fingerprint(keys: list[Any]) -> str:
    """A short name for a set of public keys (the SHA-256 of their SubjectPublicKeyInfo DER)."""
    digest = hashlib.sha256()
    for key in keys:
        public = key.key if isinstance(key, jwt.PyJWK) else key
        digest.update(public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))
    return f"{len(keys)} key(s) sha256:{digest.hexdigest()[:16]}"


def load_keys(path: str) -> list[Any]:
    """The public keys in a JWKS (JSON) or PEM file: PyJWK objects or cryptography keys."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise KeyFileError(f"{path}: cannot read: {error.strerror or error}") from None
    if data.lstrip().startswith(b"{"):
        try:
            keys = list(jwt.PyJWKSet.from_dict(json.loads(data)).keys)
        except (ValueError, jwt.PyJWKSetError, jwt.PyJWKError) as error:
            raise KeyFileError(f"{path}: not a usable JWKS: {error}") from None
    else:
        keys = []
        marker = b"-----END PUBLIC KEY-----"
        for block in data.split(marker)[:-1]:
            try:
                keys.append(load_pem_public_key(block + marker + b"\n"))
            except ValueError as error:
                raise KeyFileError(f"{path}: not a PEM public key: {error}") from None
    if not keys:
        raise KeyFileError(f"{path}: holds no public key (PEM 'BEGIN PUBLIC KEY' blocks or a JWKS)")
    return keys


class TokenVerifier:
    """Checks JWTs against the keys of one file (see the module docstring)."""

    def __init__(self, settings: TokenSettings, now: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.now = now
        self._keys: list[Any] = load_keys(settings.keys)
        self.fingerprint = _fingerprint(self._keys)

    def reload(self) -> tuple[str, str] | None:
        """Re-read the key file (key rotation: SIGHUP, the console's reload()); (before, after)
        fingerprints when its keys changed, else None.  A bad file keeps the keys in use."""
        try:
            keys = load_keys(self.settings.keys)
        except KeyFileError as error:
            log.error("token keys not re-read, the keys in use kept: {error}", error=str(error))
            return None
        before, after = self.fingerprint, _fingerprint(keys)
        self._keys, self.fingerprint = keys, after
        if before == after:
            return None
        log.info("token keys re-read from {path}: {count} key(s), {after}", path=self.settings.keys, count=len(keys), after=after)
        return before, after

    def _candidates(self, token: str) -> list[Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise TokenRejected(401, "malformed token", "malformed") from None
        if header.get("alg") not in self.settings.algorithms:
            raise TokenRejected(401, "token algorithm not accepted", "algorithm")
        kid = header.get("kid")
        # Only keys of the algorithm's family (RFC 7518 §3.1, RFC 8037 §3.1): PyJWT refuses the others.
        family = _KEY_FAMILIES.get(header["alg"][:2], ())
        keys = [key for key in self._keys if isinstance(key.key if isinstance(key, jwt.PyJWK) else key, family)]
        if kid is not None:
            named = [key for key in keys if getattr(key, "key_id", None) == kid]
            if named:
                return named
        return keys

    def verify(self, token: str) -> WebIdentity:
        """What ``token`` grants; ``TokenRejected`` saying why not."""
        try:
            return self._verify(token)
        except TokenRejected:
            raise
        except (jwt.PyJWTError, ValueError, TypeError, KeyError, AttributeError):
            # Whatever else a hostile token makes the library or the claims trip over.
            raise TokenRejected(401, "malformed token", "malformed") from None

    def _verify(self, token: str) -> WebIdentity:
        settings = self.settings
        claims: dict[str, Any] | None = None
        for key in self._candidates(token):
            try:
                claims = jwt.decode(
                    token,
                    key.key if isinstance(key, jwt.PyJWK) else key,
                    algorithms=list(settings.algorithms),
                    audience=settings.audience,
                    leeway=settings.leeway,
                    options={"require": ["exp", "iss", "aud"]},
                )
                break
            except jwt.InvalidSignatureError:
                continue  # another key of the file may have signed it (rotation overlap)
            except jwt.ExpiredSignatureError:
                raise TokenRejected(401, "token expired", "expired") from None
            except jwt.ImmatureSignatureError:
                raise TokenRejected(401, "token not yet valid", "not_yet_valid") from None
            except jwt.InvalidAudienceError:
                raise TokenRejected(401, "token not for this eP-CSCF", "audience") from None
            except jwt.MissingRequiredClaimError as error:
                raise TokenRejected(401, f"token without {error.claim}", "malformed") from None
            except (jwt.InvalidKeyError, jwt.InvalidAlgorithmError, TypeError):
                continue  # a key PyJWT cannot use with this algorithm (another curve…)
            except jwt.InvalidTokenError:
                raise TokenRejected(401, "malformed token", "malformed") from None
        if claims is None:
            raise TokenRejected(401, "bad token signature", "signature")
        issuer = claims.get("iss")
        if not isinstance(issuer, str) or issuer not in settings.issuers:
            raise TokenRejected(401, "token issuer not trusted", "issuer")
        granted = claims.get(settings.identity_claim)
        values = [granted] if isinstance(granted, str) else granted if isinstance(granted, list) else []
        identities = tuple(_as_uri(value) for value in values if isinstance(value, str) and value.strip())
        if not identities:
            raise TokenRejected(401, f"token without {settings.identity_claim}", "malformed")
        impi = claims.get("impi")
        if not isinstance(impi, str) or not impi:
            impi = identities[0].split(":", 1)[1]  # TS 23.003 §13.3: user@realm
        if not _QUOTABLE.fullmatch(impi):
            # It goes into a quoted-string toward the core (RFC 3261 §25.1): no quote, escape or CTL.
            raise TokenRejected(401, "token with an unusable impi", "malformed")
        return WebIdentity(identities, impi, issuer, str(claims.get("sub", "")), float(claims["exp"]))


def bearer_token(values: Sequence[str]) -> str | None:
    """The token of the first ``Bearer`` credentials among Authorization values: the b64token
    of RFC 8898 §2 / RFC 6750 §2.1, or the ``access_token="…"`` parameter form a Gm WIC may
    send (TS 24.371 §7.2.1 writes the credentials that way)."""
    for value in values:
        scheme, _, token = value.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            continue
        name, equals, quoted = token.partition("=")
        if equals and name.strip().lower() == "access_token":
            quoted = quoted.strip()
            if len(quoted) >= 2 and quoted[0] == quoted[-1] == '"':
                quoted = quoted[1:-1]
            return quoted or None
        return token
    return None


def handshake_token(params: Mapping[str, Sequence[str]], headers: Mapping[str, str]) -> str | None:
    """The token of a WebSocket opening handshake: ``?access_token=`` or an Authorization header."""
    given = params.get(QUERY_PARAMETER)
    if given:
        return given[0].strip() or None
    authorization = headers.get("authorization")
    return bearer_token([authorization]) if authorization else None


def trusted_node_authorization(identity: WebIdentity, realm: str) -> str:
    """The Authorization the eP-CSCF puts in a token-admitted REGISTER toward the core.

    TS 24.229 §5.2.2.1 (P-CSCF) / §5.4.1.1 (S-CSCF) and TS 33.203 Annex U: with trusted node
    authentication the P-CSCF has authenticated the user itself and says so with
    ``integrity-protected="auth-done"``; the username carries the private identity and the
    response is left empty (there was no challenge)."""
    return (
        f'Digest username="{identity.private_identity}", realm="{realm}", uri="sip:{realm}", '
        f'nonce="", response="", integrity-protected="auth-done"'
    )


class TokenAccess:
    """The edge's REGISTER hook (see the module docstring); in ``digest`` mode it only refuses a
    WIC's forged ``integrity-protected`` parameter."""

    def __init__(self, settings: TokenSettings, verifier: TokenVerifier | None) -> None:
        self.settings = settings
        #: None in ``digest`` mode: only the forged-assertion check runs
        self.verifier = verifier
        #: observer of refusals, by reason (metrics)
        self.on_refused: Callable[[str], None] | None = None

    # --- the WebSocket handshake -----------------------------------------------------------

    def handshake(self, params: Mapping[str, Sequence[str]], headers: Mapping[str, str]) -> WebIdentity | HandshakeRefusal | None:
        """The identity a handshake's token grants, the HTTP refusal, or None (no token, allowed)."""
        if self.settings.handshake == "off" or self.verifier is None:
            return None
        token = handshake_token(params, headers)
        if token is None:
            if self.settings.handshake == "required":
                return self._refused_handshake(TokenRejected(401, "token required", "missing"))
            return None
        try:
            return self.verifier.verify(token)
        except TokenRejected as rejected:
            return self._refused_handshake(rejected)

    def _refused_handshake(self, rejected: TokenRejected) -> HandshakeRefusal:
        log.info("WebSocket handshake refused {status}: {phrase}", status=rejected.status, phrase=rejected.phrase)
        if self.on_refused is not None:
            self.on_refused(rejected.reason)
        return HandshakeRefusal(rejected.status, f"{_PHRASES[rejected.status]}: {rejected.phrase}")

    # --- REGISTER ----------------------------------------------------------------------------

    def register(self, context: ProxiedRequest) -> Reject | None:
        """None to forward (the request rewritten when a token admitted it), else the refusal."""
        request = context.request
        headers = request.headers
        credentials = headers.get_all("authorization")
        if any("integrity-protected" in value.lower() for value in credentials):
            # TS 24.229 §5.2.2.1: integrity-protected is the P-CSCF's statement to the S-CSCF; from
            # a WIC it is a forgery (a core trusting our "auth-done" would skip authentication).
            return self._refuse(context, TokenRejected(403, "integrity-protected is set by the P-CSCF", "forged_assertion"))
        verifier = self.verifier
        if verifier is None:
            return None
        token = bearer_token(credentials)
        flow_identity = getattr(context.connection, "credentials", None)
        try:
            if token is not None:
                identity = verifier.verify(token)
            elif isinstance(flow_identity, WebIdentity) and flow_identity.expires_at + self.settings.leeway > verifier.now():
                identity = flow_identity
            elif self.settings.mode == "both":
                return None  # digest: the core challenges as before
            elif isinstance(flow_identity, WebIdentity):
                raise TokenRejected(401, "token expired", "expired")
            else:
                raise TokenRejected(401, "token required", "missing")
            aor = _aor(request)
            if aor is None or not identity.allows(aor):
                raise TokenRejected(403, "identity not in token", "identity")
        except TokenRejected as rejected:
            return self._refuse(context, rejected)
        # The bearer token is a credential for us alone (RFC 6750 §5.3): it never reaches the core.
        headers.remove("Authorization")
        headers.add("Authorization", trusted_node_authorization(identity, self.settings.realm))
        log.debug("REGISTER of {aor} admitted on a token of {issuer}", aor=aor, issuer=identity.issuer)
        return None

    def _refuse(self, context: ProxiedRequest, rejected: TokenRejected) -> Reject:
        request = context.request
        log.info(
            "REGISTER from {flow} refused {status} ({phrase}), Call-ID {call_id}",
            flow=context.connection.id,
            status=rejected.status,
            phrase=rejected.phrase,
            call_id=request.headers.get("Call-ID") or "",
        )
        if self.on_refused is not None:
            self.on_refused(rejected.reason)
        phrase = f"{_PHRASES[rejected.status]} ({rejected.phrase})"
        response = with_to_tag(make_local_response(request, rejected.status, phrase))
        if rejected.status == 401:
            # RFC 6750 §3 / RFC 8898 §2.2: the Bearer challenge, with the error when a token came.
            challenge = f'Bearer realm="{self.settings.realm}"'
            if rejected.reason != "missing":
                challenge += f', error="invalid_token", error_description="{rejected.phrase}"'
            response.headers.add("WWW-Authenticate", challenge)
        return Reject(response)


def _aor(request: Request) -> str | None:
    try:
        address = to_view(request)
    except (HeaderError, ValueError):
        return None
    return None if address is None else str(address.uri)
