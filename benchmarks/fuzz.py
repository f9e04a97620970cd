"""Fuzz runner: mutated SIP over UDP, TCP and WebSocket at a running ``twistd epcscf``.

Usage::

    .venv/bin/python benchmarks/fuzz.py [--messages 1000000] [--seconds 1800] [--rate 3000]
                                        [--settle 60[,140]] [--pool 20000] [--seed 1] [--keep]
                                        [--core embedded|separate|kamailio] [--epcscf-workers 1]

What it does, all on 127.0.0.1:

1. writes an ini (embedded core; core-facing ``udp`` and ``tcp`` listeners, a ``ws`` listener,
   ``[metrics]`` on, ``[log] level = warn``) and starts ``twistd -n epcscf`` on it, plus a sipp
   UAS (``tests/sipp/calls_uas_answer.xml``) so that INVITEs reach a real callee;
2. opens WebSocket flows (subprotocol ``sip``, RFC 7118): four WICs that *register* (so the
   routing beyond the 403 gate is reached) and two that never do; the first registered WIC
   also places a real call to the sipp UAS every two seconds, and the dialog it gets
   (Call-ID, tags, Record-Route, Contact) and the registration's Path fill the in-dialog
   seeds, so mutated re-INVITE/ACK/BYE/INFO/NOTIFY from both sides reach real call state;
3. sends ``--messages`` mutants of the seed corpus (``_fuzz_corpus``) at ``--rate`` per
   second, split UDP 35 % / TCP 25 % / WS 40 %; flows the edge closes are reopened (and
   re-registered); a UDP OPTIONS with Max-Forwards 0 every second checks the edge still answers;
4. reports messages sent per transport, answers by status class, the rate, the generator's
   CPU (pool building apart), the edge's CPU, RSS and open fds before, right after and
   ``--settle`` seconds after (several moments: ``--settle 60,140``), the edge's own live
   counts from ``/metrics`` at those moments, and the tracebacks / "Unhandled error" /
   critical lines of the edge's log, grouped into families with the first lines of each.

The deployed shapes (issue 14; default: one process holding the edge and the embedded core):
``--core separate`` runs the embedded core in its own ``twistd`` and ``--core kamailio`` the
interop tests' Kamailio, the edge using either as ``[core] mode = external``; ``--epcscf-workers N``
runs the edge as ``[service] workers = N`` (WebSocket port shared, each worker's core-facing SIP
ports at the configured port + its index, the UDP and TCP mutants spread over them). RSS, fds and
CPU are then the workers' (summed, and RSS by worker; the supervisor's apart), the core's RSS
apart. ``--probe`` reads one process's objects through its console, so not with workers.

Bounded by ``--messages`` and ``--seconds``; stops everything it started on exit (``--keep``
keeps the run directory and the log).  The exit status is 0 whatever was found (this is a
measurement); non-zero only when the runner could not run.  The machine is shared: the rate
the edge sustains here says little about the rate it sustains alone.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import re
import shutil
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

from _fuzz_corpus import SERIAL, build_pool, core_seeds, wic_seeds  # noqa: E402
from _fuzz_edge import MAX_MESSAGE_SIZE, Core, Edge, log_findings, start_core, start_sipp  # noqa: E402
from _load import OPCODE_BINARY, OPCODE_TEXT, RegistrationFailed, Wic, WsSipFlow, client_frame, raise_open_files_limit  # noqa: E402
from w2_register import DOMAIN  # noqa: E402

WEIGHTS = (("udp", 35), ("tcp", 25), ("ws", 40))
REGISTERED_WICS = 4
ANONYMOUS_WICS = 2
TCP_CONNECTIONS = 4
UDP_SOCKETS = 4
#: a flow the edge does not read fast enough gets no more until it does (bounded generator memory)
WRITE_BUFFER_LIMIT = 1 << 20
_STATUS = re.compile(rb"SIP/2\.0 ([1-6])\d\d ")
_HEADER = {name: re.compile(rb"(?im)^(?:" + name + rb")[ \t]*:[ \t]*([^\r\n]*)") for name in
           (b"To|t", b"Record-Route", b"Contact|m", b"Path", b"Via|v", b"From|f", b"Call-ID|i", b"CSeq")}


@dataclass
class Tally:
    sent: collections.Counter = field(default_factory=collections.Counter)
    answers: dict[str, collections.Counter] = field(default_factory=lambda: collections.defaultdict(collections.Counter))
    requests_in: collections.Counter = field(default_factory=collections.Counter)
    reconnects: collections.Counter = field(default_factory=collections.Counter)
    closes: collections.Counter = field(default_factory=collections.Counter)
    probes_sent: int = 0
    probes_answered: int = 0
    probe_worst: float = 0.0
    calls_placed: int = 0
    calls_answered: int = 0
    call_failures: collections.Counter = field(default_factory=collections.Counter)

    def answered(self, transport: str, data: bytes) -> None:
        for match in _STATUS.finditer(data[:64] if transport != "tcp" else data):
            self.answers[transport][match.group(1).decode() + "xx"] += 1
            if transport != "tcp":
                break


# --- the senders ------------------------------------------------------------------------------


class Fill:
    """The per-message and per-dialog values the templates' placeholders take (``_fuzz_corpus``)."""

    def __init__(self, edge: Edge, sipp_port: int) -> None:
        self.serial = 0
        self.dynamic: dict[bytes, bytes] = {
            b"@CID@": b"no-dialog-yet", b"@FTAG@": b"f0", b"@TTAG@": b"t0",
            b"@CONTACT@": f"sip:uas@127.0.0.1:{sipp_port}".encode(),
            b"@WICROUTE@": f"<sip:127.0.0.1:{edge.ws};transport=ws;lr>".encode(),
            b"@COREROUTE@": f"<sip:127.0.0.1:{edge.udp};transport=udp;lr>".encode(),
            b"@PATH@": f"<sip:127.0.0.1:{edge.udp};transport=udp;lr>".encode(),
            b"@REGCONTACT@": b"sip:fuzz1@unknown.invalid;transport=ws",
        }

    def __call__(self, template: bytes, user: bytes) -> bytes:
        self.serial += 1
        message = template.replace(SERIAL, b"%08d" % (self.serial % 100000000))
        if b"@" in message:
            message = message.replace(b"@USER@", user)
            for name, value in self.dynamic.items():
                message = message.replace(name, value)
        return message


