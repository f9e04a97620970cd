"""Soak benchmark: calls of mixed outcomes, then every count back to its baseline, RSS within +10 %.

Usage::

    .venv/bin/python benchmarks/soak.py [--calls 10000] [--rate 25] [--wics 60] [--warm-up 200]
                                        [--drain-timeout 180] [--tracemalloc] [--malloc-trim]

epcscf runs as its own process (``twistd -n epcscf``, the embedded core, the same
``Deployment``/``EpcscfProcess`` as ``benchmarks/calls.py``) with its SSH console enabled;
three sipp UASes play the IMS side (one answers, one answers 486 Busy Here, one rings until
CANCELled); this process drives ``--wics`` registered WebSocket WICs (``benchmarks/calls.py``'s
lean client, full ICE).  Each call is one of, in turn:

* answered: INVITE → 200 → ACK → ICE completed → 0.2 s → BYE → 200;
* rejected: INVITE → 486 → ACK (hop by hop, same branch: RFC 3261 §17.1.1.3);
* cancelled: INVITE → 180 → CANCEL → 200 + 487 → ACK (RFC 3261 §9.1);
* WebSocket dropped mid-call: answered, ICE completed, then the TCP connection is cut without a
  close frame; the edge BYEs the core (TS 24.371 A15); the WIC reconnects and registers again;
* consent lost: answered, ICE completed, then the WIC stops answering the edge's STUN checks;
  the edge releases the call after ``consent_timeout`` (RFC 7675 §5.1) with a BYE both ways.

Counts come from the edge itself, typed into its console (``benchmarks/_soak_probe.py``: live
objects by class after a full ``gc.collect()``, the reactor's delayed calls, asyncio tasks,
``/proc/self/fd``), before the load (after the warm-up has drained, so that caches, memos and
lazily imported modules are in the baseline) and after it, polled until they are back to the
baseline or ``--drain-timeout`` passes.  Timers are shortened so that the drain takes about a
minute instead of ~130 s: ``[sip] t1 = wic_t1 = 0.1 s`` (Timers B/F/H/J/L/M = 6.4 s; Timer D
stays 32 s), ``[media] consent_interval = 0.5 s, consent_timeout = 2 s``, ``[calls] history =
10 s``.  With ``--tracemalloc`` the edge runs with ``PYTHONTRACEMALLOC=10`` and the biggest
differences between the two snapshots are printed (slower and more memory: figures of such a run
are for finding, not for the verdict).  ``--malloc-trim`` calls glibc's ``malloc_trim(0)`` in the
edge after the drain and prints RSS again (fragmentation versus retention).

The exit status is 0 whatever the figures (a measurement); non-zero only when it could not run.
Loopback only; everything started here is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
import tracemalloc
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, TOP)

import bcrypt  # noqa: E402

from _console import run_lines  # noqa: E402
from _load import RegistrationFailed, Wic, WsSipFlow, raise_open_files_limit  # noqa: E402
from calls import SCENARIO as ANSWER_SCENARIO  # noqa: E402
from calls import CallFailed, Caller, IceSocket, sipp_pids  # noqa: E402
from w2_register import DOMAIN, Deployment, EpcscfProcess, free_port, make_users  # noqa: E402

PROBE = os.path.join(HERE, "_soak_probe.py")
OUTCOMES = ("answered", "rejected", "cancelled", "ws-dropped", "consent-lost")
#: one cycle of outcomes: 40 % answered, 20 % rejected, 15 % cancelled, 15 % dropped, 10 % consent
CYCLE = ("answered", "rejected", "answered", "cancelled", "ws-dropped", "answered", "rejected",
         "consent-lost", "answered", "cancelled", "ws-dropped", "answered", "rejected", "answered",
         "cancelled", "ws-dropped", "answered", "rejected", "consent-lost", "answered")
HOLD = 0.2
_BRANCH_RE = re.compile(rb";branch=z9hG4bK[0-9a-f]+")
STEP_TIMEOUT = 10.0
CONSENT_TIMEOUT = 2.0
RSS_TOLERANCE = 0.10
#: counts that must come back to their baseline (the rest are shown for information)
MUST_RETURN = ("sip transactions (edge)", "sip transactions (objects)", "proxied requests", "calls live",
               "calls ended kept", "Call objects", "dialogs", "call media", "ICE agents", "aioice connections",
               "DTLS sessions", "media sessions", "media ports in use", "ws connections", "flows",
               "delayed calls", "asyncio tasks", "fds")

BUSY_SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<!-- IMS-side UAS that is busy: 486, then the hop-by-hop ACK. -->
<scenario name="soak_uas_busy">
  <recv request="INVITE"/>
  <send>
    <![CDATA[
      SIP/2.0 486 Busy Here
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
  <recv request="ACK"/>
</scenario>
"""


