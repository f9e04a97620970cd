"""Benchmark: what the core sees of a worker's restart (``[service] workers = 2``, kill -9).

Usage::

    .venv/bin/python benchmarks/worker_restart.py [--kills 5] [--interval 0.02] [--checkout DIR]

``twistd -n epcscf`` with two workers and the embedded core (in the supervisor) runs from
``--checkout`` (default: this one; give an extracted older tree, e.g. ``git archive <commit>``,
for the figure before a change — this environment's Python and packages run it).  One WIC
registers on worker 0 over WebSocket; its Path (with its RFC 5626 flow token) is the route a
core uses for it.  Then, ``--kills`` times: ``kill -9`` of worker 0, and from that moment
"the core" sends a BYE for that flow to worker 0's UDP port every ``--interval`` seconds and
opens a TCP connection to its TCP port (with one BYE) every 0.1 s, until 1 s after the restarted
worker listens.  Each BYE should get 430 Flow Failed (RFC 5626 §5.3); printed per kill:

* UDP: BYEs sent, answered, lost (no answer 3 s after the end);
* TCP: connections tried, refused, answered;
* kill → first answer: how long the port gave nothing (the worker's restart time).

Before the supervisor held the workers' SIP sockets, everything sent while worker 0 was down
was lost (UDP: ICMP port unreachable) or refused (TCP); after, it waits in the kernel and is
answered by the new worker.  Loopback only, bounded (kills × ~3 s), self-stopping; prints
``/proc/loadavg`` with every figure.
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

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, TOP)

from tests.support.deployment import DOMAIN, write_users  # noqa: E402
from tests.support.wic import WsSipClient  # noqa: E402

USERS = {f"user{n}": f"secret-{n}" for n in range(16)}
READY = re.compile(r"worker (\d) \(pid (\d+)\) (?:ready|restarted and ready) on tcp:127\.0\.0\.1:(\d+), udp:127\.0\.0\.1:(\d+), ws:127\.0\.0\.1:(\d+)")


def loadavg() -> str:
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])


def write_config(directory: str) -> str:
    path = os.path.join(directory, "epcscf.ini")
    with open(path, "w") as handle:
        handle.write(
            f"""\