class Datagrams(asyncio.DatagramProtocol):
    def __init__(self, tally: Tally, kind: str = "udp") -> None:
        self.tally, self.kind = tally, kind
        self.transport: Any = None
        self.probes: dict[bytes, float] = {}

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data.startswith(b"SIP/2.0 "):
            if self.kind == "probe":
                found = re.search(rb"branch=(z9hG4bKprobe\d+)", data)
                started = self.probes.pop(found.group(1), None) if found else None
                if started is not None:
                    self.tally.probes_answered += 1
                    self.tally.probe_worst = max(self.tally.probe_worst, time.monotonic() - started)
                return
            self.tally.answered("udp", data)
        elif data.strip():
            self.tally.requests_in["udp"] += 1


class Stream(asyncio.Protocol):
    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.transport: Any = None
        self.closed = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.tally.answered("tcp", data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.tally.closes["tcp"] += 1


class FuzzWsFlow(WsSipFlow):
    """A WIC's WebSocket: counts answers, answers requests from the core, follows one dialog."""

    def __init__(self, wic: Wic, host_header: str, tally: Tally) -> None:
        super().__init__(wic, host_header)
        self.tally = tally
        self.waiting: dict[bytes, asyncio.Future[bytes]] = {}
        self.registering = False  # while True, REGISTER answers go to WsSipFlow.register

    def _sip_message(self, message: bytes) -> None:
        if message.startswith(b"SIP/2.0 "):
            self.tally.answered("ws", message)
            found = _HEADER[b"CSeq"].search(message)
            if found is not None:
                waiter = self.waiting.get(found.group(1).strip())
                if waiter is not None and not waiter.done() and message[8:9] != b"1":
                    waiter.set_result(message)
                elif waiter is None and self.registering and b"REGISTER" in found.group(1):
                    self.responses.put_nowait(message)
            return
        if not message.strip(b"\r\n"):
            return
        self.tally.requests_in["ws"] += 1
        if not message.startswith(b"ACK "):
            self.send_raw(answer_for(message, 486 if message.startswith(b"INVITE ") else 200))

    def _fail(self, error: Exception) -> None:
        if not self.closed:
            text = str(error)
            self.tally.closes["ws " + (text[:27] if text.startswith("closed by the server") else type(error).__name__)] += 1
        super()._fail(error)

    def send_raw(self, message: bytes, binary: bool = False) -> None:
        if not self.closed and self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(message, OPCODE_BINARY if binary else OPCODE_TEXT))


def answer_for(request: bytes, status: int) -> bytes:
    """A UAS response (RFC 3261 §8.2.6): Via, From, To (with a tag), Call-ID and CSeq copied."""
    lines = [b"SIP/2.0 %d %s" % (status, b"OK" if status == 200 else b"Busy Here")]
    for name in (b"Via|v", b"From|f", b"To|t", b"Call-ID|i", b"CSeq"):
        for value in _HEADER[name].findall(request):
            label = name.split(b"|")[0]
            lines.append(label + b": " + value + (b";tag=fz" if label == b"To" and b"tag=" not in value else b""))
    return b"\r\n".join(lines) + b"\r\nContent-Length: 0\r\n\r\n"


