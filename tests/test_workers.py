"""``[service] workers = 2`` as an operator runs it: a real ``twistd epcscf`` supervisor, two
worker processes, the embedded core in the supervisor, WICs over real WebSockets, the SSH
console, ``/metrics``, SIGHUP, a real ``kill -9`` of a worker, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import socket
import time
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from twisted.web.client import Agent, readBody

from epcscf.config import Listener, load
from epcscf.sip.message import Request, Response, make_response
from epcscf.sip.proxy_rules import name_addr_uri
from epcscf.workers.control import Chunked, Json
from epcscf.workers.metrics import merge_expositions
from epcscf.workers.plan import WorkerPlan, media_slice, worker_config, worker_sip_listeners
from tests.support.daemon import Daemon
from tests.support.deployment import DOMAIN, write_users
from tests.support.processes import TOP, child_env, process_alive, wait_for
from tests.support.ssh_console import ANSI, PROMPT, _ConsoleSession, ssh_invocation
from tests.support.udp_peer import UdpSipPeer
from tests.support.wic import WsSipClient, as_deferred
from tests.test_calls_media import SimulatedWic
from tests.test_twistd import TWISTD

USERS = {f"user{n}": f"secret-{n}" for n in range(40)}
#: WICs connected to the shared port before its spread over the two workers is judged. SO_REUSEPORT
#: picks a worker by a hash of the 4-tuple, so 12 connections all land on one worker once in 2^11
#: runs: connect more, one at a time, until both have some (12 at least; 40 all on one worker,
#: which a broken spread gives every time, by chance once in 2^39).
SPREAD_AT_LEAST = 12
READY = re.compile(r"worker (\d) \(pid (\d+)\) (?:ready|restarted and ready) on tcp:127\.0\.0\.1:(\d+), udp:127\.0\.0\.1:(\d+)")


def workers_config(directory: str, override: str) -> str:
    users = write_users(directory, USERS)
    path = os.path.join(directory, "epcscf.ini")
    with open(path, "w") as handle:
        handle.write(
            f"""\
