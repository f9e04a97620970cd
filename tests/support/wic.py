"""A minimal WIC for tests: SIP over a real WebSocket (the ``websockets`` client), digest
computed here independently of epcscf's own digest code (RFC 8760 / RFC 7616)."""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from typing import Any

import websockets
from twisted.internet.defer import Deferred

from epcscf.sip.message import Request, Response
from epcscf.sip.parser import SipParseError, parse_message


def as_deferred(coroutine: Any) -> Deferred:
    return Deferred.fromFuture(asyncio.ensure_future(coroutine))


def _hash(algorithm: str, text: str) -> str:
    name = {"MD5": "md5", "SHA-256": "sha256", "SHA-512-256": "sha512_256"}[algorithm.upper()]
    return hashlib.new(name, text.encode()).hexdigest()


def digest_authorization(challenge: str, method: str, uri: str, user: str, password: str, header: str = "Authorization") -> str:
    """The Authorization value answering one WWW-Authenticate challenge (qop=auth)."""
    params = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge.split(" ", 1)[1]))
    algorithm = params.get("algorithm", "MD5")
    realm, nonce = params["realm"], params["nonce"]
    cnonce, nc = secrets.token_hex(8), "00000001"
    ha1 = _hash(algorithm, f"{user}:{realm}:{password}")
    ha2 = _hash(algorithm, f"{method}:{uri}")
    if "qop" in params:
        response = _hash(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
        extra = f', qop=auth, nc={nc}, cnonce="{cnonce}"'
    else:
        response = _hash(algorithm, f"{ha1}:{nonce}:{ha2}")
        extra = ""
    opaque = f', opaque="{params["opaque"]}"' if "opaque" in params else ""
    return (
        f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
        f'response="{response}", algorithm={algorithm}{opaque}{extra}'
    )


class WsSipClient:
    """One WIC: a WebSocket with subprotocol ``sip`` and a few SIP helpers."""

    def __init__(self, url: str, user: str, password: str, domain: str, origin: str | None = None) -> None:
        self.url, self.user, self.password, self.domain, self.origin = url, user, password, domain, origin
        self.host = f"{secrets.token_hex(4)}.invalid"  # RFC 7118 §5.2: a WIC has no reachable host
        self.instance = f"<urn:uuid:{secrets.token_hex(4)}-0000-4000-8000-{secrets.token_hex(6)}>"
        self.socket: Any = None
        self.cseq = 0
        self.call_id = secrets.token_hex(8)
        self.received: asyncio.Queue = asyncio.Queue()
        #: frames that did not parse (e.g. a 400 that echoes the broken header it complains of)
        self.unparsed: list[bytes] = []
        self._reader: asyncio.Task | None = None

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.domain}"

    async def connect(self) -> None:
        headers = {"Origin": self.origin} if self.origin else None
        self.socket = await websockets.connect(self.url, subprotocols=["sip"], additional_headers=headers)
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for frame in self.socket:
                data = frame.encode() if isinstance(frame, str) else frame
                if not data.strip():
                    continue
                try:
                    message = parse_message(data)
                except SipParseError:
                    self.unparsed.append(data)
                    continue
                await self.received.put(message)
        except websockets.ConnectionClosed:
            pass

    async def close(self) -> None:
        if self.socket is not None:
            await self.socket.close()
        if self._reader is not None:
            await self._reader
            self._reader = None

    async def drop(self) -> None:
        """Lose the connection without a closing handshake (a browser tab killed)."""
        self.socket.transport.abort()
        if self._reader is not None:
            await self._reader
            self._reader = None

    def request(self, method: str, uri: str, to: str | None = None, body: bytes = b"", content_type: str | None = None) -> Request:
        self.cseq += 1
        request = Request(method, uri)
        request.headers.add("Via", f"SIP/2.0/WS {self.host};branch=z9hG4bK{secrets.token_hex(6)}")
        request.headers.add("Max-Forwards", "70")
        request.headers.add("From", f"<{self.aor}>;tag={secrets.token_hex(4)}")
        request.headers.add("To", f"<{to or self.aor}>")
        request.headers.add("Call-ID", self.call_id if method == "REGISTER" else secrets.token_hex(8))
        request.headers.add("CSeq", f"{self.cseq} {method}")
        if content_type:
            request.headers.add("Content-Type", content_type)
        request.body = body
        return request

    async def send(self, message: Request | Response) -> None:
        await self.socket.send(message.serialize().decode())

    async def next_message(self, timeout: float = 5.0) -> Request | Response:
        return await asyncio.wait_for(self.received.get(), timeout)

    async def final_response(self, timeout: float = 5.0) -> Response:
        while True:
            message = await self.next_message(timeout)
            if isinstance(message, Response) and message.status >= 200:
                return message

    async def transact(self, request: Request, timeout: float = 5.0) -> Response:
        """Send a request and return its final response, answering one digest challenge."""
        await self.send(request)
        response = await self.final_response(timeout)
        if response.status in (401, 407):
            header = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
            challenges = response.headers.get_all(header)
            challenge = next((c for c in challenges if "SHA-256" in c), challenges[0])
            retry = request.copy()
            self.cseq += 1
            retry.headers.set("CSeq", f"{self.cseq} {request.method}")
            retry.headers.set("Via", f"SIP/2.0/WS {self.host};branch=z9hG4bK{secrets.token_hex(6)}")
            name = "Authorization" if response.status == 401 else "Proxy-Authorization"
            retry.headers.set(name, digest_authorization(challenge, request.method, request.uri, self.user, self.password))
            await self.send(retry)
            response = await self.final_response(timeout)
        return response

    def register_request(self, expires: int = 600, reg_id: int = 1) -> Request:
        request = self.request("REGISTER", f"sip:{self.domain}")
        request.headers.add(
            "Contact",
            f'<sip:{self.user}@{self.host};transport=ws;ob>;reg-id={reg_id};+sip.instance="{self.instance}";expires={expires}',
        )
        request.headers.add("Supported", "path, outbound, gruu")
        return request

    async def register(self, expires: int = 600) -> Response:
        return await self.transact(self.register_request(expires))

    async def answer(self, request: Request, status: int = 200) -> None:
        from epcscf.sip.message import make_response

        await self.send(make_response(request, status, to_tag=secrets.token_hex(4)))