class Runner:
    def __init__(self, options: argparse.Namespace, edge: Edge, sipp_port: int, users: dict[str, str]) -> None:
        self.options = options
        self.edge = edge
        self.sipp_port = sipp_port
        self.users = users
        self.tally = Tally()
        self.fill = Fill(edge, sipp_port)
        self.rng = random.Random(options.seed)
        self.udp: list[Datagrams] = []
        self.tcp: list[Stream] = []
        self.flows: list[FuzzWsFlow | None] = [None] * (REGISTERED_WICS + ANONYMOUS_WICS)
        self.reopening: set[int] = set()
        self.tcp_reopening: set[int] = set()
        self.ws_sent = 0
        self.tasks: set[asyncio.Task] = set()
        self.stopping = False

    # --- connections ---

    async def open_udp(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(UDP_SOCKETS):
            _, protocol = await loop.create_datagram_endpoint(lambda: Datagrams(self.tally), local_addr=("127.0.0.1", 0))
            self.udp.append(protocol)
        _, self.probe = await loop.create_datagram_endpoint(lambda: Datagrams(self.tally, "probe"), local_addr=("127.0.0.1", 0))

    async def open_tcp(self, index: int | None = None) -> None:
        loop = asyncio.get_running_loop()
        port = self.edge.sip_ports("tcp")[self.worker_of(len(self.tcp) if index is None else index)]
        _, protocol = await loop.create_connection(lambda: Stream(self.tally), "127.0.0.1", port)
        if index is None:
            self.tcp.append(protocol)
        else:
            self.tcp[index] = protocol
            self.tally.reconnects["tcp"] += 1

    async def open_flow(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        user = f"fuzz{index + 1}" if index < REGISTERED_WICS else f"anon{index}"
        wic = Wic(user, self.users.get(user, "x"), DOMAIN)
        _, flow = await loop.create_connection(lambda: FuzzWsFlow(wic, f"127.0.0.1:{self.edge.ws}", self.tally), "127.0.0.1", self.edge.ws)
        await asyncio.wait_for(flow.opened, 10)
        if index < REGISTERED_WICS:
            flow.registering = True
            try:
                await flow.register(timeout=10)
            except RegistrationFailed as error:
                print(f"  (registration of {user} failed: {error})", file=sys.stderr)
            finally:
                flow.registering = False
            if index == 0:
                self.fill.dynamic[b"@REGCONTACT@"] = f"sip:{user}@{wic.host};transport=ws;ob".encode()
        self.flows[index] = flow

    def reopen(self, index: int) -> None:
        if index in self.reopening or self.stopping:
            return
        self.reopening.add(index)
        self.tally.reconnects["ws"] += 1

        async def again() -> None:
            try:
                await self.open_flow(index)
            except (OSError, asyncio.TimeoutError, ConnectionError) as error:
                print(f"  (reopening WS flow {index} failed: {error})", file=sys.stderr)
                await asyncio.sleep(1)
            finally:
                self.reopening.discard(index)

        self.spawn(again())

    def spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- the one real dialog the in-dialog seeds use ---

    async def calls(self, seeds: dict[str, bytes]) -> None:
        """Every 2 s the first registered WIC calls the sipp UAS (a valid INVITE, then ACK)."""
        number = 1000  # CSeq numbers of their own: the mutants use 1-5
        while not self.stopping:
            await asyncio.sleep(2)
            flow = self.flows[0]
            if flow is None or flow.closed:
                continue
            number += 1
            serial = self.fill.serial + 1
            invite = self.fill(seeds["INVITE"], b"fuzz1").replace(b"CSeq: 1 INVITE", b"CSeq: %d INVITE" % number)
            cseq = b"%d INVITE" % number
            waiter: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            flow.waiting[cseq] = waiter
            flow.send_raw(invite)
            self.tally.calls_placed += 1
            try:
                answer = await asyncio.wait_for(waiter, 10)
            except asyncio.TimeoutError:
                continue
            finally:
                flow.waiting.pop(cseq, None)
            if not answer.startswith(b"SIP/2.0 2"):
                self.tally.call_failures[answer.split(b"\r\n", 1)[0].decode(errors="replace")] += 1
                continue
            self.tally.calls_answered += 1
            to = _HEADER[b"To|t"].search(answer).group(1)
            tag = re.search(rb"tag=([^;>\s]+)", to)
            routes = b",".join(_HEADER[b"Record-Route"].findall(answer))
            uris = re.findall(rb"<([^>]+)>", routes)
            contact = _HEADER[b"Contact|m"].search(answer)
            dynamic = self.fill.dynamic
            dynamic[b"@CID@"] = b"fz-%08d" % serial
            dynamic[b"@FTAG@"] = b"f%08d" % serial
            dynamic[b"@TTAG@"] = tag.group(1) if tag else b"none"
            if contact:
                found = re.search(rb"<([^>]+)>", contact.group(1))
                dynamic[b"@CONTACT@"] = found.group(1) if found else contact.group(1)
            if uris:
                # RFC 3261 §12.1.2: the caller's route set is the Record-Route list reversed, the callee's as listed.
                dynamic[b"@WICROUTE@"] = b", ".join(b"<" + uri + b">" for uri in reversed(uris))
                dynamic[b"@COREROUTE@"] = b", ".join(b"<" + uri + b">" for uri in uris)
            ack = self.fill(seeds["ACK"], b"fuzz1").replace(b"CSeq: 1 ACK", b"CSeq: %d ACK" % number)
            flow.send_raw(ack)

    async def probes(self) -> None:
        """RFC 3261 §16.3 item 3: an OPTIONS with Max-Forwards 0 is answered by the edge itself."""
        number = 0
        while not self.stopping:
            number += 1
            branch = b"z9hG4bKprobe%d" % number
            port = self.probe.transport.get_extra_info("sockname")[1]
            message = (b"OPTIONS sip:127.0.0.1:%d SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:%d;branch=%s\r\nMax-Forwards: 0\r\n"
                       b"From: <sip:probe@127.0.0.1>;tag=p\r\nTo: <sip:127.0.0.1>\r\nCall-ID: probe-%d\r\nCSeq: 1 OPTIONS\r\n"
                       b"Content-Length: 0\r\n\r\n") % (self.edge.udp, port, branch, number)
            self.probe.probes[branch] = time.monotonic()
            self.probe.transport.sendto(message, ("127.0.0.1", self.edge.udp))
            self.tally.probes_sent += 1
            await asyncio.sleep(1)

    # --- the pump ---

    async def run(self, pools: dict[str, list[bytes]], wic_seeds: dict[str, bytes]) -> float:
        await self.open_udp()
        for _ in range(TCP_CONNECTIONS):
            await self.open_tcp()
        for index in range(len(self.flows)):
            await self.open_flow(index)
        self.spawn(self.calls(wic_seeds))
        self.spawn(self.probes())
        schedule = [name for name, weight in WEIGHTS for _ in range(weight)]
        self.rng.shuffle(schedule)
        position = dict.fromkeys(pools, 0)
        sizes = {name: len(pool) for name, pool in pools.items()}
        rate, total, cap = self.options.rate, self.options.messages, self.options.seconds
        started = time.monotonic()
        attempts = sent = 0  # --rate paces the attempts; --messages counts what was really sent
        while sent < total and time.monotonic() - started < cap:
            due = int((time.monotonic() - started) * rate) - attempts
            for _ in range(min(due, 2000)):
                kind = schedule[attempts % len(schedule)]
                index = position[kind]
                position[kind] = index + 1
                template = pools[kind][index % sizes[kind]]
                attempts += 1
                if self._send(kind, template, attempts):
                    sent += 1
                    if sent >= total:
                        break
            await asyncio.sleep(0.005)
        self.stopping = True
        elapsed = time.monotonic() - started
        await asyncio.sleep(3)  # the last answers
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for flow in self.flows:
            if flow is not None:
                flow.close()
        for stream in self.tcp:
            if stream.transport is not None:
                stream.transport.close()
        for protocol in [*self.udp, self.probe]:
            protocol.transport.close()
        await asyncio.sleep(0.2)
        return elapsed

    def worker_of(self, index: int) -> int:
        """The worker the UDP socket or TCP connection ``index`` talks to."""
        return index % self.edge.workers

    def for_worker(self, message: bytes, index: int) -> bytes:
        """A core-side mutant addressed to the worker it goes to: the pools are built once with
        worker 0's ports (the same mutants whatever the shape), worker i's are those + i."""
        worker = self.worker_of(index)
        if worker == 0:
            return message
        for port in (self.edge.udp, self.edge.tcp):
            message = message.replace(b":%d" % port, b":%d" % (port + worker))
        return message

    def _send(self, kind: str, template: bytes, number: int) -> bool:
        """One mutant on ``kind``; False when it could not be sent (reconnecting, edge not reading)."""
        tally = self.tally
        if kind == "udp":
            message = self.fill(template, b"fuzz1")
            index = number % UDP_SOCKETS
            target = self.udp[index]
            if target.transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
                tally.sent["udp (not sent: socket buffer full)"] += 1
                return False
            message = message.replace(b"@PORT@", b"%d" % target.transport.get_extra_info("sockname")[1])
            target.transport.sendto(self.for_worker(message, index), ("127.0.0.1", self.edge.sip_ports("udp")[self.worker_of(index)]))
        elif kind == "tcp":
            index = number % TCP_CONNECTIONS
            stream = self.tcp[index]
            if stream.closed or stream.transport.is_closing():
                stream.closed = True
                if index not in self.tcp_reopening and not self.stopping:
                    self.tcp_reopening.add(index)

                    async def again() -> None:
                        try:
                            await self.open_tcp(index)
                        except OSError as error:
                            print(f"  (reopening TCP connection {index} failed: {error})", file=sys.stderr)
                            await asyncio.sleep(1)
                        finally:
                            self.tcp_reopening.discard(index)

                    self.spawn(again())
                tally.sent["tcp (not sent: reconnecting)"] += 1
                return False
            if stream.transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
                tally.sent["tcp (not sent: edge not reading)"] += 1
                return False
            stream.transport.write(self.for_worker(self.fill(template, b"fuzz1"), index))
        else:
            self.ws_sent += 1
            flow = None
            for step in range(len(self.flows)):  # the next open flow; closed ones are reopened meanwhile
                index = (number + step) % len(self.flows)
                candidate = self.flows[index]
                if candidate is not None and not candidate.closed and not candidate.transport.is_closing():
                    flow = candidate
                    break
                if candidate is not None:
                    self.flows[index] = None
                self.reopen(index)
            if flow is None:
                tally.sent["ws (not sent: every flow reconnecting)"] += 1
                return False
            if flow.transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
                tally.sent["ws (not sent: edge not reading)"] += 1
                return False
            user = flow.wic.user.encode()
            message = self.fill(template, user)
            roll = self.ws_sent % 5000
            if roll == 1:
                flow.send_raw(b"x" * (MAX_MESSAGE_SIZE + 1), binary=True)  # RFC 6455 §7.4.1: 1009
                tally.sent["ws oversize frame (1009 expected)"] += 1
                return True
            elif roll == 2:
                flow.transport.write(client_frame(b"\xff\xfe" + message, OPCODE_TEXT))  # RFC 6455 §8.1: 1007
                tally.sent["ws text frame not UTF-8 (1007 expected)"] += 1
                return True
            else:
                try:
                    message.decode()
                    binary = False
                except UnicodeDecodeError:
                    binary = True  # RFC 7118 §4.2: binary frames carry what is not UTF-8
                flow.send_raw(message, binary)
        tally.sent[kind] += 1
        return True


# --- report -----------------------------------------------------------------------------------


def print_report(options: argparse.Namespace, tally: Tally, elapsed: float, pool_cpu: float, generator_cpu: float,
                 snapshots: dict[str, dict[str, Any]], findings: tuple[collections.Counter, dict], log_path: str) -> None:
    sent = sum(count for name, count in tally.sent.items() if name in ("udp", "tcp", "ws"))
    print(f"fuzz: {sent:,} mutated messages in {elapsed:.1f} s = {sent / elapsed if elapsed else 0:,.0f}/s "
          f"(target {options.rate:g}/s; shared 2-core machine, figures are noisy)")
    for name, count in sorted(tally.sent.items()):
        print(f"  sent {name:<36} {count:>10,}")
    for transport in ("udp", "tcp", "ws"):
        classes = tally.answers.get(transport, {})
        text = ", ".join(f"{name} {classes[name]:,}" for name in sorted(classes)) or "none"
        print(f"  answers over {transport:<4} {text}")
    print(f"  requests from the edge: {dict(tally.requests_in)}; reconnects {dict(tally.reconnects)}; closes {dict(tally.closes)}")
    print(f"  real calls placed {tally.calls_placed}, answered {tally.calls_answered}, refused {dict(tally.call_failures)}")
    print(f"  liveness probes (UDP OPTIONS, Max-Forwards 0, 1/s): answered {tally.probes_answered}/{tally.probes_sent}, "
          f"slowest answer {tally.probe_worst * 1000:.0f} ms (unanswered: lost in a full UDP receive buffer or not answered)")
    edge_cpu = snapshots["after"]["cpu"] - snapshots["before"]["cpu"]
    print(f"  CPU: edge {edge_cpu:.1f} s ({1e6 * edge_cpu / max(sent, 1):.0f} µs/message); generator {generator_cpu:.1f} s "
          f"({1e6 * generator_cpu / max(sent, 1):.0f} µs/message) plus {pool_cpu:.1f} s building the pool")
    names = sorted({key for snapshot in snapshots.values() for key in snapshot["gauges"]})
    print(f"  {'edge':<40}" + "".join(f"{moment:>14}" for moment in snapshots))
    first = next(iter(snapshots.values()))
    print(f"  {'RSS (MiB)' + (', workers summed' if 'rss_kib by worker' in first else ''):<40}"
          + "".join(f"{s['rss_kib'] / 1024:>14.1f}" for s in snapshots.values()))
    for index in range(len(first.get("rss_kib by worker", []))):
        print(f"  {f'  RSS worker {index} (MiB)':<40}" + "".join(f"{s['rss_kib by worker'][index] / 1024:>14.1f}" for s in snapshots.values()))
    for key, label in (("supervisor rss_kib", "RSS supervisor (MiB)"), ("core rss_kib", "RSS core, its own processes (MiB)")):
        if key in first:
            print(f"  {label:<40}" + "".join(f"{s[key] / 1024:>14.1f}" for s in snapshots.values()))
    print(f"  {'open fds (/proc)':<40}" + "".join(f"{s['fds']:>14}" for s in snapshots.values()))
    for name in names:
        print(f"  {name:<40}" + "".join(f"{str(s['gauges'].get(name, '-')).removesuffix('.0'):>14}" for s in snapshots.values()))
    counts, families = findings
    print(f"  edge log {log_path}: {counts['traceback']} tracebacks, {counts['unhandled error']} 'Unhandled error', "
          f"{counts['critical']} critical, {counts['error']} error lines; {len(families)} families")
    for key, (count, sample) in sorted(families.items(), key=lambda item: -item[1][0]):
        print(f"  --- {count} × {key}")
        for line in sample:
            print("      " + line[:200])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=1800.0, help="cap on the sending time")
    parser.add_argument("--rate", type=float, default=3000.0, help="messages per second, all transports")
    parser.add_argument("--settle", default="60", help="seconds after the traffic of the later measurements, e.g. 60,140 "
                        "(140 s: past the WIC side's RFC 6026 Timer L, 64*T1 = 128 s)")
    parser.add_argument("--pool", type=int, default=20000, help="mutants built per transport")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the run directory (ini, log)")
    parser.add_argument("--probe", action="store_true", help="also count the edge's live objects by class through "
                        "its SSH console at each moment (gc.collect() first) and print what grew")
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES",
                        help="with --probe: run the edge under PYTHONTRACEMALLOC=FRAMES and print the biggest differences")
    parser.add_argument("--cycles", choices=("watch", "types"), default="",
                        help="what the cyclic collector did during the traffic (benchmarks/_cycle_probe.py): 'watch' "
                        "(collections, objects freed, time in them), 'types' (and what it freed by type, by a saving "
                        "collection every second; with --tracemalloc by site)")
    parser.add_argument("--core", choices=("embedded", "separate", "kamailio"), default="embedded",
                        help="embedded: in the edge's process; separate: epcscf's embedded core in its own twistd; "
                        "kamailio: the interop tests' Kamailio (both: the edge's [core] mode = external, as deployed)")
    parser.add_argument("--epcscf-workers", type=int, default=1, help="the edge's [service] workers")
    parser.add_argument("--edge-option", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="an experiment's setting in the edge's ini (e.g. sip.wic_t1=0.05); repeatable")
    options = parser.parse_args(argv)
    if options.epcscf_workers > 1 and (options.probe or options.cycles):
        parser.error("--probe and --cycles read one process through its console: not with --epcscf-workers > 1")
    raise_open_files_limit(4096)
    directory = tempfile.mkdtemp(prefix="epcscf-fuzz-")
    users = {f"fuzz{i}": f"fuzz-secret-{i}" for i in range(1, REGISTERED_WICS + 1)} | {"bob": "bob-secret"}
    edge = Edge(directory, workers=options.epcscf_workers)
    for setting in options.edge_option:
        name, _, value = setting.partition("=")
        section, _, key = name.partition(".")
        edge.extra.setdefault(section, []).append(f"{key} = {value}")
    if options.probe or options.cycles:
        edge.enable_console()
    if options.probe:
        edge.trace_frames = options.tracemalloc
    probes: dict[str, dict[str, Any]] = {}

    def probe(moment: str) -> None:
        if options.probe:
            name = os.path.join(directory, moment.replace(" ", "_") + ".tracemalloc") if options.tracemalloc else None
            as_is = edge.heap(as_is=True)  # before any collection: what cyclic garbage adds
            probes[moment] = edge.probe(name)
            probes[moment]["heap as is"] = as_is
            probes[moment]["snapshot"] = name
            probes[moment]["rss_kib"] = edge.rss_kib()
            probes[moment]["heap"] = edge.heap()
            probes[moment]["arenas"] = edge.arenas(baseline=moment == "before")
            referrers = edge.call_referrers()
            print(f"whole calls {moment}: {json.dumps(referrers)}", file=sys.stderr)

    sipp: subprocess.Popen | None = None
    core: Core | None = None

    def snapshot() -> dict[str, Any]:
        found = edge.snapshot()
        if core is not None:
            found["core rss_kib"] = core.rss_kib()
        return found

    try:
        settles = [float(text) for text in options.settle.split(",")]
        sipp, sipp_port = start_sipp(directory, options.seconds + max(settles) + 120)
        if options.core != "embedded":
            core = start_core(options.core, directory, users, sipp_port)
            edge.core_next_hop = core.next_hop
        edge.start(users)
        print(f"shape: core {options.core}" + (f" ({core.next_hop})" if core else " (in the edge's process)")
              + f", edge workers {options.epcscf_workers}", file=sys.stderr)
        pool_started = time.process_time()
        core_side = core_seeds()
        static = {b"@SIPP@": b"%d" % sipp_port, b"@EDGE@": b"%d" % edge.udp, b"@EDGEUDP@": b"%d" % edge.udp}

        def fixed(seeds: dict[str, bytes], extra: dict[bytes, bytes]) -> dict[str, bytes]:
            out = {}
            for name, text in seeds.items():
                for key, value in {**static, **extra}.items():
                    text = text.replace(key, value)
                out[name] = text
            return out

        pools = {
            "udp": build_pool(fixed(core_side, {b"@TRANSPORT@": b"UDP"}), options.pool, options.seed, 65000),  # one datagram
            "tcp": build_pool(fixed(core_side, {b"@TRANSPORT@": b"TCP", b"@EDGE@": b"%d" % edge.tcp, b"@PORT@": b"9"}),
                              options.pool, options.seed + 1, 2 * MAX_MESSAGE_SIZE),
            # Kept under [ws] max_message_size: a frame over it is a 1009 close (sent on purpose every 5,000).
            "ws": build_pool(fixed(wic_seeds(), {}), options.pool, options.seed + 2, MAX_MESSAGE_SIZE - 1024),
        }
        pool_cpu = time.process_time() - pool_started
        time.sleep(1)
        snapshots = {"before": snapshot()}
        probe("before")
        if options.cycles:
            edge._run_probe("_cycle_probe.py", {"CYCLE_PROBE": "start", "CYCLE_SAMPLE": options.cycles == "types",
                                                "CYCLE_TRACE": 0 if options.probe else options.tracemalloc}, "CYCLE-PROBE")
        runner = Runner(options, edge, sipp_port, users)
        generator_started = time.process_time()
        elapsed = asyncio.run(runner.run(pools, fixed(wic_seeds(), {})))
        generator_cpu = time.process_time() - generator_started
        snapshots["after"] = snapshot()
        stopped = time.monotonic()
        if options.cycles:
            print_cycles(edge._run_probe("_cycle_probe.py", {"CYCLE_PROBE": "read"}, "CYCLE-PROBE"), runner.tally)
        probe("after")  # the peak: what the burst holds when the traffic stops
        for settle in sorted(float(text) for text in options.settle.split(",")):
            print(f"(settling until {settle:g} s after the traffic)", file=sys.stderr)
            time.sleep(max(0.0, stopped + settle - time.monotonic()))
            snapshots[f"after {settle:g} s"] = snapshot()
            probe(f"after {settle:g} s")
        if edge.process.poll() is not None:
            print(f"epcscf EXITED with {edge.process.returncode} during the run")
        print_report(options, runner.tally, elapsed, pool_cpu, generator_cpu, snapshots, log_findings(edge.log_path), edge.log_path)
        print_probes(probes)
        if options.probe:
            # What the allocators keep once the last timers have run: with a trim, then with the
            # ended calls the console keeps ([calls] history) forgotten and another trim.
            edge.heap(trim=True)
            trimmed = edge.heap()
            edge.heap(forget_history=True, trim=True)
            forgotten = edge.heap()
            print(f"heap after a malloc_trim(0): {_heap_line(trimmed)}")
            print(f"heap after forgetting the ended calls and the memos, and a malloc_trim(0): {_heap_line(forgotten)}")
    finally:
        if sipp is not None and sipp.poll() is None:
            sipp.kill()
            sipp.wait(5)
        edge.stop()
        if core is not None:
            core.stop()
        if not options.keep:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