# tests/sipp/uas_cancel.xml answers the INVITE with the CANCEL's one Via ([last_Via:]), right
# for a UAC talking to it directly; through the edge and the core the 487 must carry the
# INVITE's three Vias (core, edge, WIC: RFC 3261 §8.2.6.2), kept here from the INVITE.
CANCEL_SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<!-- IMS-side UAS that rings until CANCELled: 180, then 200 to the CANCEL and 487 to the INVITE. -->
<scenario name="soak_uas_cancel">
  <recv request="INVITE">
    <action>
      <ereg regexp=".*" search_in="hdr" header="Via:" occurrence="1" check_it="true" assign_to="via1"/>
      <ereg regexp=".*" search_in="hdr" header="Via:" occurrence="2" check_it="true" assign_to="via2"/>
      <ereg regexp=".*" search_in="hdr" header="Via:" occurrence="3" check_it="true" assign_to="via3"/>
    </action>
  </recv>
  <send>
    <![CDATA[
      SIP/2.0 180 Ringing
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:[local_ip]:[local_port];transport=[transport]>
      Content-Length: 0

    ]]>
  </send>
  <recv request="CANCEL"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
  <send>
    <![CDATA[
      SIP/2.0 487 Request Terminated
      Via: [$via1]
      Via: [$via2]
      Via: [$via3]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      CSeq: 1 INVITE
      Content-Length: 0

    ]]>
  </send>
  <recv request="ACK"/>
</scenario>
"""


# --- the WIC side ------------------------------------------------------------------------------


class SoakIce(IceSocket):
    """The WIC's ICE socket; ``mute`` stops it answering checks (consent is lost, RFC 7675)."""

    def __init__(self) -> None:
        super().__init__()
        self.mute = False

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.mute:
            super().datagram_received(data, addr)


class SoakFlow(WsSipFlow):
    """A WIC's WebSocket that also answers the edge's requests (a BYE on release) with 200."""

    def __init__(self, wic: Wic, host_header: str) -> None:
        super().__init__(wic, host_header)
        self.byes: dict[str, asyncio.Future[None]] = {}

    def _sip_message(self, message: bytes) -> None:
        if message.startswith(b"SIP/2.0 ") or not message.strip(b"\r\n"):
            super()._sip_message(message)
            return
        head = message.split(b"\r\n\r\n", 1)[0].decode(errors="replace").split("\r\n")
        method = head[0].split(" ", 1)[0]
        if method == "ACK":
            return
        copied = [line for line in head[1:] if line.split(":", 1)[0].strip().lower()
                  in ("via", "v", "from", "f", "to", "t", "call-id", "i", "cseq")]
        self.send(("\r\n".join(["SIP/2.0 200 OK", *copied, "Content-Length: 0"]) + "\r\n\r\n").encode())
        if method == "BYE":
            call_id = next((line.split(":", 1)[1].strip() for line in head[1:]
                            if line.split(":", 1)[0].strip().lower() in ("call-id", "i")), "")
            waiter = self.byes.get(call_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)


