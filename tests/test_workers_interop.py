"""``[service] workers = 2`` with peers nobody here wrote: Kamailio as the core (``[core] mode =
external``, our ``tests/peers/kamailio/core.cfg``: registrar with Path, no authentication) and
rtpengine as the media engine (``[media] engine = rtpengine``), one real ``twistd epcscf``.

WICs on the shared WebSocket port register through whichever worker took them, each with that
worker's own Path address; a call between WICs of the two workers routes through Kamailio and
has one rtpengine session per worker (one SIP Call-ID, two ng calls told apart by flow and
owner mark); kill -9 of the callee's worker: Kamailio's BYE for it gets 430 from its successor
(the SIP port stayed open), the successor deletes the session its predecessor left in
rtpengine, the callee re-registers on a live worker, nothing is left behind."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import time

from twisted.internet import defer, reactor
from twisted.trial import unittest

from epcscf.sip.message import Request, Response, make_response
from tests.support.daemon import Daemon
from tests.support.kamailio import kamailio_binary, start_kamailio
from tests.support.processes import child_env, process_alive, require_program, wait_for
from tests.support.rtpengine import start_rtpengine
from tests.support.wic import WsSipClient, as_deferred
from tests.test_calls_media import SimulatedWic
from tests import test_calls_w2_sipp as w2
from tests.test_twistd import TWISTD

DOMAIN = "ims.test"
USERS = [f"kw{n}" for n in range(8)]
#: rtpengine media ports of this module (test_media_rtpengine's daemons use 43000-43999)
RTP_PORTS = (44000, 44199)
READY = re.compile(r"worker (\d) \(pid (\d+)\) (?:ready|restarted and ready) on udp:127\.0\.0\.1:(\d+), ws:127\.0\.0\.1:(\d+)")

in_dialog = w2.CallsThroughTheEdgeTests.in_dialog  # RFC 3261 §12.2.1.1, as the W2 tests build it


def write_config(directory: str, next_hop: str, rtpengine_node: str) -> str:
    path = os.path.join(directory, "epcscf.ini")
    with open(path, "w") as handle:
        handle.write(
            f"""\