def print_cycles(found: dict[str, Any], tally: Any) -> None:
    """``--cycles``: the collector's work during the traffic, per mutant."""
    mutants = max(1, sum(tally.sent.values()))
    print(f"cyclic collector during the traffic: collections by generation {found['collections']}, "
          f"{found['collected']} objects freed ({found['collected'] / mutants:.2f} per mutant), "
          f"{found['gc_seconds']:.2f} s inside it of the edge's {found['process_cpu']:.1f} s CPU meanwhile "
          f"({1e6 * found['gc_seconds'] / mutants:.1f} µs per mutant)")
    for name, count in found.get("by type", []):
        print(f"  {count / mutants:8.3f}  {name}")
    for name, site, count in found.get("by site", []):
        print(f"  {count / mutants:8.3f}  {name:28s} {site}")


def _heap_line(heap: dict[str, Any]) -> str:
    mib = 1024 * 1024
    return (f"RSS {heap['rss_kib'] / 1024:.1f} MiB; pymalloc {heap['arenas']} arenas (highwater {heap['arenas highwater']}), "
            f"{(heap['pymalloc used bytes'] or 0) / mib:.1f} MiB in blocks used, {(heap['pymalloc free bytes'] or 0) / mib:.1f} MiB free; "
            f"glibc heap {heap.get('glibc heap', 0) / mib:.1f} MiB ({heap.get('glibc in use', 0) / mib:.1f} in use, "
            f"{heap.get('glibc free', 0) / mib:.1f} free), mmapped {heap.get('glibc mmapped', 0) / mib:.1f} MiB; "
            f"anonymous {heap.get('smaps Anonymous', 0) / mib:.1f} MiB, file-backed "
            f"{(heap.get('smaps Shared_Clean', 0) + heap.get('smaps Private_Clean', 0)) / mib:.1f} MiB"
            + (f"; traced {heap['traced'] / mib:.1f} MiB, highest since the last reading {heap['traced peak'] / mib:.1f}"
               if "traced" in heap else ""))