@dataclass
class SoakCaller(Caller):
    """One WIC placing calls of each outcome (``Caller`` of ``benchmarks/calls.py`` for the rest)."""

    ws_port: int = 0
    ports: dict[str, int] = field(default_factory=dict)

    def _request(self, method: str, uri: str, call_id: str, from_tag: str, to: str, cseq: int, branch: str,
                 routes: tuple[str, ...] = (), body: bytes = b"") -> bytes:
        message = self.request(method, uri, call_id, from_tag, to, cseq, list(routes), body)
        return _BRANCH_RE.sub(f";branch=z9hG4bK{branch}".encode(), message, count=1)

    async def _response(self, call_id: str, accept: Callable[[int, str], bool], timeout: float = STEP_TIMEOUT) -> bytes:
        """The first response of call ``call_id`` that ``accept(status, CSeq method)`` takes (a
        late retransmission of an earlier call's response is skipped)."""
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CallFailed(f"no expected response (saw {' '.join(seen) or 'none'})")
            try:
                message = await asyncio.wait_for(self.flow.responses.get(), remaining)
            except asyncio.TimeoutError:
                raise CallFailed(f"no expected response (saw {' '.join(seen) or 'none'})") from None
            if not message:
                raise CallFailed("WebSocket closed")
            status = int(message[8:11])
            lines = message.split(b"\r\n\r\n", 1)[0].decode(errors="replace").split("\r\n")
            method = next((line.split()[-1] for line in lines if line.lower().startswith("cseq:")), "")
            found = next((line.split(":", 1)[1].strip() for line in lines if line.lower().startswith(("call-id:", "i:"))), "")
            if found == call_id and accept(status, method):
                return message
            seen.append(f"{status}/{method}" if found == call_id else "other-call")

    @staticmethod
    def _to_of(response: bytes) -> str:
        head = response.split(b"\r\n\r\n", 1)[0].decode(errors="replace").split("\r\n")
        return next(line.split(":", 1)[1].strip() for line in head if line.lower().startswith(("to:", "t:")))

    def _drain_responses(self) -> None:
        while not self.flow.responses.empty():
            self.flow.responses.get_nowait()

    async def answered_until_ice(self, call_id: str) -> tuple[str, str, list[str]]:
        """INVITE → 200 → ACK → ICE completed (as ``Caller.call``); (target, To, routes)."""
        self.ice.reset()
        from_tag = secrets.token_hex(4)
        port = self.ports["answer"]
        uri, to = f"sip:service@127.0.0.1:{port}", f"<sip:service@127.0.0.1:{port}>"
        self.flow.send(self.request("INVITE", uri, call_id, from_tag, to, 1, body=self.offer()))
        ok = await self._response(call_id, lambda status, method: status >= 200 and method == "INVITE")
        if not ok.startswith(b"SIP/2.0 200"):
            raise CallFailed(ok.split(b"\r\n", 1)[0].decode(errors="replace"))
        target, to_value, routes = await self.ack_and_connect(ok, call_id, from_tag, True)
        self._from_tag = from_tag
        return target, to_value, routes

    async def answered(self) -> None:
        call_id = secrets.token_hex(10)
        target, to_value, routes = await self.answered_until_ice(call_id)
        await asyncio.sleep(HOLD)
        self.flow.send(self.request("BYE", target, call_id, self._from_tag, to_value, 2, routes))
        bye_ok = await self._response(call_id, lambda status, method: status >= 200 and method == "BYE")
        if not bye_ok.startswith(b"SIP/2.0 200"):
            raise CallFailed("BYE: " + bye_ok.split(b"\r\n", 1)[0].decode(errors="replace"))

    async def rejected(self) -> None:
        call_id, from_tag, branch = secrets.token_hex(10), secrets.token_hex(4), secrets.token_hex(8)
        port = self.ports["busy"]
        uri, to = f"sip:busy@127.0.0.1:{port}", f"<sip:busy@127.0.0.1:{port}>"
        self.flow.send(self._request("INVITE", uri, call_id, from_tag, to, 1, branch, body=self.offer()))
        final = await self._response(call_id, lambda status, method: status >= 200 and method == "INVITE")
        # RFC 3261 §17.1.1.3: the ACK for a non-2xx has the INVITE's branch and the response's To.
        self.flow.send(self._request("ACK", uri, call_id, from_tag, self._to_of(final), 1, branch))
        if not final.startswith(b"SIP/2.0 486"):
            raise CallFailed("rejected: " + final.split(b"\r\n", 1)[0].decode(errors="replace"))

    async def cancelled(self) -> None:
        call_id, from_tag, branch = secrets.token_hex(10), secrets.token_hex(4), secrets.token_hex(8)
        port = self.ports["cancel"]
        uri, to = f"sip:ringing@127.0.0.1:{port}", f"<sip:ringing@127.0.0.1:{port}>"
        self.flow.send(self._request("INVITE", uri, call_id, from_tag, to, 1, branch, body=self.offer()))
        try:
            await self._response(call_id, lambda status, method: status == 180 and method == "INVITE")
        finally:
            # RFC 3261 §9.1: the CANCEL has the INVITE's Request-URI, Call-ID, To, From, CSeq
            # number and branch (sent even when the 180 was missed: nothing left ringing).
            self.flow.send(self._request("CANCEL", uri, call_id, from_tag, to, 1, branch))
        final = await self._response(call_id, lambda status, method: status >= 200 and method == "INVITE")
        self.flow.send(self._request("ACK", uri, call_id, from_tag, self._to_of(final), 1, branch))
        if not final.startswith(b"SIP/2.0 487"):
            raise CallFailed("cancelled: " + final.split(b"\r\n", 1)[0].decode(errors="replace"))

    async def ws_dropped(self) -> None:
        await self.answered_until_ice(secrets.token_hex(10))
        assert self.flow.transport is not None
        self.flow.transport.abort()  # no close frame: a tab killed, a NAT binding gone
        self.flow.closed = True
        await self.reconnect()

    async def reconnect(self) -> None:
        self.flow = await connect(self.wic, self.ws_port)

    async def consent_lost(self) -> None:
        call_id = secrets.token_hex(10)
        assert isinstance(self.flow, SoakFlow)
        bye = self.flow.byes[call_id] = asyncio.get_running_loop().create_future()
        try:
            await self.answered_until_ice(call_id)
            assert isinstance(self.ice, SoakIce)
            self.ice.mute = True  # the browser's consent checks answers stop (RFC 7675 §5.1)
            await asyncio.wait_for(bye, CONSENT_TIMEOUT + STEP_TIMEOUT)
        except asyncio.TimeoutError:
            raise CallFailed("consent lost: no BYE from the edge") from None
        finally:
            self.flow.byes.pop(call_id, None)
            assert isinstance(self.ice, SoakIce)
            self.ice.mute = False

    async def place(self, outcome: str) -> None:
        self._drain_responses()
        actions: dict[str, Callable[[], Awaitable[None]]] = {
            "answered": self.answered, "rejected": self.rejected, "cancelled": self.cancelled,
            "ws-dropped": self.ws_dropped, "consent-lost": self.consent_lost,
        }
        if self.flow.closed:
            await self.reconnect()
        await actions[outcome]()


