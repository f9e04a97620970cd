"""A WIC on a raw WebSocket (RFC 6455 framing written here, asyncio streams): it sends any
frame, broken ones included, and never answers a Close frame, so a test can hold a connection
that the eP-CSCF has failed (1002/1007/1009) but not yet seen end."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import struct

from epcscf.sip.message import Message, Request, Response
from epcscf.sip.parser import parse_message
from tests.support.wic import WsSipClient, digest_authorization

OPCODE_TEXT = 0x1
OPCODE_CLOSE = 0x8


def client_frame(payload: bytes, opcode: int = OPCODE_TEXT) -> bytes:
    """One final, masked client frame (RFC 6455 §5.2, §5.3)."""
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawWsWic:
    """A WIC whose SIP messages are built by ``WsSipClient`` and whose frames are its own."""

    def __init__(self, port: int, user: str, password: str, domain: str) -> None:
        self.port = port
        self.sip = WsSipClient(f"ws://127.0.0.1:{port}", user, password, domain)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        key = base64.b64encode(os.urandom(16)).decode()
        self.writer.write(
            (
                "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\r\n"
            ).encode()
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise AssertionError(f"no WebSocket upgrade: {head!r}")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def write(self, *frames: bytes) -> None:
        """Frames in one TCP write: the server reads them in one go, in order."""
        assert self.writer is not None
        self.writer.write(b"".join(frames))

    async def next_frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        assert self.reader is not None
        first, second = await asyncio.wait_for(self.reader.readexactly(2), timeout)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await self.reader.readexactly(length)

    async def next_message(self, timeout: float = 5.0) -> Message:
        while True:
            opcode, payload = await self.next_frame(timeout)
            if opcode == OPCODE_CLOSE:
                raise AssertionError(f"closed: {payload!r}")
            if payload.strip():
                return parse_message(payload)

    async def final_response(self, timeout: float = 5.0) -> Response:
        while True:
            message = await self.next_message(timeout)
            if isinstance(message, Response) and message.status >= 200:
                return message

    async def register(self) -> Response:
        request = self.sip.register_request()
        self.write(client_frame(request.serialize()))
        response = await self.final_response()
        if response.status == 401:
            challenge = next(c for c in response.headers.get_all("WWW-Authenticate"))
            retry = request.copy()
            retry.headers.set("CSeq", f"{self.sip.cseq + 1} REGISTER")
            retry.headers.set("Via", f"SIP/2.0/WS {self.sip.host};branch=z9hG4bK{secrets.token_hex(6)}")
            retry.headers.set("Authorization", digest_authorization(challenge, "REGISTER", request.uri, self.sip.user, self.sip.password))
            self.write(client_frame(retry.serialize()))
            response = await self.final_response()
        return response

    def request(self, method: str, uri: str, to: str | None = None) -> Request:
        return self.sip.request(method, uri, to)