[service]
state_dir = {directory}/var
drain_timeout = 1
workers = 2
[sip]
listen = tcp:127.0.0.1:0, udp:127.0.0.1:0
[ws]
listen = ws:127.0.0.1:0
[core]
mode = embedded
domain = {DOMAIN}
listen = tcp:127.0.0.1:0, udp:127.0.0.1:0
users = {write_users(directory, USERS)}
"""
        )
    return path


class Epcscf:
    """``twistd -n epcscf`` of ``checkout``, its output in a file read as it grows."""

    def __init__(self, checkout: str, directory: str) -> None:
        self.log_path = os.path.join(directory, "epcscf.log")
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        env = dict(os.environ, PYTHONPATH=checkout)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [twistd, "--nodaemon", "--pidfile=", "epcscf", "--config", write_config(directory)],
                stdout=log, stderr=subprocess.STDOUT, cwd=checkout, env=env, start_new_session=True,
            )

    def output(self) -> str:
        with open(self.log_path, errors="replace") as handle:
            return handle.read()

    def ready(self) -> list[tuple[int, int, int, int, int]]:
        return [tuple(int(x) for x in match) for match in READY.findall(self.output())]  # type: ignore[misc]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


async def until(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def bye(route: str, via: str, call_id: str) -> bytes:
    return (
        f"BYE sip:user@127.0.0.1;transport=ws SIP/2.0\r\nVia: {via};branch=z9hG4bK{secrets.token_hex(6)}\r\n"
        f"Max-Forwards: 70\r\nRoute: {route}\r\nFrom: <sip:peer@{DOMAIN}>;tag=a1\r\nTo: <sip:user@{DOMAIN}>;tag=b2\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    ).encode()


@dataclass
class Kill:
    udp_sent: int = 0
    udp_answered: set[str] = field(default_factory=set)
    tcp_tried: int = 0
    tcp_refused: int = 0
    tcp_answered: int = 0
    first_answer: float | None = None
    restart: float = 0.0


class UdpCore(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.kill: Kill | None = None
        self.started = 0.0

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[no-untyped-def]
        found = re.search(rb"\r\nCall-ID: *(\S+)", data)
        if self.kill is not None and found and data.startswith(b"SIP/2.0 430"):
            self.kill.udp_answered.add(found.group(1).decode())
            if self.kill.first_answer is None:
                self.kill.first_answer = time.monotonic() - self.started


async def tcp_probe(port: int, route: str, kill: Kill, started: float) -> None:
    kill.tcp_tried += 1
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        kill.tcp_refused += 1
        return
    local = writer.get_extra_info("sockname")
    writer.write(bye(route, f"SIP/2.0/TCP 127.0.0.1:{local[1]}", secrets.token_hex(8)))
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        if head.startswith(b"SIP/2.0 430"):
            kill.tcp_answered += 1
            if kill.first_answer is None:
                kill.first_answer = time.monotonic() - started
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def run(args: argparse.Namespace) -> None:
    directory = tempfile.mkdtemp(prefix="worker_restart-")
    epcscf = Epcscf(os.path.abspath(args.checkout), directory)
    clients: list[WsSipClient] = []
    try:
        await until(lambda: len(epcscf.ready()) >= 2 or epcscf.process.poll() is not None, 30, "two workers")
        if epcscf.process.poll() is not None:
            raise RuntimeError(epcscf.output()[-3000:])
        workers = {w[0]: w for w in epcscf.ready()}
        _, _, tcp_port, udp_port, ws_port = workers[0]
        route = ""
        for name, password in USERS.items():  # the kernel's hash decides which worker takes each
            client = WsSipClient(f"ws://127.0.0.1:{ws_port}", name, password, DOMAIN)
            await client.connect()
            clients.append(client)
            path = (await client.register()).headers.get("Path") or ""
            if f"127.0.0.1:{tcp_port}" in path:
                route = path.split(",")[0].strip()
                break
        if not route:
            raise RuntimeError("no WIC landed on worker 0")
        loop = asyncio.get_running_loop()
        core = UdpCore()
        transport, _ = await loop.create_datagram_endpoint(lambda: core, local_addr=("127.0.0.1", 0))
        via = f"SIP/2.0/UDP 127.0.0.1:{transport.get_extra_info('sockname')[1]}"
        print(f"checkout {os.path.abspath(args.checkout)}; worker 0 on udp {udp_port}, tcp {tcp_port}; loadavg {loadavg()}")
        print(f"{'kill':>4} {'UDP sent':>9} {'answered':>9} {'lost':>5} {'TCP tried':>10} {'refused':>8} {'answered':>9} "
              f"{'restart s':>10} {'kill→1st answer s':>18}  loadavg")
        for number in range(1, args.kills + 1):
            pid = [w for w in epcscf.ready() if w[0] == 0][-1][1]
            restarts = len([w for w in epcscf.ready() if w[0] == 0])
            kill = core.kill = Kill()
            started = core.started = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            probes: list[asyncio.Task] = []
            next_tcp = started
            restarted_at: float | None = None
            while restarted_at is None or time.monotonic() < restarted_at + 1.0:
                if time.monotonic() - started > 30:
                    raise RuntimeError("worker 0 did not come back in 30 s")
                call_id = secrets.token_hex(8)
                transport.sendto(bye(route, via, call_id), ("127.0.0.1", udp_port))
                kill.udp_sent += 1
                if time.monotonic() >= next_tcp:
                    probes.append(asyncio.ensure_future(tcp_probe(tcp_port, route, kill, started)))
                    next_tcp += 0.1
                await asyncio.sleep(args.interval)
                if restarted_at is None and len([w for w in epcscf.ready() if w[0] == 0]) > restarts:
                    restarted_at = time.monotonic()
                    kill.restart = restarted_at - started
            await asyncio.gather(*probes)
            await asyncio.sleep(3.0)  # late answers
            lost = kill.udp_sent - len(kill.udp_answered)
            first = f"{kill.first_answer:.2f}" if kill.first_answer is not None else "none"
            print(f"{number:>4} {kill.udp_sent:>9} {len(kill.udp_answered):>9} {lost:>5} {kill.tcp_tried:>10} "
                  f"{kill.tcp_refused:>8} {kill.tcp_answered:>9} {kill.restart:>10.2f} {first:>18}  {loadavg()}")
            await asyncio.sleep(args.pause)
        transport.close()
    finally:
        for client in clients:
            try:
                await asyncio.wait_for(client.close(), 2)
            except Exception:  # the worker it was on is gone: nothing to close politely
                pass
        epcscf.stop()
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between the UDP BYEs")
    parser.add_argument("--pause", type=float, default=11.0, help="seconds between kills (over 10: no back-off)")
    parser.add_argument("--checkout", default=TOP, help="the tree whose epcscf runs (default: this one)")
    args = parser.parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
