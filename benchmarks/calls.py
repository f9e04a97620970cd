"""Benchmark: whole calls per second, WIC (WebSocket + ICE) → epcscf → sipp UAS, ICE completed on every call.

Usage::

    .venv/bin/python benchmarks/calls.py [--rate 100] [--seconds 30] [--wics 60] [--ice-mode full|lite]
                                         [--quick] [--log-level warn] [--epcscf-workers 2]

epcscf runs as its own process (``twistd -n epcscf`` on a generated ini, the embedded core, the
same ``Deployment``/``EpcscfProcess`` as ``benchmarks/w2_register.py``); a sipp UAS
(``tests/sipp/calls_uas_answer.xml``: 180, 200 with plain RTP/AVP SDP, ACK, BYE) is the IMS
party; this process is the load generator: ``--wics`` registered WebSocket WICs (the lean
raw-asyncio client of ``benchmarks/_load.py``), each with a UDP socket playing its ICE agent.

One call, as the generator does it (open loop: a call starts every 1/``--rate`` s on a free WIC):

1. INVITE with a Chrome-like WebRTC offer (ICE credentials, a host candidate on the WIC's UDP
   socket, a fingerprint, actpass) → 100/180/200 with our WebRTC answer → ACK;
2. ICE: the WIC sends STUN Binding checks with USE-CANDIDATE (RFC 8445 §7.2.2, aggressive
   nomination as a controlling full agent) to the eP-CSCF's candidate and answers the
   eP-CSCF's own checks (full mode); the call's ICE is *completed* when the WIC's nominating
   check got its success response and, in full mode, the eP-CSCF's check was answered;
3. BYE → 200.

Measured: calls/s completed, failures (any step wrong or slower than 10 s), setup time
(INVITE sent → ICE completed) p50/p99, epcscf CPU.  DTLS is not run by the generator: the
eP-CSCF's ClientHello goes unanswered until the BYE (its cost per call is included).

``--epcscf-workers N`` (N > 1) runs epcscf with ``[service] workers = N`` and the core in its own
process (as ``--separate-core``); the WICs per worker are read from the supervisor's ``/metrics``
and epcscf CPU is the supervisor's and the workers' together.

Floors (the project's targets): ≥ 100 calls/s sustained for 30 s, < 1 % failures, p99 setup < 250 ms.
The exit status is 0 whatever the figures (a measurement, not a test); non-zero only when the
benchmark could not run.  Everything is on 127.0.0.1 and stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, TOP)

from aioice import stun  # noqa: E402

from _load import RegistrationFailed, Wic, WsSipFlow, raise_open_files_limit  # noqa: E402
from w2_register import DOMAIN, Deployment, EpcscfProcess, free_port, make_users, percentile  # noqa: E402

RATE_FLOOR = 100.0
FAILURE_FLOOR = 0.01
P99_FLOOR = 0.250
STEP_TIMEOUT = 10.0
SCENARIO = os.path.join(TOP, "tests", "sipp", "calls_uas_answer.xml")
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
            self.checked_by_peer.set()
        else:
            waiter = self.waiting.pop(message.transaction_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(message.message_class == stun.Class.RESPONSE)

    async def nominate(self, remote: tuple[str, int], remote_ufrag: str, remote_pwd: str, timeout: float) -> None:
        """RFC 8445 §7.2.2 checks with USE-CANDIDATE until one succeeds: the first waits 50 ms
        for its answer, each next one twice as long up to 500 ms, the RTO RFC 8445 §14.3 gives a
        single candidate pair.  (A check every 50 ms whatever happens turns a slow eP-CSCF into
        one flooded with STUN by every call still connecting.)  A late success to an earlier
        check counts too (a loaded edge answers after the next check left)."""
        loop = asyncio.get_running_loop()
        succeeded: asyncio.Future[bool] = loop.create_future()
        sent: list[bytes] = []
        deadline = time.monotonic() + timeout
        wait = 0.05
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
        lines = [
            "v=0", f"o=- {secrets.randbelow(10**15)} 2 IN IP4 127.0.0.1", "s=-", "t=0 0",
            "a=group:BUNDLE 0", "m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8 126", "c=IN IP4 0.0.0.0",
            f"a=candidate:1 1 udp 2122260223 127.0.0.1 {self.ice.port} typ host",
            f"a=ice-ufrag:{self.ice.ufrag}", f"a=ice-pwd:{self.ice.pwd}", f"a=fingerprint:{FINGERPRINT}",
            "a=setup:actpass", "a=mid:0", "a=sendrecv", "a=rtcp-mux", "a=rtpmap:111 opus/48000/2",
            "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000", "a=rtpmap:126 telephone-event/8000",
        ]
        return ("\r\n".join(lines) + "\r\n").encode()

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

    async def call(self, uas_port: int, full_ice: bool) -> float:
        """One whole call; returns its setup time (INVITE → ICE completed)."""
        started = time.perf_counter()
        self.ice.reset()
        call_id, from_tag = secrets.token_hex(10), secrets.token_hex(4)
        uri, to = f"sip:service@127.0.0.1:{uas_port}", f"<sip:service@127.0.0.1:{uas_port}>"
        invite = self.request("INVITE", uri, call_id, from_tag, to, 1, body=self.offer())
        self.flow.send(invite)
        ok = await self.final(call_id, 1, "INVITE", STEP_TIMEOUT)
        if not ok.startswith(b"SIP/2.0 200"):
            self.flow.send(ack_for_failure(invite, ok))
            raise CallFailed(ok.split(b"\r\n", 1)[0].decode(errors="replace"))
        self.answered_after = time.perf_counter() - started  # INVITE → 200 (the rest is ACK and ICE)
        target, to_value, routes = await self.ack_and_connect(ok, call_id, from_tag, full_ice)
        setup = time.perf_counter() - started
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
    elapsed: float = 0.0
    cpu: float = 0.0
    generator_cpu: float = 0.0
    sipp_cpu: float = 0.0
    rtpengine_cpu: float = 0.0  # [media] engine = rtpengine: the daemon's own CPU in the run
    user: float = 0.0  # of cpu: in epcscf itself
    system: float = 0.0  # of cpu: in the kernel (sockets; on loopback, delivery to the peer too)

    @property
    def rate(self) -> float:
        return self.completed / self.elapsed if self.elapsed else 0.0


async def run_load(callers: list[Caller], uas_port: int, rate: float, seconds: float, full_ice: bool) -> Result:
    result = Result(rate, seconds)
    tasks: set[asyncio.Task] = set()

    async def one(caller: Caller) -> None:
        try:
            result.setups.append(await caller.call(uas_port, full_ice))
            result.answers.append(caller.answered_after)
            result.completed += 1
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
            result.failures.append("no idle WIC (calls are piling up)")
            continue
        caller.busy = True
        task = asyncio.ensure_future(one(caller))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=STEP_TIMEOUT * 3)
    result.elapsed = time.perf_counter() - started
    return result


def start_sipp(directory: str) -> tuple[subprocess.Popen, int]:
    sipp = shutil.which("sipp")
    if sipp is None:
        raise RuntimeError("sipp is not installed (Debian package sip-tester)")
    port = free_port(socket.SOCK_DGRAM)
    process = subprocess.Popen(
        [sipp, "-sf", SCENARIO, "-i", "127.0.0.1", "-p", str(port), "-mi", "127.0.0.1",
         "-mp", str(free_port(socket.SOCK_DGRAM)), "-nostdin", "-bg", "-trace_err",
         "-error_file", os.path.join(directory, "sipp_errors.log"), "-max_recv_loops", "10000"],
        cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return process, port


def stop_sipp(sipp: subprocess.Popen | None, uas_port: int) -> None:
    """Stop the sipp UAS of ``start_sipp`` and whatever it left listening on ``uas_port``."""
    for pid in sipp_pids(uas_port) if uas_port else []:
        os.kill(pid, signal.SIGKILL)
    if sipp is not None and sipp.poll() is None:
        sipp.kill()


def cpu_of(pid: int) -> float:
    from w2_register import cpu_seconds

    try:
        return cpu_seconds(pid)
    except OSError:
        return 0.0


def user_system(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of one process (/proc/<pid>/stat utime, stime)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields_ = stat.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields_[11]) / tick, int(fields_[12]) / tick


def process_tree_user_system(epcscf: EpcscfProcess) -> tuple[float, float]:
    """(user, system) CPU seconds of epcscf: the process, and its workers when it has any."""
    pairs = [user_system(pid) for pid in epcscf.pids()]
    return sum(user for user, _ in pairs), sum(system for _, system in pairs)


def sipp_pids(port: int) -> list[int]:
    """sipp -bg forks: find the background sipp by its port in its command line."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"sipp") and str(port).encode() in argv:
            found.append(int(pid))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--wics", type=int, default=60)
    parser.add_argument("--ice-mode", choices=("full", "lite"), default="full")
    parser.add_argument("--engine", choices=("builtin", "rtpengine", "both"), default="builtin",
                        help="[media] engine; both: builtin then rtpengine in one run (rtpengine-daemon, userspace)")
    parser.add_argument("--quick", action="store_true", help="5 s at the requested rate")
    parser.add_argument("--log-level", default="warn")
    parser.add_argument("--profile", metavar="FILE", help="run epcscf under cProfile, stats saved to FILE")
    parser.add_argument("--separate-core", action="store_true",
                        help="run the embedded core in a second epcscf process (the eP-CSCF's own cost without the core's)")
    parser.add_argument("--epcscf-workers", type=int, default=1,
                        help="[service] workers of the eP-CSCF (more than 1: the core runs in its own process)")
    options = parser.parse_args(argv)
    options.separate_core = options.separate_core or options.epcscf_workers > 1
    if options.profile:
        real_popen = subprocess.Popen

        def profiled(args: list[str], **kwargs: Any) -> subprocess.Popen:
            if "epcscf" in args and not any(str(arg).endswith("core.ini") for arg in args):  # the edge only
                at = args.index("epcscf")
                args = args[:at] + [f"--profile={os.path.abspath(options.profile)}", "--profiler=cprofile", "--savestats"] + args[at:]
            return real_popen(args, **kwargs)

        subprocess.Popen = profiled  # type: ignore[misc]
    seconds = 5.0 if options.quick else options.seconds
    raise_open_files_limit(20000)
    engines = ("builtin", "rtpengine") if options.engine == "both" else (options.engine,)
    for engine in engines:
        run_engine(options, engine, seconds)
    return 0