async def connect(wic: Wic, ws_port: int) -> SoakFlow:
    """A new WebSocket for ``wic``, registered (RFC 5626: the same instance and reg-id)."""
    loop = asyncio.get_running_loop()
    _, flow = await loop.create_connection(lambda: SoakFlow(wic, f"127.0.0.1:{ws_port}"), "127.0.0.1", ws_port)
    await asyncio.wait_for(flow.opened, STEP_TIMEOUT)
    await flow.register()
    return flow


async def open_callers(ws_port: int, users: list[tuple[str, str]], ports: dict[str, int]) -> list[SoakCaller]:
    loop = asyncio.get_running_loop()
    callers = []
    for user, password in users:
        wic = Wic(user, password, DOMAIN)
        _, ice = await loop.create_datagram_endpoint(SoakIce, local_addr=("127.0.0.1", 0))
        callers.append(SoakCaller(await connect(wic, ws_port), ice, wic, ws_port=ws_port, ports=ports))
    return callers


@dataclass
class Load:
    attempted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    completed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    failures: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0


async def run_load(callers: list[SoakCaller], calls: int, rate: float) -> Load:
    load = Load()
    tasks: set[asyncio.Task] = set()
    idle: asyncio.Queue[SoakCaller] = asyncio.Queue()
    for caller in callers:
        idle.put_nowait(caller)

    async def one(caller: SoakCaller, outcome: str) -> None:
        try:
            await caller.place(outcome)
            load.completed[outcome] += 1
        except (CallFailed, RegistrationFailed, asyncio.TimeoutError, OSError, StopIteration, AttributeError) as error:
            key = f"{outcome}: {type(error).__name__}: {error}"[:120]
            load.failures[key] = load.failures.get(key, 0) + 1
        finally:
            idle.put_nowait(caller)

    started = time.perf_counter()
    for number in range(calls):
        next_start = started + number / rate
        delay = next_start - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        caller = await idle.get()  # bounded: never more calls in progress than WICs
        outcome = CYCLE[number % len(CYCLE)]
        load.attempted[outcome] += 1
        task = asyncio.ensure_future(one(caller, outcome))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        if number and number % 1000 == 0:
            print(f"  … {number} calls started, {sum(load.failures.values())} failures", flush=True)
    if tasks:
        await asyncio.wait(tasks, timeout=STEP_TIMEOUT * 4)
    load.elapsed = time.perf_counter() - started
    return load


