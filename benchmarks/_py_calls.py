"""The Python calls generator of ``benchmarks/calls.py`` (``--generator python``), in the driver's
process: lean raw-asyncio WebSocket WICs (``benchmarks/_load.py``), each with a UDP socket playing
its ICE agent (aioice's STUN).  ``benchmarks/wic_calls.mjs`` places the same calls from Node; this
one is kept for comparison and for the benchmarks built on it (``overload.py``, ``soak.py``,
``idle_call.py``).  See calls.py's docstring for one call step by step.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aioice import stun

from _load import RegistrationFailed, Wic, WsSipFlow
from w2_register import DOMAIN

STEP_TIMEOUT = 10.0
NO_IDLE_WIC = "no idle WIC (calls are piling up)"  # the same text in wic_calls.mjs
FINGERPRINT = "sha-256 " + ":".join(f"{b:02X}" for b in secrets.token_bytes(32))
_CSEQ_RE = re.compile(rb"\r\nCSeq\s*:\s*(\d+)\s+(\w+)", re.IGNORECASE)


class CallFailed(Exception):
    pass


# --- the WIC's ICE side: one UDP socket answering and sending STUN -----------------------------


class IceSocket(asyncio.DatagramProtocol):
    """The WIC's host candidate: sends nominating checks, answers the eP-CSCF's checks."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.ufrag = secrets.token_hex(4)
        self.pwd = secrets.token_hex(12)
        self.remote_pwd = ""
        self.waiting: dict[bytes, asyncio.Future] = {}
        self.checked_by_peer: asyncio.Event = asyncio.Event()
        #: since start: nominating checks sent, and checks from the eP-CSCF answered (their
        #: retransmissions included: how much STUN a slow edge costs both sides)
        self.checks_sent = self.peer_checks = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    @property
    def port(self) -> int:
        return self.transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not data or data[0] > 3:
            return  # DTLS ClientHello etc.: the generator does not run DTLS
        try:
            message = stun.parse_message(data)
        except ValueError:
            return
        if message.message_class == stun.Class.REQUEST:
            # RFC 8445 §7.3: answer with the source address, integrity with our password.
            response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, transaction_id=message.transaction_id)
            response.attributes["XOR-MAPPED-ADDRESS"] = addr
            response.add_message_integrity(self.pwd.encode())
            response.add_fingerprint()
            self.transport.sendto(bytes(response), addr)
            self.peer_checks += 1
            self.checked_by_peer.set()
        else:
            waiter = self.waiting.pop(message.transaction_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(message.message_class == stun.Class.RESPONSE)

    async def nominate(self, remote: tuple[str, int], remote_ufrag: str, remote_pwd: str, timeout: float,
                       rto: float = 0.05) -> None:
        """RFC 8445 §7.2.2 checks with USE-CANDIDATE until one succeeds: the first waits 50 ms
        for its answer, each next one twice as long up to 500 ms, the RTO RFC 8445 §14.3 gives a
        single candidate pair.  (A check every 50 ms whatever happens turns a slow eP-CSCF into
        one flooded with STUN by every call still connecting.)  A late success to an earlier
        check counts too (a loaded edge answers after the next check left).  ``rto``: the first
        wait (``benchmarks/ice_path.py`` under callgrind waits longer, so that no check is resent)."""
        loop = asyncio.get_running_loop()
        succeeded: asyncio.Future[bool] = loop.create_future()
        sent: list[bytes] = []
        deadline = time.monotonic() + timeout
        wait = rto
        try:
            while time.monotonic() < deadline:
                request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
                request.attributes["USERNAME"] = f"{remote_ufrag}:{self.ufrag}"
                request.attributes["PRIORITY"] = 1853824767
                request.attributes["ICE-CONTROLLING"] = 0x1234567890
                request.attributes["USE-CANDIDATE"] = None
                request.add_message_integrity(remote_pwd.encode())
                request.add_fingerprint()
                self.waiting[request.transaction_id] = succeeded
                sent.append(request.transaction_id)
                self.transport.sendto(bytes(request), remote)
                self.checks_sent += 1
                try:
                    if await asyncio.wait_for(asyncio.shield(succeeded), wait):
                        return
                except asyncio.TimeoutError:
                    wait = min(2 * wait, 0.5)
                    continue
                succeeded = loop.create_future()  # an error response: try again
        finally:
            for transaction_id in sent:
                self.waiting.pop(transaction_id, None)
        raise CallFailed("ICE: no success response to the nominating check")

    def reset(self) -> None:
        self.checked_by_peer = asyncio.Event()
        self.waiting.clear()


def webrtc_offer(ice: IceSocket, session_id: int, fingerprint: str = FINGERPRINT) -> bytes:
    """A Chrome-like audio offer on ``ice``'s host candidate (one line in a BUNDLE group, actpass)."""
    lines = [
        "v=0", f"o=- {session_id} 2 IN IP4 127.0.0.1", "s=-", "t=0 0",
        "a=group:BUNDLE 0", "m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8 126", "c=IN IP4 0.0.0.0",
        f"a=candidate:1 1 udp 2122260223 127.0.0.1 {ice.port} typ host",
        f"a=ice-ufrag:{ice.ufrag}", f"a=ice-pwd:{ice.pwd}", f"a=fingerprint:{fingerprint}",
        "a=setup:actpass", "a=mid:0", "a=sendrecv", "a=rtcp-mux", "a=rtpmap:111 opus/48000/2",
        "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000", "a=rtpmap:126 telephone-event/8000",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


def ack_for_failure(invite: bytes, final: bytes) -> bytes:
    """RFC 3261 §17.1.1.3: the ACK of a non-2xx final response — the INVITE's Request-URI, top
    Via, From, Call-ID and Route, the response's To (with its tag), CSeq with method ACK."""
    lines = invite.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    method, rest = lines[0].split(b" ", 1)
    to = next((line for line in final.split(b"\r\n") if line.lower().startswith((b"to:", b"t:"))), b"")
    ack = [b"ACK " + rest]
    for line in lines[1:]:
        name = line.split(b":", 1)[0].strip().lower()
        if name in (b"via", b"max-forwards", b"from", b"call-id", b"route"):
            ack.append(line)
        elif name == b"cseq":
            ack.append(line.replace(method, b"ACK"))
    return b"\r\n".join(ack + [to, b"Content-Length: 0", b"", b""])


# --- one WIC placing calls ---------------------------------------------------------------------


@dataclass
class Caller:
    flow: WsSipFlow
    ice: IceSocket
    wic: Wic
    busy: bool = False
    answered_after: float = 0.0  # seconds from the last INVITE to its 200
    requests: asyncio.Queue = field(default_factory=asyncio.Queue)

    def offer(self) -> bytes:
        return webrtc_offer(self.ice, secrets.randbelow(10**15))

    def request(self, method: str, uri: str, call_id: str, from_tag: str, to: str, cseq: int,
                routes: list[str] = (), body: bytes = b"") -> bytes:  # type: ignore[assignment]
        aor = f"sip:{self.wic.user}@{DOMAIN}"
        lines = [f"{method} {uri} SIP/2.0", f"Via: SIP/2.0/WS {self.wic.host};branch=z9hG4bK{secrets.token_hex(8)}",
                 "Max-Forwards: 70", f"From: <{aor}>;tag={from_tag}", f"To: {to}", f"Call-ID: {call_id}",
                 f"CSeq: {cseq} {method}"]
        lines += [f"Route: {route}" for route in routes]
        if method == "INVITE":
            lines += [f"Contact: <sip:{self.wic.user}@{self.wic.host};transport=ws;ob>", "Content-Type: application/sdp"]
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    async def final(self, call_id: str, cseq: int, method: str, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CallFailed(f"no final response to {method}")
            try:
                message = await asyncio.wait_for(self.flow.responses.get(), remaining)
            except asyncio.TimeoutError:
                raise CallFailed(f"no final response to {method}") from None
            if not message:
                raise CallFailed("WebSocket closed")
            found = _CSEQ_RE.search(message)
            status = int(message[8:11])
            # The Call-ID too: a late answer to an earlier call of this WIC (given up on after
            # STEP_TIMEOUT) has the same CSeq, and taking it would fail this call as well.
            if (found and int(found.group(1)) == cseq and found.group(2).decode().upper() == method and status >= 200
                    and call_id.encode() in message):
                return message

    async def call(self, target: int | str, full_ice: bool, hold: float = 0.0) -> float:
        """One whole call to ``target`` (a Request-URI, or the port of a UAS on 127.0.0.1 that the
        embedded core routes to), held ``hold`` seconds; returns its setup time (INVITE → ICE completed)."""
        started = time.perf_counter()
        self.ice.reset()
        call_id, from_tag = secrets.token_hex(10), secrets.token_hex(4)
        uri = target if isinstance(target, str) else f"sip:service@127.0.0.1:{target}"
        to = f"<{uri}>"
        invite = self.request("INVITE", uri, call_id, from_tag, to, 1, body=self.offer())
        self.flow.send(invite)
        ok = await self.final(call_id, 1, "INVITE", STEP_TIMEOUT)
        if not ok.startswith(b"SIP/2.0 200"):
            self.flow.send(ack_for_failure(invite, ok))
            raise CallFailed(ok.split(b"\r\n", 1)[0].decode(errors="replace"))
        self.answered_after = time.perf_counter() - started  # INVITE → 200 (the rest is ACK and ICE)
        target, to_value, routes = await self.ack_and_connect(ok, call_id, from_tag, full_ice)
        setup = time.perf_counter() - started
        if hold:
            await asyncio.sleep(hold)
        self.flow.send(self.request("BYE", target, call_id, from_tag, to_value, 2, routes))
        bye_ok = await self.final(call_id, 2, "BYE", STEP_TIMEOUT)
        if not bye_ok.startswith(b"SIP/2.0 200"):
            raise CallFailed("BYE: " + bye_ok.split(b"\r\n", 1)[0].decode(errors="replace"))
        return setup

    async def ack_and_connect(self, ok: bytes, call_id: str, from_tag: str, full_ice: bool) -> tuple[str, str, list[str]]:
        """ACK the 200 and run ICE to completion; the dialog's (remote target, To, route set)."""
        head, _, body = ok.partition(b"\r\n\r\n")
        headers = head.decode(errors="replace").split("\r\n")
        to_value = next(h.split(":", 1)[1].strip() for h in headers if h.lower().startswith(("to:", "t:")))
        contact = next(h.split(":", 1)[1].strip() for h in headers if h.lower().startswith(("contact:", "m:")))
        target = contact[contact.index("<") + 1 : contact.index(">")] if "<" in contact else contact
        record_route: list[str] = []
        for h in headers:
            if h.lower().startswith("record-route:"):
                record_route += [v.strip() for v in h.split(":", 1)[1].split(",")]
        routes = list(reversed(record_route))
        self.flow.send(self.request("ACK", target, call_id, from_tag, to_value, 1, routes))
        sdp = body.decode()
        ufrag = re.search(r"a=ice-ufrag:(\S+)", sdp).group(1)  # type: ignore[union-attr]
        pwd = re.search(r"a=ice-pwd:(\S+)", sdp).group(1)  # type: ignore[union-attr]
        fields_ = re.search(r"a=candidate:\S+ 1 udp \d+ (\S+) (\d+) typ host", sdp, re.IGNORECASE)
        if fields_ is None:
            raise CallFailed("no host candidate in the answer")
        await self.ice.nominate((fields_.group(1), int(fields_.group(2))), ufrag, pwd, STEP_TIMEOUT)
        if full_ice:
            await asyncio.wait_for(self.ice.checked_by_peer.wait(), STEP_TIMEOUT)
        return target, to_value, routes


async def open_callers(ws_port: int, users: list[tuple[str, str]]) -> list[Caller]:
    loop = asyncio.get_running_loop()
    callers = []
    for user, password in users:
        wic = Wic(user, password, DOMAIN)
        _, flow = await loop.create_connection(lambda w=wic: WsSipFlow(w, f"127.0.0.1:{ws_port}"), "127.0.0.1", ws_port)
        await flow.opened
        await flow.register()
        _, ice = await loop.create_datagram_endpoint(IceSocket, local_addr=("127.0.0.1", 0))
        callers.append(Caller(flow, ice, wic))
    return callers


@dataclass
class Result:
    rate_target: float
    seconds: float
    attempted: int = 0
    completed: int = 0
    failures: list[str] = field(default_factory=list)
    setups: list[float] = field(default_factory=list)
    answers: list[float] = field(default_factory=list)  # INVITE → 200 of the completed calls
    checks_sent: int = 0  # STUN checks the WICs sent in the completed calls
    peer_checks: int = 0  # STUN checks from the eP-CSCF the WICs answered in the completed calls
    elapsed: float = 0.0
    cpu: float = 0.0
    generator_cpu: float = 0.0
    generator_user: float = 0.0  # of generator_cpu, outside the kernel
    sipp_cpu: float = 0.0
    rtpengine_cpu: float = 0.0  # [media] engine = rtpengine: the daemon's own CPU in the run
    user: float = 0.0  # of cpu: in epcscf itself
    system: float = 0.0  # of cpu: in the kernel (sockets; on loopback, delivery to the peer too)

    @property
    def rate(self) -> float:
        return self.completed / self.elapsed if self.elapsed else 0.0


async def run_load(callers: list[Caller], target: int | str, rate: float, seconds: float, full_ice: bool,
                   hold: float = 0.0) -> Result:
    result = Result(rate, seconds)
    tasks: set[asyncio.Task] = set()

    async def one(caller: Caller) -> None:
        sent, checked = caller.ice.checks_sent, caller.ice.peer_checks
        try:
            result.setups.append(await caller.call(target, full_ice, hold))
            result.answers.append(caller.answered_after)
            result.completed += 1
            result.checks_sent += caller.ice.checks_sent - sent
            result.peer_checks += caller.ice.peer_checks - checked
        except (CallFailed, RegistrationFailed, asyncio.TimeoutError, AttributeError, StopIteration) as error:
            result.failures.append(f"{type(error).__name__}: {error}")
        finally:
            caller.busy = False

    started = time.perf_counter()
    interval = 1.0 / rate
    next_start = started
    while time.perf_counter() - started < seconds:
        now = time.perf_counter()
        if now < next_start:
            await asyncio.sleep(next_start - now)
        next_start += interval
        caller = next((c for c in callers if not c.busy), None)
        result.attempted += 1
        if caller is None:
            result.failures.append(NO_IDLE_WIC)
            continue
        caller.busy = True
        task = asyncio.ensure_future(one(caller))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=STEP_TIMEOUT * 3)
    result.elapsed = time.perf_counter() - started
    return result