[service]
state_dir = {directory}/var
drain_timeout = 5
workers = 2
[sip]
listen = tcp:127.0.0.1:0, udp:127.0.0.1:0
[ws]
listen = ws:127.0.0.1:0
[core]
mode = embedded
domain = {DOMAIN}
listen = tcp:127.0.0.1:0, udp:127.0.0.1:0
users = {users}
[nonsip]
listen = ws:127.0.0.1:0
[media]
port_range = 42000-42099
[manhole]
enabled = true
port = 0
users = {os.path.join(TOP, "etc", "manhole.users")}
[metrics]
enabled = true
port = 0
"""
        )
    with open(override, "w") as handle:
        handle.write("[ws]\nping_interval = 25\n")
    return path


class _AsyncConsole(_ConsoleSession):
    """The console session, typing a line at each fresh prompt and hanging up only once every
    line is typed and ``expected`` Deferred results have been shown (the supervisor's commands
    answer after the prompt is back)."""

    def __init__(self, lines: list[str], expected: int) -> None:
        super().__init__(lines)
        self.expected = expected

    def outReceived(self, data: bytes) -> None:  # noqa: N802
        self.output += data
        screen = ANSI.sub(b"", self.output)
        prompts = int(PROMPT in screen.split(b"\n", 1)[0]) + screen.count(b"\n" + PROMPT)
        while prompts > self.prompts_seen:
            self.prompts_seen += 1
            if self.lines:
                self.transport.write(self.lines.pop(0).encode() + b"\r")
        if not self.lines and screen.count(b"called back:") >= self.expected and screen.endswith(PROMPT):
            self.transport.signalProcess("TERM")

    errReceived = outReceived


async def console(port: int, lines: list[str], expected: int) -> str:
    argv, env, directory = ssh_invocation(port, "admin", "epcscf")
    session = _AsyncConsole(lines, expected)
    process = reactor.spawnProcess(session, "/usr/bin/ssh", argv, env=env)
    guard = reactor.callLater(20, lambda: process.signalProcess("KILL"))
    try:
        _, screen = await session.finished
    finally:
        if guard.active():
            guard.cancel()
    return screen.decode("utf-8", "replace")


async def scrape(port: int) -> str:
    response = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{port}/metrics".encode())
    return (await readBody(response)).decode()


def sample(body: str, name: str, worker: str) -> float:
    match = re.search(rf'^{name}{{worker="{worker}"[^}}]*}} (\S+)$', body, re.MULTILINE)
    return float(match.group(1)) if match else float("nan")


async def in_dialog_request(port: int, route: str, timeout: float = 5.0) -> tuple[str, float]:
    """A BYE from "the core" over TCP with ``route`` on top; (status line of the answer, seconds)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    local = writer.get_extra_info("sockname")
    request = (
        f"BYE sip:user@127.0.0.1;transport=ws SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP 127.0.0.1:{local[1]};branch=z9hG4bK{secrets.token_hex(6)}\r\n"
        f"Max-Forwards: 70\r\nRoute: {route}\r\n"
        f"From: <sip:peer@{DOMAIN}>;tag=a1\r\nTo: <sip:user0@{DOMAIN}>;tag=b2\r\n"
        f"Call-ID: {secrets.token_hex(8)}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    )
    started = time.monotonic()
    writer.write(request.encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    elapsed = time.monotonic() - started
    writer.close()
    return head.split(b"\r\n", 1)[0].decode(), elapsed


async def janus_register(port: int, name: str) -> "JanusClient":
    """A non-SIP WIC (Janus API) registering ``name``; the client, once registered."""
    from tests.test_nonsip_janus import JanusClient

    client = JanusClient(f"ws://127.0.0.1:{port}")
    await client.connect()
    session = (await client.request({"janus": "create"}))["data"]["id"]
    handle = (await client.request({"janus": "attach", "plugin": "janus.plugin.sip", "session_id": session}))["data"]["id"]
    body = {"request": "register", "username": f"sip:{name}@{DOMAIN}", "secret": USERS[name]}
    await client.request({"janus": "message", "session_id": session, "handle_id": handle, "body": body})
    events = [(await client.event())["result"]["event"] for _ in range(2)]
    assert events == ["registering", "registered"], events
    return client


def in_dialog_bye(port: int, route: str) -> Request:
    """A BYE from "the core" over UDP (its Via: ``port``) with ``route`` on top."""
    bye = Request("BYE", "sip:user@127.0.0.1;transport=ws")
    bye.headers.add("Via", f"SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{secrets.token_hex(6)}")
    bye.headers.add("Max-Forwards", "70")
    bye.headers.add("Route", route)
    bye.headers.add("From", f"<sip:peer@{DOMAIN}>;tag=a1")
    bye.headers.add("To", f"<sip:user0@{DOMAIN}>;tag=b2")
    bye.headers.add("Call-ID", secrets.token_hex(8))
    bye.headers.add("CSeq", "2 BYE")
    return bye


class WorkerProcessesTests(unittest.TestCase):
    async def test_two_workers_share_the_port_answer_as_one_and_survive_kill_9(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        override = os.path.join(directory, "local.ini")
        config = workers_config(directory, override)
        argv = [TWISTD, "--nodaemon", "--pidfile=", "epcscf", "--config", config, "--config", override]
        daemon = Daemon()
        daemon.process = reactor.spawnProcess(daemon, TWISTD, argv, env=child_env(), path=directory)
        self.addCleanup(daemon.kill)
        await wait_for(lambda: len(READY.findall(daemon.output)) >= 2 or daemon.ended.called, timeout=30)
        self.assertFalse(daemon.ended.called, daemon.output)
        workers = {int(i): (int(pid), int(port)) for i, pid, port, _ in READY.findall(daemon.output)}
        udp_ports = {int(i): int(port) for i, _, _, port in READY.findall(daemon.output)}
        self.addCleanup(lambda: [process_alive(pid) and os.kill(pid, signal.SIGKILL) for pid, _ in workers.values()])
        self.assertEqual(sorted(workers), [0, 1])
        self.assertNotEqual(workers[0][1], workers[1][1])  # each its own core-facing SIP port
        ws_port = int(re.search(r"worker 0 \(pid \d+\) ready on .*, ws:127\.0\.0\.1:(\d+)", daemon.output).group(1))
        self.assertIn(f"worker 1 (pid {workers[1][0]}) ready on", daemon.output)
        self.assertIn(f"ws:127.0.0.1:{ws_port}", daemon.output.split(f"worker 1 (pid {workers[1][0]}) ready on", 1)[1].split("\n")[0])
        metrics_port = int(re.search(r"metrics of all workers on http://127\.0\.0\.1:(\d+)/", daemon.output).group(1))
        console_port = int(re.search(r"manhole SSH console on 127\.0\.0\.1:(\d+)", daemon.output).group(1))

        # WICs on the one shared port (SPREAD_AT_LEAST, more until both workers have some): each
        # registers through whichever worker took it, and that worker's own address is the Path
        # the core keeps (RFC 3327).
        async def register(name: str) -> tuple[WsSipClient, int, str]:
            client = WsSipClient(f"ws://127.0.0.1:{ws_port}", name, USERS[name], DOMAIN)
            await client.connect()
            response = await client.register()
            path = response.headers.get("Path") or ""
            return client, response.status, path

        clients: dict[str, WsSipClient] = {}
        self.addCleanup(lambda: as_deferred(asyncio.gather(*(c.close() for c in clients.values()), return_exceptions=True)))
        paths: dict[str, str] = {}
        owner: dict[str, int] = {}
        for name in USERS:
            if len(owner) >= SPREAD_AT_LEAST and len(set(owner.values())) == 2:
                break
            client, status, path = await as_deferred(register(name))
            clients[name] = client
            self.assertEqual(status, 200, name)
            paths[name] = path
            port = int(re.search(r"@127\.0\.0\.1:(\d+)", path).group(1))
            owner[name] = next(index for index, (_, sip_port) in workers.items() if sip_port == port)
        names = list(owner)  # the WICs registered, in order
        on = {index: [name for name in names if owner[name] == index] for index in workers}
        self.assertTrue(on[0] and on[1], f"SO_REUSEPORT sent all {len(names)} connections to one worker: {on}")

        # One /metrics: every worker's figures, labelled, each family once.
        body = await scrape(metrics_port)
        self.assertEqual(sample(body, "epcscf_ws_connections", "0"), len(on[0]), body)
        self.assertEqual(sample(body, "epcscf_ws_connections", "1"), len(on[1]))
        self.assertEqual(sample(body, "epcscf_workers_running", "supervisor"), 2.0)
        self.assertEqual(body.count("# TYPE epcscf_ws_connections gauge"), 1)

        # A call from a WIC of worker 0 to an IMS party (a bare UDP peer behind the embedded core),
        # answered and acknowledged: worker 0 then dies mid-call.
        ims = UdpSipPeer()
        ims_port = ims.start()
        self.addCleanup(ims.stop)
        caller = clients[on[0][0]]
        wic = SimulatedWic(controlling=True)
        await wic.gather()
        self.addCleanup(lambda: defer.ensureDeferred(wic.close()))
        invite = caller.request("INVITE", f"sip:ims@127.0.0.1:{ims_port}", body=wic.sdp("actpass"), content_type="application/sdp")
        invite.headers.add("Contact", f"<sip:{caller.user}@{caller.host};transport=ws;ob>")
        await as_deferred(caller.send(invite))
        core_invite, core_address = await as_deferred(ims.next_request(10))
        ok = make_response(core_invite, 200, to_tag="ims1")
        for route in core_invite.headers.get_all("Record-Route"):
            ok.headers.add("Record-Route", route)
        ok.headers.add("Contact", f"<sip:ims@127.0.0.1:{ims_port}>")
        ok.headers.add("Content-Type", "application/sdp")
        ok.body = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        ims.send(ok, core_address)
        answer = await as_deferred(caller.final_response(10))
        self.assertEqual(answer.status, 200)

        # The console in the supervisor lists the registrations and calls of both workers and
        # closes a flow in whichever worker has it.
        victim = on[1][0]
        screen = await console(
            console_port,
            [
                "registrations()",
                "calls()",
                "release('no-such-call')",
                f"flows().addCallback(lambda rows: disconnect([r for r in rows if r['worker'] == 1][0]['flow']))",
            ],
            expected=4,
        )
        self.assertIn("no live call 'no-such-call' (see calls())", screen)
        self.assertRegex(screen, rf"\n0 +{re.escape(invite.headers.get('Call-ID') or '')} +originating +\w+")
        for name in names:
            self.assertRegex(screen, rf"\n{owner[name]} +sip:{name}@{DOMAIN} ")
        self.assertRegex(screen, r"\n1 +ws-\S+ +127\.0\.0\.1:\d+ +closing")
        await as_deferred(clients[victim]._reader)  # the WIC sees its WebSocket closed
        self.assertEqual(clients[victim].socket.close_code, 1000)

        # SIGHUP: checked by the supervisor, re-read by every worker.
        with open(override, "w") as handle:
            handle.write("[ws]\nping_interval = 20\n")
        os.kill(daemon.process.pid, signal.SIGHUP)
        for index in workers:
            await wait_for(lambda: f"[worker{index}/epcscf.ops.lifecycle#info] reload: [ws] ping_interval 25.0 → 20.0 (applied)" in daemon.output)

        # kill -9 of worker 0 with WICs registered on it, one of them in the call.
        dead_pid, dead_port = workers[0]
        dead_path = paths[on[0][0]]
        os.kill(dead_pid, signal.SIGKILL)
        await wait_for(lambda: f"worker 0 (pid {dead_pid}) died: killed by SIGKILL; restarting it" in daemon.output)
        # While it restarts, the core sends to its ports: the supervisor holds them open, so the
        # UDP request and the TCP connection wait in the kernel for the new worker, which answers
        # 430 (RFC 5626 §5.3) — no port unreachable, no refused connection, nothing lost.
        core = UdpSipPeer()
        core_port = core.start()
        self.addCleanup(core.stop)
        window_bye = in_dialog_bye(core_port, dead_path.split(",")[0].strip())
        core.send(window_bye, ("127.0.0.1", udp_ports[0]))
        window_tcp = asyncio.ensure_future(in_dialog_request(dead_port, dead_path.split(",")[0].strip(), timeout=15))
        await asyncio.sleep(0)
        # Sent inside the window: the new worker has not started yet (≥ 0.25 s back-off, then Python).
        self.assertEqual(daemon.output.count("[worker0/epcscf.pcscf#info] eP-CSCF listening"), 1)
        window_udp = await as_deferred(asyncio.wait_for(core.received.get(), 15))
        self.assertEqual((type(window_udp[0]), window_udp[0].status), (Response, 430))
        self.assertEqual(window_udp[0].headers.get("Call-ID"), window_bye.headers.get("Call-ID"))
        self.assertEqual((await as_deferred(window_tcp))[0], "SIP/2.0 430 Flow Failed")
        await wait_for(lambda: "restarted and ready" in daemon.output, timeout=15)
        restarted = READY.findall(daemon.output)[-1]
        self.assertEqual((restarted[0], int(restarted[2]), int(restarted[3])), ("0", dead_port, udp_ports[0]))  # the same SIP ports
        self.assertNotEqual(int(restarted[1]), dead_pid)
        workers[0] = (int(restarted[1]), dead_port)
        self.assertEqual(daemon.output.count(f"(pid {dead_pid}) died"), 1)  # logged once

        # The IMS party hangs up: its BYE follows the dialog's route set (RFC 3261 §12.2.1.1) through
        # the embedded core to worker 0's address, where the restarted worker answers 430 at once.
        routes = [value for header in core_invite.headers.get_all("Record-Route") for value in header.split(",")]
        bye = Request("BYE", name_addr_uri(core_invite.headers.get("Contact") or ""))
        bye.headers.add("Via", f"SIP/2.0/UDP 127.0.0.1:{ims_port};branch=z9hG4bK{secrets.token_hex(6)}")
        bye.headers.add("Max-Forwards", "70")
        for route in routes:
            bye.headers.add("Route", route.strip())
        bye.headers.add("From", (core_invite.headers.get("To") or "") + ";tag=ims1")
        bye.headers.add("To", core_invite.headers.get("From") or "")
        bye.headers.add("Call-ID", core_invite.headers.get("Call-ID") or "")
        bye.headers.add("CSeq", "1 BYE")
        started = time.monotonic()
        ims.send(bye, core_address)
        while True:
            message, _ = await as_deferred(asyncio.wait_for(ims.received.get(), 10))
            if isinstance(message, Response) and message.status >= 200:
                break
        self.assertEqual((message.status, time.monotonic() - started < 2.0), (430, True), message.status)

        # The core's next request straight to a flow of the dead worker: 430 at once (RFC 5626 §5.3.1).
        status, elapsed = await as_deferred(in_dialog_request(dead_port, dead_path.split(",")[0].strip()))
        self.assertEqual(status, "SIP/2.0 430 Flow Failed")
        self.assertLess(elapsed, 2.0)
        # Its WICs lost their WebSocket; reconnecting, they register on a live worker.
        for name in on[0]:
            await as_deferred(clients[name]._reader)
            client, status, _ = await as_deferred(register(name))
            clients[name] = client
            self.assertEqual(status, 200)
        body = await scrape(metrics_port)
        self.assertEqual(sample(body, "epcscf_worker_restarts_total", "0"), 1.0, body)
        # Nothing of the dead worker's in the other one: worker 1 has its own WICs only (less the disconnected one).
        survivors = len(on[1]) - 1
        moved = sample(body, "epcscf_ws_connections", "1") - survivors
        self.assertEqual(sample(body, "epcscf_ws_connections", "0") + moved, len(on[0]))

        # [nonsip]: the Janus API port is shared like the [ws] one; each worker's per-handle SIP UA
        # registers through that worker's own core-side port (the 200 comes back by its Via).
        janus_port = int(re.search(r"worker 0 \(pid \d+\) .*ready on .*, janus-ws:127\.0\.0\.1:(\d+)", daemon.output).group(1))
        before = {w: sample(body, "epcscf_registrations", w) for w in ("0", "1")}
        # As above: SPREAD_AT_LEAST registrations, more until both workers gained some.
        janus: list[Any] = []
        self.addCleanup(lambda: as_deferred(asyncio.gather(*(c.socket.close() for c in janus), return_exceptions=True)))
        for name in USERS:
            janus.append(await as_deferred(janus_register(janus_port, name)))
            if len(janus) < SPREAD_AT_LEAST:
                continue
            body = await scrape(metrics_port)
            gained = {w: sample(body, "epcscf_registrations", w) - before[w] for w in ("0", "1")}
            if gained["0"] and gained["1"]:
                break
        self.assertEqual(sum(gained.values()), len(janus), body)
        self.assertTrue(gained["0"] and gained["1"], f"SO_REUSEPORT sent all Janus connections to one worker: {gained}")
        await as_deferred(asyncio.gather(*(c.socket.close() for c in janus), return_exceptions=True))

        # SIGTERM: both workers drain, the supervisor ends after them.
        await as_deferred(asyncio.gather(*(c.close() for c in clients.values()), return_exceptions=True))
        code, sig = await daemon.stop()
        self.assertEqual(sig, signal.SIGTERM, daemon.output)
        for index in workers:
            self.assertIn(f"[worker{index}/epcscf.ops.lifecycle#info] drained after", daemon.output)
        self.assertIn("Server Shut Down.", daemon.output)
        self.assertFalse([pid for pid, _ in workers.values() if process_alive(pid)])
        self.assertNotIn("Traceback", daemon.output)


class WorkerPlanTests(unittest.TestCase):
    def test_media_ports_are_cut_in_disjoint_slices(self) -> None:
        self.assertEqual([media_slice((20000, 29999), i, 3) for i in range(3)], [(20000, 23332), (23333, 26665), (26666, 29999)])

    def test_worker_config_moves_sip_ports_and_turns_off_what_runs_once(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        local = os.path.join(directory, "local.ini")
        path = workers_config(directory, local)
        with open(local, "a") as handle:
            handle.write("[sip]\nlisten = tcp:127.0.0.1:5060, udp:127.0.0.1:5060\n")
        config = load([path, local])
        self.assertEqual(config.service.workers, 2)
        self.assertEqual(worker_sip_listeners(config, 1), (Listener("tcp", "127.0.0.1", 5061), Listener("udp", "127.0.0.1", 5061)))
        plan = WorkerPlan(1, 2, ("tcp:127.0.0.1:5061",), "sip:127.0.0.1:5070;transport=tcp", "127.0.0.1", ws_ports=(8080,))
        derived = worker_config(config, WorkerPlan.from_json(plan.to_json()))
        self.assertEqual(derived.sip.listen, (Listener("tcp", "127.0.0.1", 5061),))
        self.assertEqual((derived.core.mode, derived.core.next_hop), ("external", ("sip:127.0.0.1:5070;transport=tcp",)))
        self.assertEqual(derived.media.port_range, (42050, 42099))
        self.assertFalse(derived.manhole.enabled or derived.metrics.enabled or derived.wwsf.enabled)
        self.assertEqual(derived.service.workers, 1)

    def test_merged_exposition_labels_every_sample_and_writes_each_family_once(self) -> None:
        one = '# HELP a_total A.\n# TYPE a_total counter\na_total{result="ok"} 1.0\n# HELP b B.\n# TYPE b gauge\nb 2.0\n'
        merged = merge_expositions([("0", one), ("1", one)])
        self.assertEqual(
            merged,
            '# HELP a_total A.\n# TYPE a_total counter\na_total{worker="0",result="ok"} 1.0\na_total{worker="1",result="ok"} 1.0\n'
            '# HELP b B.\n# TYPE b gauge\nb{worker="0"} 2.0\nb{worker="1"} 2.0\n',
        )

    def test_chunked_values_cross_amps_64k_limit(self) -> None:
        rows = [{"aor": f"sip:user{n}@{DOMAIN}", "flow": "x" * 40} for n in range(3000)]
        strings: dict = {}
        Json().toBox(b"rows", strings, {"rows": rows}, None)
        self.assertGreater(len(strings), 1)
        self.assertTrue(all(len(value) <= 0xFFFF for value in strings.values()))
        objects: dict = {}
        Json().fromBox(b"rows", strings, objects, None)
        self.assertEqual(objects["rows"], rows)
        Chunked().toBox(b"text", strings, {"text": ""}, None)
        Chunked().fromBox(b"text", strings, objects, None)
        self.assertEqual(objects["text"], "")


class WorkersConfigTests(unittest.TestCase):
    def write(self, name: str, text: str) -> str:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, name)
        with open(path, "w") as handle:
            handle.write(text)
        return path

    def test_production_example_uses_one_worker_per_cpu(self) -> None:
        from tests.support.certificates import self_signed_certificate

        certificate, private_key, _ = self_signed_certificate(os.path.abspath(self.mktemp()))
        local = self.write("local.ini", f"[ws]\ncertificate = {certificate}\nprivate_key = {private_key}\n[manhole]\nusers = {TOP}/etc/manhole.users\n")
        config = load([os.path.join(TOP, "etc", "epcscf-production.ini"), local])
        self.assertEqual(config.service.workers, len(os.sched_getaffinity(0)))
        self.assertEqual([l.transport for l in config.ws.listen], ["wss"])
        self.assertEqual(config.core.mode, "external")
        self.assertEqual(load([os.path.join(TOP, "etc", "epcscf.ini")]).service.workers, 1)

    def test_bad_workers_values_are_one_line(self) -> None:
        from epcscf.config import ConfigError

        base = "[ws]\nlisten = ws:127.0.0.1:0\n[core]\nmode = external\nnext_hop = sip:127.0.0.1\n"
        for text, reason in [
            ("[service]\nworkers = many\n[sip]\nlisten = udp:127.0.0.1:5060\n", "[service] workers: expected a whole number, got 'many'"),
            ("[service]\nworkers = 0\n[sip]\nlisten = udp:127.0.0.1:5060\n", "[service] workers: must be between 1 and 64, got 0"),
            ("[service]\nworkers = 4\n[sip]\nlisten = udp:127.0.0.1:5060\n[media]\nport_range = 20000-20010\n", "[media] port_range: each of the 4 workers needs at least 4 ports of it"),
            ("[service]\nworkers = 4\n[sip]\nlisten = udp:127.0.0.1:65534\n", "[sip] listen: worker i listens on the port + i: 65534 + 3 is past 65535"),
        ]:
            path = self.write("bad.ini", base + text)
            with self.assertRaises(ConfigError) as raised:
                load([path])
            self.assertEqual(str(raised.exception), f"{path}: {reason}")


class WorkerStartupFailureTests(unittest.TestCase):
    async def test_a_worker_sip_port_in_use_stops_the_supervisor_with_one_line(self) -> None:
        """The supervisor binds every worker's SIP ports (it holds them across restarts): a port
        in use ends it before any worker starts."""

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        override = os.path.join(directory, "local.ini")
        config = workers_config(directory, override)
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        self.addCleanup(taken.close)
        port = taken.getsockname()[1]
        with open(override, "w") as handle:
            # worker 1 listens on port + 1: take it
            handle.write(f"[sip]\nlisten = tcp:127.0.0.1:{port - 1}\n[manhole]\nenabled = false\n[metrics]\nenabled = false\n")
        taken.listen(1)
        argv = [TWISTD, "--nodaemon", "--pidfile=", "epcscf", "--config", config, "--config", override]
        daemon = Daemon()
        daemon.process = reactor.spawnProcess(daemon, TWISTD, argv, env=child_env(), path=directory)
        self.addCleanup(daemon.kill)
        code, sig = await daemon.ended
        self.assertEqual(code, 1, daemon.output)
        self.assertIn(f"twistd epcscf: cannot listen on 127.0.0.1:{port}: Address already in use\n", daemon.output)
        self.assertNotIn("worker 0", daemon.output)


class WorkersLayeringTests(unittest.TestCase):
    def test_the_supervisor_side_sees_workers_only_through_amp_like_ops(self) -> None:
        """The supervisor's modules follow ``epcscf/ops``'s rules: no eP-CSCF internals, no other
        object's private attributes (``worker.py`` builds a worker's service, as ``service.py`` does)."""
        from tests.test_layering import PACKAGE, ops_findings

        directory = os.path.join(PACKAGE, "workers")
        findings = [
            f for f in ops_findings(directory)
            if os.path.basename(f.path) not in ("worker.py", "run.py") and "os._exit" not in f.what  # os._exit is public API
        ]
        self.assertEqual([str(f) for f in findings], [])
        self.assertTrue(ops_findings(directory))  # worker.py imports epcscf.pcscf.flows: the check sees it


class HeldSipSocketsTests(unittest.TestCase):
    """``[sip]`` sockets bound by the supervisor (``sip_socket``) and adopted by a worker's
    ``TransportManager``: what arrives while no worker holds them waits for the next one."""

    async def test_a_datagram_sent_between_two_holders_is_read_by_the_second(self) -> None:
        from epcscf.sip.transport import TransportManager
        from epcscf.workers.sockets import sip_socket
        from tests.test_sip_transport import Collector, options_request

        held = sip_socket(Listener("udp", "127.0.0.1", 0))
        self.addCleanup(held.close)
        spec = f"udp:127.0.0.1:{held.getsockname()[1]}"
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sender.close)
        first, second = Collector(), Collector()
        worker = TransportManager(reactor, first)
        self.assertEqual(worker.listen(spec, held.fileno()).port, held.getsockname()[1])
        sender.sendto(options_request("z9hG4bK-a"), held.getsockname())
        await wait_for(lambda: first.received)
        await worker.close()  # the worker is gone; the supervisor's copy keeps the port
        sender.sendto(options_request("z9hG4bK-b"), held.getsockname())
        successor = TransportManager(reactor, second)
        successor.listen(spec, held.fileno())
        self.addCleanup(successor.close)
        await wait_for(lambda: second.received)
        self.assertEqual(second.received[0][0].headers.get("Call-ID"), "z9hG4bK-b@test")

    async def test_a_connection_made_between_two_holders_is_accepted_by_the_second_also_over_tls(self) -> None:
        import ssl

        from epcscf.sip.transport import TransportManager
        from epcscf.sip.transport_specs import TransportSettings
        from epcscf.workers.sockets import sip_socket
        from tests.support.certificates import self_signed_certificate
        from tests.test_sip_transport import Collector, options_request

        certificate, private_key, _ = self_signed_certificate(os.path.abspath(self.mktemp()))
        settings = TransportSettings(tls_certificate=certificate, tls_private_key=private_key)
        for transport in ("tcp", "tls"):
            held = sip_socket(Listener(transport, "127.0.0.1", 0))
            self.addCleanup(held.close)
            port = held.getsockname()[1]
            worker = TransportManager(reactor, Collector(), settings)
            worker.listen(f"{transport}:127.0.0.1:{port}", held.fileno())
            await worker.close()
            # Nobody accepts now: the connection waits in the held socket's backlog.
            context = None
            if transport == "tls":
                context = ssl.create_default_context()
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            opening = asyncio.ensure_future(asyncio.open_connection("127.0.0.1", port, ssl=context))
            await task.deferLater(reactor, 0.05, lambda: None)
            received = Collector()
            successor = TransportManager(reactor, received, settings)
            successor.listen(f"{transport}:127.0.0.1:{port}", held.fileno())
            self.addCleanup(successor.close)
            _, writer = await as_deferred(asyncio.wait_for(opening, 5))
            writer.write(options_request(f"z9hG4bK-{transport}", via=f"SIP/2.0/{transport.upper()} 127.0.0.1:5999"))
            await wait_for(lambda: received.received, what=f"the OPTIONS over {transport}")
            self.assertEqual(received.received[0][1].transport, transport.upper())
            writer.close()
