"""``/login`` and ``/token``: the demo WWSF's web login (see ``epcscf.wwsf.tokens``).

    POST /login   {"user": name, "password": password}   → {"token", "identity", "expires_in"}
    POST /token   Authorization: Bearer <a valid token>   → the same with a fresh token

The accounts are the embedded core's users (a lab); an operator's web site checks its own.
A wrong password is 403 after the same work as a right one (no user enumeration by timing
beyond a dictionary lookup), a malformed body 400; nothing is cached (Cache-Control: no-store).
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Callable

import jwt
from twisted.logger import Logger
from twisted.web import resource, server

from epcscf.wwsf.tokens import TokenIssuer

log = Logger(namespace="epcscf.wwsf")

MAX_BODY = 4096


class LoginAccount:
    """One web account: its name, password and the public identities its tokens name."""

    def __init__(self, name: str, password: str, identities: tuple[str, ...], private_identity: str) -> None:
        self.name = name
        self.password = password
        self.identities = identities
        self.private_identity = private_identity


def _answer(request: server.Request, status: int, body: dict[str, Any]) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")  # RFC 6749 §5.1: tokens are never cached
    return json.dumps(body).encode()


class _TokenResource(resource.Resource):
    isLeaf = True

    def __init__(self, issuer: TokenIssuer) -> None:
        super().__init__()
        self.issuer = issuer

    def _granted(self, request: server.Request, identity: str, private_identity: str) -> bytes:
        token = self.issuer.issue(identity, private_identity)
        return _answer(request, 200, {"token": token, "identity": identity, "expires_in": int(self.issuer.lifetime)})


class Login(_TokenResource):
    """``POST /login``: a user name and password → a token for the account's default identity."""

    def __init__(self, issuer: TokenIssuer, accounts: Callable[[str], LoginAccount | None]) -> None:
        super().__init__(issuer)
        self.accounts = accounts

    def render_POST(self, request: server.Request) -> bytes:  # noqa: N802
        body = request.content.read(MAX_BODY + 1) if request.content is not None else b""
        try:
            if len(body) > MAX_BODY:
                raise ValueError("too long")
            given = json.loads(body)
            name, password = given["user"], given["password"]
            if not isinstance(name, str) or not isinstance(password, str):
                raise ValueError("user and password must be strings")
        except (ValueError, KeyError, TypeError):
            return _answer(request, 400, {"error": "expected {\"user\": …, \"password\": …}"})
        account = self.accounts(name)
        expected = account.password if account is not None else ""
        if account is None or not hmac.compare_digest(expected.encode(), password.encode()):
            log.info("WWSF login of {user!r} refused: wrong user or password", user=name[:64])
            return _answer(request, 403, {"error": "wrong user or password"})
        log.info("WWSF login of {user}: token issued", user=account.name)
        return self._granted(request, account.identities[0], account.private_identity)


class Refresh(_TokenResource):
    """``POST /token``: a still valid token of ours → a fresh one (the page keeps no password)."""

    def render_POST(self, request: server.Request) -> bytes:  # noqa: N802
        scheme, _, token = (request.getHeader(b"authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _answer(request, 401, {"error": "Authorization: Bearer <token> expected"})
        try:
            claims = self.issuer.verify_own(token.strip())
        except jwt.InvalidTokenError as error:
            return _answer(request, 401, {"error": f"token refused: {error}"})
        return self._granted(request, claims["sub"], claims.get("impi") or "")
