"""Load-generator pieces for ``benchmarks/w2_register.py``: a lean WIC and its worker process.

The WIC is a raw asyncio ``Protocol`` speaking just enough RFC 6455 (client handshake with
the ``sip`` subprotocol, masked text frames out, unmasked frames in, Pong for every Ping) and
just enough SIP to register (RFC 3261 §10.2 REGISTER, RFC 5626 outbound Contact, the RFC 8760
digest answer to a 401).  It is deliberately leaner than ``tests/support/wic.py`` (no SIP
parser, prebuilt request text) so that the generator, which shares the 2 cores with epcscf,
costs as little CPU as possible per registration.

A worker process owns a slice of the users and is driven by the parent through a
``multiprocessing`` pipe with a handful of commands (``open``, ``run``, ``close``); see
``worker_main``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import resource
import secrets
import ssl
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from typing import Any

# RFC 6455 §1.3: the GUID hashed with the client's key into Sec-WebSocket-Accept
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OPCODE_CONTINUATION, OPCODE_TEXT, OPCODE_BINARY, OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG = 0, 1, 2, 8, 9, 10

_CHALLENGE_RE = re.compile(r'(\w+)="?([^",]*)"?')
_CSEQ_RE = re.compile(rb"\r\n(?:CSeq|cseq|CSEQ)\s*:\s*(\d+)", re.IGNORECASE)
_WWW_AUTHENTICATE_RE = re.compile(rb"\r\nWWW-Authenticate\s*:\s*([^\r\n]+)", re.IGNORECASE)
HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


class RegistrationFailed(Exception):
    """A registration did not end in 200 (the status, or a timeout / closed connection)."""


def raise_open_files_limit(wanted: int) -> int:
    """RLIMIT_NOFILE soft limit raised toward ``wanted`` (capped by the hard limit); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, wanted), hard) if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if target != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def _mask(payload: bytes, key: bytes) -> bytes:
    """RFC 6455 §5.3 masking, XOR done as one big-integer operation (fast in CPython)."""
    n = len(payload)
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def client_frame(payload: bytes, opcode: int = OPCODE_TEXT) -> bytes:
    """One final, masked client frame (RFC 6455 §5.2: every client frame is masked)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    key = os.urandom(4)
    return head + key + _mask(payload, key)


@dataclass
class Wic:
    """What one simulated WIC registers as."""

    user: str
    password: str
    domain: str
    host: str = field(default_factory=lambda: f"{secrets.token_hex(4)}.invalid")  # RFC 7118 §5.2
    instance: str = field(default_factory=lambda: f"<urn:uuid:{secrets.token_hex(4)}-0000-4000-8000-{secrets.token_hex(6)}>")
    call_id: str = field(default_factory=lambda: secrets.token_hex(10))
    from_tag: str = field(default_factory=lambda: secrets.token_hex(4))
    cseq: int = 0

    def register(self, authorization: str | None = None, expires: int = 600) -> bytes:
        """A REGISTER (RFC 3261 §10.2) with an RFC 5626 outbound Contact (reg-id, +sip.instance, ;ob)."""
        self.cseq += 1
        aor = f"sip:{self.user}@{self.domain}"
        lines = [
            f"REGISTER sip:{self.domain} SIP/2.0",
            f"Via: SIP/2.0/WS {self.host};branch=z9hG4bK{secrets.token_hex(8)}",
            "Max-Forwards: 70",
            f"From: <{aor}>;tag={self.from_tag}",
            f"To: <{aor}>",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} REGISTER",
            f'Contact: <sip:{self.user}@{self.host};transport=ws;ob>;reg-id=1;+sip.instance="{self.instance}";expires={expires}',
            "Supported: path, outbound, gruu",
        ]
        if authorization:
            lines.append(f"Authorization: {authorization}")
        lines.append("Content-Length: 0")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def answer(self, challenge: str) -> str:
        """The Authorization answering one WWW-Authenticate (RFC 7616 §3.4, qop=auth)."""
        params = dict(_CHALLENGE_RE.findall(challenge.split(" ", 1)[1]))
        algorithm = params.get("algorithm", "MD5").upper()
        hash_ = HASHES[algorithm]
        realm, nonce = params["realm"], params["nonce"]
        uri = f"sip:{self.domain}"
        ha1 = hash_(f"{self.user}:{realm}:{self.password}".encode()).hexdigest()
        ha2 = hash_(f"REGISTER:{uri}".encode()).hexdigest()
        cnonce, nc = secrets.token_hex(8), "00000001"
        response = hash_(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}".encode()).hexdigest()
        opaque = f', opaque="{params["opaque"]}"' if "opaque" in params else ""
        return (
            f'Digest username="{self.user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", algorithm={algorithm}{opaque}, qop=auth, nc={nc}, cnonce="{cnonce}"'
        )


class WsSipFlow(asyncio.Protocol):
    """One WebSocket connection (RFC 7118) carrying one WIC's registrations."""

    def __init__(self, wic: Wic, host_header: str) -> None:
        self.wic = wic
        self.host_header = host_header
        self.transport: asyncio.Transport | None = None
        self.key = base64.b64encode(os.urandom(16))
        self.upgraded = False
        self.buffer = bytearray()
        self.fragments: list[bytes] = []
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.responses: asyncio.Queue[bytes] = asyncio.Queue()
        self.closed = False
        self.requests_ignored = 0

    # --- asyncio.Protocol ---

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(
            b"GET / HTTP/1.1\r\nHost: " + self.host_header.encode() + b"\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + self.key + b"\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\r\n"
        )

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            del self.buffer[: end + 4]
            accept = base64.b64encode(hashlib.sha1(self.key + WS_GUID).digest()).decode()
            lowered = head.lower()
            if not head.startswith("HTTP/1.1 101") or accept.lower() not in lowered or "sec-websocket-protocol: sip" not in lowered:
                self._fail(ConnectionError(f"WebSocket handshake refused: {head.splitlines()[0] if head else '?'}"))
                return
            self.upgraded = True
            if not self.opened.done():
                self.opened.set_result(None)
        self._read_frames()

    def _read_frames(self) -> None:
        buffer = self.buffer
        while len(buffer) >= 2:
            first, second = buffer[0], buffer[1]
            length, offset = second & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length, offset = int.from_bytes(buffer[2:4], "big"), 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length, offset = int.from_bytes(buffer[2:10], "big"), 10
            if second & 0x80:  # a server MUST NOT mask (RFC 6455 §5.1)
                self._fail(ConnectionError("masked frame from the server"))
                return
            if len(buffer) < offset + length:
                return
            payload = bytes(buffer[offset : offset + length])
            del buffer[: offset + length]
            opcode = first & 0x0F
            if opcode == OPCODE_PING:
                self.transport.write(client_frame(payload, OPCODE_PONG))  # RFC 6455 §5.5.3
            elif opcode == OPCODE_CLOSE:
                self._fail(ConnectionError(f"closed by the server: {payload[:2].hex()} {payload[2:]!r}"))
                return
            elif opcode in (OPCODE_TEXT, OPCODE_BINARY, OPCODE_CONTINUATION):
                self.fragments.append(payload)
                if first & 0x80:
                    message = b"".join(self.fragments)
                    self.fragments.clear()
                    self._sip_message(message)

    def _sip_message(self, message: bytes) -> None:
        if message.startswith(b"SIP/2.0 "):
            self.responses.put_nowait(message)
        elif message.strip(b"\r\n"):
            self.requests_ignored += 1  # nothing in a registration sends us requests

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("connection lost"))

    def _fail(self, error: Exception) -> None:
        self.closed = True
        if not self.opened.done():
            self.opened.set_exception(error)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()
        self.responses.put_nowait(b"")  # wakes a waiting registration

    # --- SIP ---

    def send(self, message: bytes) -> None:
        if self.closed or self.transport is None:
            raise RegistrationFailed("connection closed")
        self.transport.write(client_frame(message))

    async def _response_to(self, cseq: int, timeout: float) -> tuple[int, bytes]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RegistrationFailed("timeout")
            try:
                message = await asyncio.wait_for(self.responses.get(), remaining)
            except asyncio.TimeoutError:
                raise RegistrationFailed("timeout") from None
            if not message:
                raise RegistrationFailed("connection closed")
            status = int(message[8:11])
            found = _CSEQ_RE.search(message)
            if status >= 200 and found and int(found.group(1)) == cseq:
                return status, message

    async def register(self, timeout: float = 10.0, busy_retries: int = 20) -> float:
        """One whole registration: REGISTER → 401 → REGISTER with Authorization → 200; its seconds.

        A 503 at either step (an overloaded eP-CSCF, RFC 3261 §21.5.4) starts the registration
        again after half a second, up to ``busy_retries`` times: a real WIC would wait
        Retry-After, a benchmark cannot."""
        started = time.perf_counter()
        while True:
            status, response = await self._register_once(timeout)
            if status != 503 or busy_retries <= 0:
                break
            busy_retries -= 1
            await asyncio.sleep(0.5)
        if status != 200:
            status_line = response.split(b"\r\n", 1)[0].decode(errors="replace")
            raise RegistrationFailed(status_line)
        return time.perf_counter() - started

    async def _register_once(self, timeout: float) -> tuple[int, bytes]:
        wic = self.wic
        self.send(wic.register())
        status, response = await self._response_to(wic.cseq, timeout)
        if status == 401:
            # RFC 8760 §2.4: challenges come strongest first; take the first we can compute.
            challenges = [c.decode() for c in _WWW_AUTHENTICATE_RE.findall(response)]
            usable = [c for c in challenges if re.search(r"algorithm=(SHA-256|MD5)\b", c, re.I) or "algorithm" not in c]
            if not usable:
                raise RegistrationFailed(f"no usable challenge in {challenges!r}")
            self.send(wic.register(authorization=wic.answer(usable[0])))
            status, response = await self._response_to(wic.cseq, timeout)
        return status, response

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            try:
                self.transport.write(client_frame(b"\x03\xe8", OPCODE_CLOSE))  # 1000 normal closure
            finally:
                self.transport.close()
        self.closed = True