[service]
state_dir = {directory}/var
drain_timeout = 2
workers = 2
[sip]
listen = udp:127.0.0.1:0
[ws]
listen = ws:127.0.0.1:0
[core]
mode = external
domain = {DOMAIN}
next_hop = {next_hop}
[media]
engine = rtpengine
port_range = 42100-42199
[rtpengine]
nodes = {rtpengine_node}
"""
        )
    return path


async def next_request(client: WsSipClient, method: str, timeout: float = 10.0) -> Request:
    while True:
        message = await as_deferred(client.next_message(timeout))
        if isinstance(message, Request) and message.method == method:
            return message


class WorkersBehindKamailioWithRtpengineTests(unittest.TestCase):
    timeout = 90

    async def test_two_workers_register_call_and_survive_kill_9_through_kamailio_and_rtpengine(self) -> None:
        require_program(self, "rtpengine", "rtpengine-daemon")
        if kamailio_binary() is None:
            self.fail("kamailio is missing (Debian package kamailio): bin/test installs it")
        rtpengine = start_rtpengine(*RTP_PORTS)
        self.addCleanup(rtpengine.stop)
        kamailio = start_kamailio("sip:127.0.0.1:9")  # no call here goes to uas*
        self.addCleanup(kamailio.stop)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        config = write_config(directory, kamailio.next_hop, rtpengine.node)
        daemon = Daemon()
        argv = [TWISTD, "--nodaemon", "--pidfile=", "epcscf", "--config", config]
        daemon.process = reactor.spawnProcess(daemon, TWISTD, argv, env=child_env(), path=directory)
        self.addCleanup(daemon.kill)
        await wait_for(lambda: len(READY.findall(daemon.output)) >= 2 or daemon.ended.called, timeout=30)
        self.assertFalse(daemon.ended.called, daemon.output)
        workers = {int(i): (int(pid), int(port)) for i, pid, port, _ in READY.findall(daemon.output)}
        self.addCleanup(lambda: [process_alive(pid) and os.kill(pid, signal.SIGKILL) for pid, _ in workers.values()])
        ws_url = f"ws://127.0.0.1:{READY.findall(daemon.output)[0][3]}"

        # Registered through Kamailio: each Path is the address of the worker that took the WIC.
        async def register(name: str) -> tuple[WsSipClient, int]:
            client = WsSipClient(ws_url, name, "", DOMAIN)
            await client.connect()
            response = await client.register()
            self.assertEqual(response.status, 200, f"{response.status} {response.reason}\n{kamailio.log()[-2000:]}")
            port = int(re.search(r"@127\.0\.0\.1:(\d+)", response.headers.get("Path") or "").group(1))
            return client, next(index for index, (_, sip_port) in workers.items() if sip_port == port)

        clients: dict[str, WsSipClient] = {}
        owner: dict[str, int] = {}
        for name in USERS:
            clients[name], owner[name] = await as_deferred(register(name))
        self.addCleanup(lambda: as_deferred(asyncio.gather(*(c.close() for c in clients.values()), return_exceptions=True)))
        on = {index: [name for name in USERS if owner[name] == index] for index in workers}
        self.assertTrue(on[0] and on[1], f"SO_REUSEPORT sent all {len(USERS)} connections to one worker: {on}")

        # A call from a WIC of worker 0 to a WIC of worker 1, through Kamailio (lookup → the
        # callee's Path), answered: rtpengine holds one session per worker.
        caller, callee = clients[on[0][0]], clients[on[1][0]]
        wic_a, wic_b = SimulatedWic(controlling=True), SimulatedWic(controlling=False)
        for wic in (wic_a, wic_b):
            await wic.gather()
            self.addCleanup(lambda wic=wic: defer.ensureDeferred(wic.close()))
        invite = caller.request("INVITE", f"sip:{callee.user}@{DOMAIN}", to=callee.aor, body=wic_a.sdp("actpass"), content_type="application/sdp")
        invite.headers.add("Contact", f"<sip:{caller.user}@{caller.host};transport=ws;ob>")
        await as_deferred(caller.send(invite))
        incoming = await next_request(callee, "INVITE")
        self.assertIn(b"UDP/TLS/RTP/SAVPF", incoming.body)  # rtpengine's WebRTC side toward the callee
        ok = make_response(incoming, 200, to_tag=secrets.token_hex(4))
        for route in incoming.headers.get_all("Record-Route"):
            ok.headers.add("Record-Route", route)
        ok.headers.add("Contact", f"<sip:{callee.user}@{callee.host};transport=ws;ob>")
        ok.headers.add("Content-Type", "application/sdp")
        ok.body = wic_b.sdp("active")
        await as_deferred(callee.send(ok))
        answer = await as_deferred(caller.final_response(10))
        self.assertEqual(answer.status, 200)
        await as_deferred(caller.send(in_dialog(None, caller, "ACK", invite, answer)))
        call_id = invite.headers.get("Call-ID") or ""
        marks = {index: f"udp:127.0.0.1:{port}" for index, (_, port) in workers.items()}
        sessions = rtpengine.calls()
        self.assertEqual(len(sessions), 2, sessions)
        self.assertTrue(all(s.startswith(call_id + " ") for s in sessions), sessions)
        self.assertEqual(sorted(s.rsplit(" ", 1)[1] for s in sessions), sorted(marks.values()))

        # kill -9 of the callee's worker; the caller hangs up at once, during the restart.
        dead_pid = workers[1][0]
        os.kill(dead_pid, signal.SIGKILL)
        await wait_for(lambda: f"worker 1 (pid {dead_pid}) died" in daemon.output)
        started = time.monotonic()
        bye = in_dialog(None, caller, "BYE", invite, answer)
        await as_deferred(caller.send(bye))
        final = await as_deferred(caller.final_response(15))
        elapsed = time.monotonic() - started
        # Kamailio's BYE waited in worker 1's socket (held by the supervisor) and its successor,
        # which knows no such flow, answered 430 (RFC 5626 §5.3): no 32 s timeout.
        self.assertEqual((final.status, final.headers.get("Call-ID")), (430, call_id), kamailio.log()[-2000:])
        self.assertLess(elapsed, 10.0)
        # The successor deleted the session its predecessor left; worker 0 deleted its own.
        await wait_for(lambda: rtpengine.calls() == [], timeout=10, what=lambda: f"rtpengine still holds {rtpengine.calls()}")
        swept = f"[worker1/epcscf.pcscf.rtpengine_media#info] rtpengine {rtpengine.node}: deleted 1 sessions a previous process of {marks[1]} left"
        await wait_for(lambda: swept in daemon.output, what="the successor's sweep in the log")  # relayed by the supervisor

        # The callee's WebSocket went with its worker: reconnecting, it registers on a live worker.
        await as_deferred(callee._reader)
        clients[callee.user], _ = await as_deferred(register(callee.user))

        await as_deferred(asyncio.gather(*(c.close() for c in clients.values()), return_exceptions=True))
        code, sig = await daemon.stop()
        self.assertEqual(sig, signal.SIGTERM, daemon.output)
        self.assertNotIn("Traceback", daemon.output)
