"""The demo WWSF's web login: it issues the short-lived tokens the eP-CSCF admits WICs on.

TS 24.371 §5 / TS 33.203 Annex U: the user logs in to the operator's web site, which hands
the WebRTC client a token; the eP-CSCF verifies it (``epcscf.pcscf.web_auth``) and needs no
SIP password from the browser.  The token is a JWT (RFC 7519) signed with ES256 (RFC 7518
§3.4) by a key generated into ``state_dir`` on first start; the eP-CSCF of the same process
verifies with its public half (``[auth] keys`` left empty).  An operator's own web site
does the same with its own key (docs/wwsf-token-issuer.py).
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any, Callable

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["DEMO_ISSUER", "TokenIssuer", "ensure_signing_key"]

#: the ``iss`` of the demo WWSF's tokens (``[auth] issuers`` accepts it by default)
DEMO_ISSUER = "epcscf-wwsf"
PRIVATE_KEY_FILE = "wwsf_token_key.pem"
PUBLIC_KEY_FILE = "wwsf_token_key.pub.pem"


def ensure_signing_key(state_dir: str) -> tuple[str, str]:
    """The (private, public) PEM files of the WWSF's signing key, generated on first use."""
    private_path = os.path.join(state_dir, PRIVATE_KEY_FILE)
    public_path = os.path.join(state_dir, PUBLIC_KEY_FILE)
    if not os.path.isfile(private_path):
        os.makedirs(state_dir, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(pem)
    if not os.path.isfile(public_path):
        with open(private_path, "rb") as handle:
            key = serialization.load_pem_private_key(handle.read(), password=None)
        public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        with open(public_path, "wb") as handle:
            handle.write(public)
    return private_path, public_path


class TokenIssuer:
    """Signs tokens naming one user's public identities (``sub`` the default one, ``impu`` all)."""

    def __init__(
        self, private_key_path: str, audience: str, lifetime: float, issuer: str = DEMO_ISSUER, now: Callable[[], float] = time.time
    ) -> None:
        with open(private_key_path, "rb") as handle:
            self._key: Any = serialization.load_pem_private_key(handle.read(), password=None)
        self.audience = audience
        self.lifetime = lifetime
        self.issuer = issuer
        self.now = now

    def issue(self, identity: str, private_identity: str | None = None) -> str:
        now = int(self.now())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": identity,
            "iat": now,
            "nbf": now,
            "exp": now + int(self.lifetime),
            "jti": uuid.uuid4().hex,
        }
        if private_identity:
            claims["impi"] = private_identity
        return jwt.encode(claims, self._key, algorithm="ES256")

    def verify_own(self, token: str) -> dict[str, Any]:
        """The claims of a still valid token of ours (the page trades it for a fresh one)."""
        return jwt.decode(token, self._key.public_key(), algorithms=["ES256"], audience=self.audience, issuer=self.issuer)