def run_engine(options: argparse.Namespace, engine: str, seconds: float) -> None:
    """One deployment and one load run with ``[media] engine = engine``; prints its figures."""
    rtpengine = None
    if engine == "rtpengine":
        from tests.support.rtpengine import start_rtpengine

        rtpengine = start_rtpengine(30000, 39999)
    directory = tempfile.mkdtemp(prefix="epcscf-calls-bench-")
    users = make_users(options.wics)
    deployment = Deployment(directory, users, options.log_level)
    original = deployment.write_ini

    def write_ini(name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        written = original(name, *args, **kwargs)
        path = written[0]
        with open(path) as handle:
            text = handle.read()
        media = f"port_range = 30000-39999\nice_mode = {options.ice_mode}"
        if rtpengine is not None:
            media += "\nengine = rtpengine"
        text = text.replace("port_range = 41000-41999", media) + "[overload]\nenabled = false\n"
        if rtpengine is not None:
            text += f"[rtpengine]\nnodes = {rtpengine.node}\n"
        with open(path, "w") as handle:
            handle.write(text)
        return written

    deployment.write_ini = write_ini  # type: ignore[method-assign]
    core: EpcscfProcess | None = None
    if options.separate_core:
        # The embedded core in its own process, reached by the eP-CSCF as an external core.
        core = EpcscfProcess(deployment, "core")
        core.wait_listening()
        epcscf = EpcscfProcess(deployment, "calls", f"sip:127.0.0.1:{core.core_port};transport=udp", options.epcscf_workers)
    else:
        epcscf = EpcscfProcess(deployment, "calls")
    sipp, uas_port = None, 0
    shares: list[int] = []  # WICs per worker
    try:
        epcscf.wait_listening()
        sipp, uas_port = start_sipp(directory)
        time.sleep(0.5)

        async def scenario() -> Result:
            callers = await open_callers(epcscf.ws_port, users)
            shares[:] = epcscf.connection_shares()
            try:
                await run_load(callers, uas_port, min(options.rate, 20.0), 1.0, options.ice_mode == "full")  # warm-up
                cpu_before, own_before = epcscf.cpu_seconds(), time.process_time()
                split_before = process_tree_user_system(epcscf)
                sipp_before = sum(cpu_of(pid) for pid in sipp_pids(uas_port))
                rtpengine_before = cpu_of(rtpengine.process.pid) if rtpengine is not None else 0.0
                result = await run_load(callers, uas_port, options.rate, seconds, options.ice_mode == "full")
                result.cpu = epcscf.cpu_seconds() - cpu_before
                split_after = process_tree_user_system(epcscf)
                result.user, result.system = split_after[0] - split_before[0], split_after[1] - split_before[1]
                result.generator_cpu = time.process_time() - own_before
                result.sipp_cpu = sum(cpu_of(pid) for pid in sipp_pids(uas_port)) - sipp_before
                if rtpengine is not None:
                    result.rtpengine_cpu = cpu_of(rtpengine.process.pid) - rtpengine_before
                return result
            finally:
                for caller in callers:
                    caller.flow.close()
                    caller.ice.transport.close()

        result = asyncio.run(scenario())
    finally:
        stop_sipp(sipp, uas_port)
        epcscf.stop()
        if core is not None:
            core.stop()
        if rtpengine is not None:
            rtpengine.stop()
    setups = sorted(result.setups)
    failure_ratio = len(result.failures) / result.attempted if result.attempted else 1.0
    p50, p99 = (percentile(setups, 0.5), percentile(setups, 0.99)) if setups else (float("nan"), float("nan"))
    where = "core in its own process" if options.separate_core else "core embedded in the same process"
    print(f"calls ([media] engine = {engine}, ICE {options.ice_mode}, {where}): target {options.rate:g}/s for {seconds:g} s, {options.wics} WICs")
    if shares:
        print(f"  {options.epcscf_workers} workers; WICs per worker: {shares}; epcscf CPU below is the supervisor's and the workers' together")
    print(f"  completed {result.completed}/{result.attempted} in {result.elapsed:.1f} s = {result.rate:.1f} calls/s "
          f"[{'PASS' if result.rate >= RATE_FLOOR else 'FAIL'} >= {RATE_FLOOR:g}]")
    print(f"  failures {len(result.failures)} ({100 * failure_ratio:.2f} %) "
          f"[{'PASS' if failure_ratio < FAILURE_FLOOR else 'FAIL'} < {100 * FAILURE_FLOOR:g} %]")
    print(f"  setup (INVITE → ICE completed) p50 {1000 * p50:.1f} ms, p99 {1000 * p99:.1f} ms "
          f"[{'PASS' if p99 < P99_FLOOR else 'FAIL'} p99 < {1000 * P99_FLOOR:g} ms]")
    if result.completed:
        print(f"  epcscf CPU {result.cpu:.1f} s = {1000 * result.cpu / result.completed:.1f} ms per call; "
              f"generator {result.generator_cpu:.1f} s, sipp {result.sipp_cpu:.1f} s"
              + (f", rtpengine {result.rtpengine_cpu:.1f} s = {1000 * result.rtpengine_cpu / result.completed:.1f} ms per call"
                 if rtpengine is not None else ""))
        print(f"    (user {1000 * result.user / result.completed:.1f} + system {1000 * result.system / result.completed:.1f} ms per call; "
              f"loadavg {open('/proc/loadavg').read().split(' ', 3)[:3]})")
    if result.failures:
        kinds: dict[str, int] = {}
        for failure in result.failures:
            kinds[failure] = kinds.get(failure, 0) + 1
        for text, count in sorted(kinds.items(), key=lambda item: -item[1])[:5]:
            print(f"    {count} × {text}")
    shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