@dataclass
class WorkerSettings:
    host: str
    port: int
    secure: bool
    cafile: str | None
    users: list[tuple[str, str]]
    domain: str
    open_concurrency: int = 64


class Worker:
    """One generator process: opens and registers its WICs, loops registrations on command."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.flows: list[WsSipFlow] = []
        self.next_user = 0
        self.ssl_context: ssl.SSLContext | None = None
        if settings.secure:
            self.ssl_context = ssl.create_default_context(cafile=settings.cafile)

    async def _open_one(self, user: str, password: str) -> WsSipFlow:
        loop = asyncio.get_running_loop()
        wic = Wic(user, password, self.settings.domain)
        host_header = f"{self.settings.host}:{self.settings.port}"
        _, flow = await loop.create_connection(
            lambda: WsSipFlow(wic, host_header),
            self.settings.host,
            self.settings.port,
            ssl=self.ssl_context,
            server_hostname=self.settings.host if self.ssl_context else None,
        )
        try:
            await asyncio.wait_for(flow.opened, 15.0)
            await flow.register()
        except BaseException:
            flow.close()
            raise
        return flow

    async def open(self, count: int) -> dict[str, Any]:
        """Open and register ``count`` more WICs, ``open_concurrency`` at a time."""
        started = time.perf_counter()
        semaphore = asyncio.Semaphore(self.settings.open_concurrency)
        users = self.settings.users[self.next_user : self.next_user + count]
        self.next_user += len(users)
        errors: dict[str, int] = {}

        async def one(user: str, password: str) -> None:
            async with semaphore:
                try:
                    self.flows.append(await self._open_one(user, password))
                except (OSError, ssl.SSLError, RegistrationFailed, asyncio.TimeoutError, ConnectionError) as error:
                    key = f"{type(error).__name__}: {error}"[:120]
                    errors[key] = errors.get(key, 0) + 1

        await asyncio.gather(*(one(u, p) for u, p in users))
        return {"opened": len(users) - sum(errors.values()), "errors": errors, "seconds": time.perf_counter() - started}

    async def run(self, seconds: float, start_at: float, connections: int) -> dict[str, Any]:
        """The first ``connections`` open WICs re-register back to back (each a full challenge
        exchange) for ``seconds``, starting at wall-clock ``start_at``."""
        await asyncio.sleep(max(0.0, start_at - time.time()))
        deadline = time.monotonic() + seconds
        latencies: list[float] = []
        errors: dict[str, int] = {}

        async def loop(flow: WsSipFlow) -> None:
            while time.monotonic() < deadline and not flow.closed:
                try:
                    latencies.append(await flow.register())
                except RegistrationFailed as error:
                    key = str(error)[:120]
                    errors[key] = errors.get(key, 0) + 1

        started = time.monotonic()
        await asyncio.gather(*(loop(flow) for flow in self.flows[:connections]))
        return {"latencies": latencies, "errors": errors, "seconds": time.monotonic() - started}

    def close(self) -> None:
        for flow in self.flows:
            flow.close()
        self.flows.clear()


async def _serve(pipe: Pipe, settings: WorkerSettings) -> None:
    worker = Worker(settings)
    loop = asyncio.get_running_loop()
    pipe.send(("ready", {}))
    while True:
        command, arguments = await loop.run_in_executor(None, pipe.recv)
        if command == "open":
            pipe.send(("opened", await worker.open(*arguments)))
        elif command == "run":
            pipe.send(("ran", await worker.run(*arguments)))
        elif command == "close":
            worker.close()
            await asyncio.sleep(0.1)  # let the close frames and FINs go out
            pipe.send(("closed", {}))
            return
        else:
            pipe.send(("error", {"unknown command": command}))


def worker_main(pipe: Pipe, settings: WorkerSettings, open_files: int) -> None:
    """Entry point of a generator process (multiprocessing target)."""
    raise_open_files_limit(open_files)
    try:
        asyncio.run(_serve(pipe, settings))
    except KeyboardInterrupt:
        pass