def print_probes(probes: dict[str, dict[str, Any]], top: int = 25) -> None:
    """What grew between the first probe and each later one: objects by class, delayed calls,
    and (under tracemalloc) the biggest differences by allocation site."""
    if len(probes) < 2:
        return
    moments = list(probes)
    first = probes[moments[0]]
    for moment in moments[1:]:
        print(f"live objects in the arenas added since {moments[0]}, at {moment}:")
        for key, value in probes[moment].get("arenas", {}).items():
            if isinstance(value, list) and value and isinstance(value[0], list):
                print(f"  {key}:")
                for row in value:
                    print("    " + "  ".join(str(item) for item in row))
            else:
                print(f"  {key}: {value}")
    for moment in moments[1:]:
        now = probes[moment]
        print(f"live objects {moment} versus {moments[0]} (RSS {first['rss_kib'] / 1024:.1f} → {now['rss_kib'] / 1024:.1f} MiB):")
        print(f"  heap {moments[0]}: {_heap_line(first['heap'])}")
        print(f"  heap {moment}, before any collection: {_heap_line(now['heap as is'])}")
        print(f"  heap {moment}: {_heap_line(now['heap'])}")
        garbage = now.get("cyclic garbage")
        if garbage:
            print(f"  cyclic garbage the first collection freed: {garbage['objects']:,} objects, "
                  f"{garbage['bytes'] / 1024 / 1024:.1f} MiB: " + ", ".join(f"{name} {count:,} ({size / 1024:.0f} KiB)"
                                                                     for name, count, size in garbage["by type"][:20]))
        for kind in ("objects", "delayed"):
            before, after = first["detail"][kind], now["detail"][kind]
            grown = sorted(((after.get(name, 0) - before.get(name, 0), name) for name in set(before) | set(after)), reverse=True)
            print(f"  {kind}: " + ", ".join(f"{name} {delta:+d}" for delta, name in grown[:top] if delta > 0))
        if first.get("snapshot") and now.get("snapshot"):
            from soak import print_tracemalloc

            print_tracemalloc(first["snapshot"], now["snapshot"], top)
            print_owners(first["snapshot"], now["snapshot"])


