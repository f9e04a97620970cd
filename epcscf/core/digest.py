"""Server side of SIP digest authentication (RFC 3261 §22.4 as updated by RFC 8760).

Theory of operation
-------------------
``DigestAuthenticator.challenge()`` returns the ``WWW-Authenticate`` values for a 401:
one per configured algorithm, the preferred one first (RFC 8760 §2.3: SHA-256 before
MD5), all with ``qop="auth"`` (RFC 8760 makes qop support mandatory).

``verify(method, authorization)`` checks one ``Authorization: Digest …`` value and returns
an ``AuthResult``; it never raises on bad input.  The order of checks matters for what the
registrar answers:

1. syntax, realm, algorithm, qop/nc/cnonce → ``MALFORMED`` (the registrar says 403);
2. the username → ``UNKNOWN_USER`` (403);
3. the response digest (RFC 7616 §3.4.1, with the RFC 8760 algorithm) → ``WRONG_PASSWORD``
   (403).  It is computed over the nonce the client sent, whatever its origin;
4. the nonce: ours (HMAC-signed) and younger than ``nonce_lifetime``, else ``STALE``
   (RFC 7616 §3.3: the password was right, so a new challenge with ``stale=true`` lets the
   client retry without asking its user);
5. the nonce count: each (nonce, nc) is accepted once and nc must grow (RFC 7616 §3.4
   replay protection), else ``REPLAYED``, which is also answered with a fresh challenge.

Nonces are stateless: ``base64url(issued-at ms || 8 random bytes || HMAC-SHA256-128 over
both and the realm)``.  Only the nonce counts are state, and entries expire with their
nonce.  Algorithms: ``MD5``, ``SHA-256``, ``SHA-512-256`` (RFC 7616 §3.2 names); the
``-sess`` variants, ``qop=auth-int`` and ``userhash`` are not offered and are refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import struct
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum
from typing import Protocol, Sequence

from twisted.internet.interfaces import IReactorTime

from epcscf.core.randomness import random_bytes
from epcscf.sip.digest import (
    ALGORITHMS,
    DigestParseError,
    compute_response,
    digest_hash,
    parse_digest,
    response_from_hashes,
)

__all__ = [
    "ALGORITHMS",
    "DEFAULT_ALGORITHMS",
    "AuthStatus",
    "AuthResult",
    "DigestAuthenticator",
    "DigestParseError",
    "PasswordSource",
    "compute_response",
    "parse_digest",
]

# RFC 8760 §2.3: challenge with the preferred algorithm first; MD5 stays for old clients (JsSIP).
DEFAULT_ALGORITHMS: tuple[str, ...] = ("SHA-256", "MD5")
DEFAULT_NONCE_LIFETIME = 300.0
# RFC 7616 §3.3: algorithm names are case-insensitive; lower-cased → as registered.
_ALGORITHM_NAMES: dict[str, str] = {name.lower(): name for name in ALGORITHMS}
# H(method:uri) values kept (RFC 7616 §3.4.3): a handful of Request-URIs in practice.
_HA2_KEPT = 256

_NONCE_RANDOM = 8
_NONCE_TAG = 16
_NONCE_LENGTH = 8 + _NONCE_RANDOM + _NONCE_TAG
_NC_RE = re.compile(r"[0-9A-Fa-f]{8}\Z")
_QUOTABLE_RE = re.compile(r'[^"\\\r\n]*\Z')


class AuthStatus(Enum):
    OK = "ok"
    STALE = "stale nonce"
    REPLAYED = "replayed nonce count"
    WRONG_PASSWORD = "wrong password"
    UNKNOWN_USER = "unknown user"
    MALFORMED = "malformed credentials"


@dataclass(frozen=True)
class AuthResult:
    status: AuthStatus
    #: the username the credentials claim (None when they could not be read)
    username: str | None = None
    algorithm: str | None = None
    #: what exactly was wrong, for logs
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status is AuthStatus.OK

    @property
    def stale(self) -> bool:
        """Right password, but the nonce is expired/foreign/replayed: challenge again with stale=true."""
        return self.status in (AuthStatus.STALE, AuthStatus.REPLAYED)


class PasswordSource(Protocol):
    def password(self, name: str) -> str | None: ...


class DigestAuthenticator:
    """Challenges and verifies SIP digest credentials for one realm."""

    def __init__(
        self,
        realm: str,
        users: PasswordSource,
        clock: IReactorTime,
        nonce_lifetime: float = DEFAULT_NONCE_LIFETIME,
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
        key: bytes | None = None,
        check_nonce_count: bool = True,
    ) -> None:
        if not realm or not _QUOTABLE_RE.match(realm):
            raise ValueError(f"realm {realm!r} must be non-empty and hold no quote, backslash or newline")
        unknown = [name for name in algorithms if name not in ALGORITHMS]
        if unknown or not algorithms:
            raise ValueError(f"digest algorithms must be some of {', '.join(ALGORITHMS)}, got {list(algorithms)}")
        if nonce_lifetime <= 0:
            raise ValueError("nonce_lifetime must be positive")
        self.realm = realm
        self.users = users
        self.clock = clock
        self.nonce_lifetime = nonce_lifetime
        self.algorithms = tuple(algorithms)
        self.check_nonce_count = check_nonce_count
        self._key = key if key is not None else secrets.token_bytes(32)
        #: nonce → (time it stops being valid, highest nc seen); insertion order ≈ age.
        #: An OrderedDict so that dropping the oldest entries is O(1) each (see below).
        self._nonce_counts: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._realm_bytes = realm.encode("utf-8")
        # The keyed HMAC state, set up once and copied per nonce (RFC 2104; hmac.HMAC.copy).
        self._signer = hmac.new(self._key, digestmod=hashlib.sha256)
        # The fixed text around the nonce of each challenge, built once (stale → pieces).
        self._challenge_parts: dict[bool, tuple[tuple[str, str], ...]] = {
            stale: tuple(self._challenge_around_nonce(name, stale) for name in self.algorithms)
            for stale in (False, True)
        }
        #: (algorithm, method, digest-uri) → H(method:digest-uri)
        self._ha2: dict[tuple[str, str, str], str] = {}

    # --- challenges ---

    def challenge(self, stale: bool = False, algorithms: Sequence[str] | None = None) -> list[str]:
        """``WWW-Authenticate`` values, preferred algorithm first (RFC 8760 §2.3)."""
        if algorithms is None:
            nonce = self._new_nonce()
            return [before + nonce + after for before, after in self._challenge_parts[bool(stale)]]
        chosen = tuple(algorithms)
        for name in chosen:
            if name not in self.algorithms:
                raise ValueError(f"algorithm {name!r} is not enabled here ({', '.join(self.algorithms)})")
        nonce = self._new_nonce()
        return [before + nonce + after for before, after in (self._challenge_around_nonce(n, stale) for n in chosen)]

    def _challenge_around_nonce(self, algorithm: str, stale: bool) -> tuple[str, str]:
        suffix = ", stale=true" if stale else ""
        return f'Digest realm="{self.realm}", nonce="', f'", algorithm={algorithm}, qop="auth"{suffix}'

    def _new_nonce(self) -> str:
        issued = struct.pack(">Q", int(self.clock.seconds() * 1000))
        body = issued + random_bytes(_NONCE_RANDOM)
        return base64.urlsafe_b64encode(body + self._nonce_tag(body)).decode("ascii")

    def _nonce_tag(self, body: bytes) -> bytes:
        signer = self._signer.copy()
        signer.update(body + self._realm_bytes)
        return signer.digest()[:_NONCE_TAG]

    def _nonce_issued_at(self, nonce: str) -> float | None:
        """When we issued ``nonce``, or None if it is not one of ours."""
        try:
            raw = base64.urlsafe_b64decode(nonce.encode("ascii"))
        except (binascii.Error, ValueError, UnicodeEncodeError):
            return None
        if len(raw) != _NONCE_LENGTH:
            return None
        body, tag = raw[:-_NONCE_TAG], raw[-_NONCE_TAG:]
        if not hmac.compare_digest(tag, self._nonce_tag(body)):
            return None
        return struct.unpack(">Q", body[:8])[0] / 1000.0

    # --- verification ---

    def verify(self, method: str, authorization: str, request_uri: str | None = None) -> AuthResult:
        """Check one ``Authorization`` value for a request with ``method`` (and Request-URI)."""
        try:
            params = parse_digest(authorization)
        except DigestParseError as error:
            return AuthResult(AuthStatus.MALFORMED, detail=str(error))
        username = params.get("username")
        missing = [name for name in ("username", "realm", "nonce", "uri", "response") if not params.get(name)]
        if missing:
            return AuthResult(AuthStatus.MALFORMED, username, detail="missing " + ", ".join(missing))
        assert username is not None
        algorithm = params.get("algorithm", "MD5")  # RFC 7616 §3.3: absent means MD5
        algorithm = _ALGORITHM_NAMES.get(algorithm.lower(), algorithm)
        problem = self._check_parameters(params, algorithm, request_uri)
        if problem:
            return AuthResult(AuthStatus.MALFORMED, username, algorithm, problem)
        password = self.users.password(username)
        if password is None:
            return AuthResult(AuthStatus.UNKNOWN_USER, username, algorithm, f"no user {username!r}")
        nonce, nc = params["nonce"], params["nc"]
        # compute_response(..., qop="auth"), with H(A2) remembered per method and URI
        ha1 = digest_hash(algorithm, f"{username}:{self.realm}:{password}")  # RFC 7616 §3.4.2
        expected = response_from_hashes(algorithm, ha1, self._ha2_of(algorithm, method, params["uri"]), nonce, nc, params["cnonce"], "auth")
        if not hmac.compare_digest(params["response"].lower().encode("ascii", "replace"), expected.encode("ascii")):
            return AuthResult(AuthStatus.WRONG_PASSWORD, username, algorithm, "response digest does not match")
        return self._check_nonce(nonce, int(nc, 16), username, algorithm)

    def _ha2_of(self, algorithm: str, method: str, uri: str) -> str:
        key = (algorithm, method, uri)
        ha2 = self._ha2.get(key)
        if ha2 is None:
            if len(self._ha2) >= _HA2_KEPT:
                self._ha2.clear()
            ha2 = self._ha2[key] = digest_hash(algorithm, f"{method}:{uri}")  # RFC 7616 §3.4.3, qop=auth
        return ha2

    def _check_parameters(self, params: dict[str, str], algorithm: str, request_uri: str | None) -> str:
        if params["realm"] != self.realm:
            return f"realm {params['realm'][:60]!r} is not {self.realm!r}"
        if algorithm not in self.algorithms:
            return f"algorithm {algorithm[:30]!r} is not one of {', '.join(self.algorithms)}"
        if params.get("userhash", "false").lower() != "false":
            return "userhash is not supported"
        qop = params.get("qop")
        if qop is None:
            # RFC 8760: qop is required; we always offer qop="auth"
            return "qop missing (qop=auth is required)"
        if qop.lower() != "auth":
            return f"qop {qop[:20]!r} not offered (only auth)"
        if not _NC_RE.match(params.get("nc", "")):
            return "nc must be 8 hex digits"
        if not params.get("cnonce"):
            return "cnonce missing"
        if request_uri is not None and params["uri"] != request_uri:
            # RFC 7616 §3.4.6: the credentials must be for this request's target
            return f"uri {params['uri'][:60]!r} is not the Request-URI"
        return ""

    def _check_nonce(self, nonce: str, nc: int, username: str, algorithm: str) -> AuthResult:
        now = self.clock.seconds()
        issued = self._nonce_issued_at(nonce)
        if issued is None:
            return AuthResult(AuthStatus.STALE, username, algorithm, "nonce not issued here (restart?)")
        expires = issued + self.nonce_lifetime
        if now > expires:
            return AuthResult(AuthStatus.STALE, username, algorithm, f"nonce expired {now - expires:.0f}s ago")
        if self.check_nonce_count:
            self._forget_expired_counts(now)
            _, last = self._nonce_counts.get(nonce, (expires, 0))
            if nc <= last:
                return AuthResult(AuthStatus.REPLAYED, username, algorithm, f"nc {nc} not above {last}")
            self._nonce_counts[nonce] = (expires, nc)
        return AuthResult(AuthStatus.OK, username, algorithm)

    def _forget_expired_counts(self, now: float) -> None:
        # Nonces are first seen roughly in issue order, so expired ones sit at the front.
        # Called on every verify: it must cost only what it removes, never a copy of the
        # whole table (which holds every nonce answered within nonce_lifetime).
        counts = self._nonce_counts
        while counts:
            nonce, (expires, _) = next(iter(counts.items()))
            if expires >= now:
                break
            counts.popitem(last=False)