# --- the edge ---------------------------------------------------------------------------------


class Edge:
    """The epcscf process with its console, and the three sipp UASes."""

    def __init__(self, directory: str, wics: int, trace: bool) -> None:
        self.directory = directory
        self.users = make_users(wics)
        self.console_port = free_port()
        self.console_password = secrets.token_hex(8)
        users_file = os.path.join(directory, "manhole_users")
        with open(users_file, "w") as handle:
            handle.write(f"soak:{bcrypt.hashpw(self.console_password.encode(), bcrypt.gensalt(4)).decode()}\n")
        deployment = Deployment(directory, self.users, "warn")
        original = deployment.write_ini

        def write_ini(name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
            written = original(name, *args, **kwargs)
            with open(written[0]) as handle:
                text = handle.read()
            text = text.replace("[sip]\n", "[sip]\nt1 = 0.1\nt2 = 0.4\nwic_t1 = 0.1\nwic_t2 = 0.4\n")
            text = text.replace("port_range = 41000-41999", "port_range = 20000-29999\nice_mode = full\n"
                                f"consent_interval = 0.5\nconsent_timeout = {CONSENT_TIMEOUT:g}")
            text = text.replace("[manhole]\nenabled = false",
                                f"[manhole]\nenabled = true\nport = {self.console_port}\nusers = {users_file}\n"
                                "[calls]\nhistory = 10")
            with open(written[0], "w") as handle:
                handle.write(text)
            return written

        deployment.write_ini = write_ini  # type: ignore[method-assign]
        if trace:
            os.environ["PYTHONTRACEMALLOC"] = "10"
        try:
            self.process = EpcscfProcess(deployment, "soak")
        finally:
            os.environ.pop("PYTHONTRACEMALLOC", None)
        self.sipps: list[subprocess.Popen] = []
        self.ports: dict[str, int] = {}

    def start(self) -> None:
        self.process.wait_listening(timeout=180.0)  # slow to import under tracemalloc on a busy machine
        busy, cancel = os.path.join(self.directory, "busy.xml"), os.path.join(self.directory, "cancel.xml")
        for path, text in ((busy, BUSY_SCENARIO), (cancel, CANCEL_SCENARIO)):
            with open(path, "w") as handle:
                handle.write(text)
        for name, scenario in (("answer", ANSWER_SCENARIO), ("busy", busy), ("cancel", cancel)):
            port = free_port(socket.SOCK_DGRAM)
            self.ports[name] = port
            self.sipps.append(subprocess.Popen(
                ["sipp", "-sf", scenario, "-i", "127.0.0.1", "-p", str(port), "-mi", "127.0.0.1",
                 "-mp", str(free_port(socket.SOCK_DGRAM)), "-nostdin", "-bg", "-trace_err",
                 "-error_file", os.path.join(self.directory, f"sipp_{name}_errors.log"), "-max_recv_loops", "10000"],
                cwd=self.directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(0.5)

    def console(self, *lines: str) -> str:
        return run_lines(self.console_port, "soak", self.console_password, list(lines))

    def counts(self, snapshot: str | None = None) -> dict[str, Any]:
        lines = [f"SOAK_SNAPSHOT = {snapshot!r}"] if snapshot else ["SOAK_SNAPSHOT = None"]
        screen = self.console(*lines, f"exec(open({PROBE!r}).read())")
        for line in screen.splitlines():
            if line.startswith("SOAK-COUNTS "):
                return json.loads(line.split(" ", 1)[1])
        raise RuntimeError("the console printed no counts:\n" + screen[-2000:])

    def rss_kib(self) -> int:
        return self.process.rss_kib()

    def malloc_trim(self) -> None:
        self.console("import ctypes; ctypes.CDLL('libc.so.6').malloc_trim(0)")

    def stop(self) -> None:
        for port in self.ports.values():
            for pid in sipp_pids(port):
                os.kill(pid, signal.SIGKILL)
        for sipp in self.sipps:
            if sipp.poll() is None:
                sipp.kill()
        self.process.stop()


def back_to_baseline(baseline: dict[str, Any], now: dict[str, Any]) -> list[str]:
    return [name for name in MUST_RETURN if now.get(name, 0) > baseline.get(name, 0)]


def print_tracemalloc(before: str, after: str, top: int = 15) -> None:
    first, second = tracemalloc.Snapshot.load(before), tracemalloc.Snapshot.load(after)
    keep = (tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap>"))
    differences = second.filter_traces(keep).compare_to(first.filter_traces(keep), "traceback")
    grown = sum(d.size_diff for d in differences)
    print(f"tracemalloc: {grown / 1024:+.0f} KiB traced after the drain versus the baseline; biggest differences:")
    for difference in differences[:top]:
        frames = [f"{os.path.relpath(f.filename, TOP) if f.filename.startswith(TOP) else f.filename}:{f.lineno}"
                  for f in difference.traceback[:4]]
        print(f"  {difference.size_diff / 1024:+8.1f} KiB {difference.count_diff:+7d} blocks  {' < '.join(frames)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=10000)
    parser.add_argument("--rate", type=float, default=25.0, help="calls started per second (bounded by --wics)")
    parser.add_argument("--wics", type=int, default=60)
    parser.add_argument("--warm-up", type=int, default=1000,
                        help="calls before the baseline is taken (enough to fill the parsers' bounded memos)")
    parser.add_argument("--drain-timeout", type=float, default=180.0)
    parser.add_argument("--tracemalloc", action="store_true", help="run the edge with PYTHONTRACEMALLOC=10")
    parser.add_argument("--malloc-trim", action="store_true", help="malloc_trim(0) in the edge after the drain")
    options = parser.parse_args(argv)
    raise_open_files_limit(20000)
    directory = tempfile.mkdtemp(prefix="epcscf-soak-")
    edge = Edge(directory, options.wics, options.tracemalloc)
    try:
        edge.start()
        report = asyncio.run(soak(edge, options, directory))
    finally:
        edge.stop()
    report.show(options)
    shutil.rmtree(directory, ignore_errors=True)
    return 0


@dataclass
class Report:
    load: Load
    baseline: dict[str, int]
    after: dict[str, int]
    waited: float
    rss_idle: int
    rss_before: int
    rss_loaded: int
    rss_after: int
    rss_trimmed: int | None
    generator_cpu: float
    edge_cpu: float
    snapshots: tuple[str, str]

    def show(self, options: argparse.Namespace) -> None:
        load, baseline, after = self.load, self.baseline, self.after
        done = sum(load.completed.values())
        print(f"  {done}/{options.calls} calls as intended in {load.elapsed:.0f} s ({done / load.elapsed:.1f}/s): "
              + ", ".join(f"{name} {load.completed[name]}/{load.attempted[name]}" for name in OUTCOMES))
        for text, count in sorted(load.failures.items(), key=lambda item: -item[1])[:6]:
            print(f"    {count} × {text}")
        print(f"  CPU: epcscf {self.edge_cpu:.1f} s ({1000 * self.edge_cpu / max(1, options.calls):.1f} ms per call), "
              f"generator {self.generator_cpu:.1f} s (shared 2-core machine: noisy)")
        print(f"  counts after draining {self.waited:.0f} s (timers: t1 = wic_t1 = 0.1 s, Timer D 32 s, history 10 s):")
        print(f"    {'':28} {'baseline':>9} {'after':>9}")
        missing = back_to_baseline(baseline, after)
        for name in baseline:
            if name == "detail":
                continue
            flag = "  NOT BACK" if name in missing else ""
            print(f"    {name:28} {baseline[name]:>9} {after.get(name, 0):>9}{flag}")
        for kind, label in (("delayed", "delayed calls"), ("objects", "objects")):
            before, now = baseline["detail"][kind], after["detail"][kind]
            grown = sorted(((now.get(k, 0) - before.get(k, 0), k) for k in set(before) | set(now)), reverse=True)
            shown = ", ".join(f"{name} {delta:+d}" for delta, name in grown[:8] if delta > 0)
            print(f"    {label} that grew: {shown or 'none'}")
        verdict = self.rss_after <= self.rss_before * (1 + RSS_TOLERANCE)
        print(f"  RSS: idle {self.rss_idle / 1024:.1f} MiB, after warm-up (baseline) {self.rss_before / 1024:.1f} MiB, "
              f"end of load {self.rss_loaded / 1024:.1f} MiB, drained {self.rss_after / 1024:.1f} MiB "
              f"({100 * (self.rss_after / self.rss_before - 1):+.1f} %) "
              f"[{'PASS' if verdict else 'FAIL'} within +{100 * RSS_TOLERANCE:g} %]")
        if self.rss_trimmed is not None:
            print(f"  RSS after malloc_trim(0): {self.rss_trimmed / 1024:.1f} MiB "
                  f"({100 * (self.rss_trimmed / self.rss_before - 1):+.1f} %)")
        print(f"  every count back to its baseline: {'PASS' if not missing else 'FAIL (' + ', '.join(missing) + ')'}")
        if options.tracemalloc:
            print_tracemalloc(*self.snapshots)


async def soak(edge: Edge, options: argparse.Namespace, directory: str) -> Report:
    snapshots = (os.path.join(directory, "before.tracemalloc"), os.path.join(directory, "after.tracemalloc"))
    callers = await open_callers(edge.process.ws_port, edge.users, edge.ports)
    try:
        rss_idle = edge.rss_kib()
        warm = await run_load(callers, options.warm_up, options.rate)
        baseline, waited = await drain(edge, None, options.drain_timeout, snapshots[0] if options.tracemalloc else None)
        rss_before = edge.rss_kib()
        print(f"soak: {options.calls} calls at {options.rate:g}/s on {options.wics} WICs; warm-up {options.warm_up} "
              f"calls ({sum(warm.failures.values())} failed), drained in {waited:.0f} s", flush=True)
        for text, count in sorted(warm.failures.items(), key=lambda item: -item[1])[:4]:
            print(f"    warm-up: {count} × {text}", flush=True)
        own_before, edge_before = time.process_time(), edge.process.cpu_seconds()
        load = await run_load(callers, options.calls, options.rate)
        generator_cpu, edge_cpu = time.process_time() - own_before, edge.process.cpu_seconds() - edge_before
        rss_loaded = edge.rss_kib()
        print(f"  load done; draining (at most {options.drain_timeout:g} s)", flush=True)
        after, waited = await drain(edge, baseline, options.drain_timeout, snapshots[1] if options.tracemalloc else None)
        rss_after = edge.rss_kib()
        rss_trimmed = None
        if options.malloc_trim:
            await asyncio.get_running_loop().run_in_executor(None, edge.malloc_trim)
            rss_trimmed = edge.rss_kib()
    finally:
        for caller in callers:
            caller.flow.close()
            caller.ice.transport.close()
        await asyncio.sleep(0.1)
    return Report(load, baseline, after, waited, rss_idle, rss_before, rss_loaded, rss_after, rss_trimmed,
                  generator_cpu, edge_cpu, snapshots)


async def drain(edge: Edge, baseline: dict[str, int] | None, timeout: float,
                snapshot: str | None) -> tuple[dict[str, int], float]:
    """Wait for the timers to run out: until the counts stop falling (no baseline yet) or are
    back to the baseline, at most ``timeout`` seconds; the final counts and the seconds waited.
    The WICs' loop keeps running meanwhile (they answer the edge's WebSocket pings)."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    previous: dict[str, int] | None = None
    while True:
        await asyncio.sleep(5.0)
        now = await loop.run_in_executor(None, edge.counts)
        waited = time.monotonic() - started
        settled = (not back_to_baseline(baseline, now)) if baseline is not None else (
            previous is not None and not back_to_baseline(previous, now) and now["sip transactions (edge)"] == 0)
        if settled or waited > timeout:
            break
        previous = now
    await asyncio.sleep(1.0)
    return await loop.run_in_executor(None, edge.counts, snapshot), time.monotonic() - started


if __name__ == "__main__":
    sys.exit(main())