def _owner(traceback: Any) -> str:
    """The newest frame of ours (or of the library that allocated) in a trace: who owns it."""
    frames = list(traceback)[::-1]  # tracemalloc lists the oldest frame first
    for frame in frames:
        name = frame.filename
        if "/epcscf/" in name and "/benchmarks/" not in name:
            return f"{name.rsplit('/epcscf/', 1)[-1]}:{frame.lineno}"
    for frame in frames:
        for library in ("/twisted/", "/autobahn/", "/txaio/", "/asyncio/", "/OpenSSL/", "/aioice/", "/logging/"):
            if library in frame.filename:
                return f"{library.strip('/')}:{frame.filename.rsplit(library, 1)[-1]}:{frame.lineno}"
    return f"{frames[0].filename.rsplit('/', 1)[-1]}:{frames[0].lineno}" if frames else "?"


def print_owners(before: str, after: str, top: int = 40) -> None:
    """Traced memory grown since ``before``, by owner (the newest epcscf frame of each trace)
    and by module: the peak's accounting."""
    import tracemalloc

    first, second = tracemalloc.Snapshot.load(before), tracemalloc.Snapshot.load(after)
    keep = (tracemalloc.Filter(False, tracemalloc.__file__),)
    grown: collections.Counter = collections.Counter()
    blocks: collections.Counter = collections.Counter()
    large: collections.Counter = collections.Counter()  # blocks over 512 B: glibc's, not pymalloc's
    for difference in second.filter_traces(keep).compare_to(first.filter_traces(keep), "traceback"):
        owner = _owner(difference.traceback)
        grown[owner] += difference.size_diff
        blocks[owner] += difference.count_diff
        if difference.count and difference.size / difference.count > 512:
            large[owner] += difference.size_diff
    modules: collections.Counter = collections.Counter()
    for owner, size in grown.items():
        modules[owner.rsplit(":", 1)[0]] += size
    mib = 1024 * 1024
    print(f"traced growth by owner (newest epcscf frame): {sum(grown.values()) / mib:+.1f} MiB in all, "
          f"{sum(large.values()) / mib:+.1f} MiB of it in blocks over 512 B")
    for owner, size in grown.most_common(top):
        print(f"  {size / mib:+8.2f} MiB {blocks[owner]:+8d} blocks ({large[owner] / mib:+.2f} large)  {owner}")
    print("traced growth by module:")
    for module, size in modules.most_common(25):
        print(f"  {size / mib:+8.2f} MiB  {module}")


if __name__ == "__main__":
    sys.exit(main())
