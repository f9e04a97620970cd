"""Media relay capacity with BUNDLE: N audio + video calls, each on one DTLS-SRTP transport.

Run: ``unshare -n sh -c 'ip link set lo up && exec .venv/bin/python benchmarks/media_relay_bundle.py'``
(options: ``--steps 10,25,50,75,100 --seconds 3 --pin --realtime``)

As ``benchmarks/media_relay.py`` (same two processes, same DTLS client and SRTP in the load
generator), but every call is what a max-bundle browser sends (RFC 8843): one WIC-side socket
and DTLS association carrying a G.711 audio stream (172-byte RTP every 20 ms) and a 1.5 Mbit/s
video stream (three 1262-byte RTP packets every 20 ms), demultiplexed by SSRC in the relay
(``epcscf.media.bundle.BundleDemux``) to two core-side RTP ports, and both streams back.  Both
directions of both streams carry the generator's send time: the one-way latency through the
relay (two loopback hops and the generator's own scheduling included: an upper bound).

Printed per step: calls, packets/s offered and relayed, relay CPU share, calls per relay core
(calls / CPU share), the load generator's own CPU share, p50/p99 per direction, losses and
/proc/loadavg; then the largest step with p99 < 2 ms and no loss.  The first step is the
same-run baseline: plain (unbundled) audio-only calls through one session each at the smallest
call count, for the relay's per-packet cost without BUNDLE.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import multiprocessing.connection
import os
import resource
import selectors
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from media_relay import (  # noqa: E402  (the sibling benchmark's DTLS client and helpers)
    LATENCY_LIMIT_MS,
    LOCAL,
    STAMP,
    WARMUP,
    handshake_all,
    make_context,
    make_realtime,
    percentile,
    pin_to_cpu,
    udp_socket,
)

PERIOD = 0.020
AUDIO_PAYLOAD = 160
VIDEO_PAYLOAD = 1250  # 3 per 20 ms = 1.5 Mbit/s of payload
VIDEO_PER_PERIOD = 3
TIME_BUDGET = 150.0
AUDIO_PT, VIDEO_PT = 0, 96


def relay_main(conn: multiprocessing.connection.Connection, pin: bool, realtime: bool) -> None:
    if pin:
        pin_to_cpu(0)
    if realtime:
        make_realtime()
    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet import reactor, threads
    from twisted.internet.defer import Deferred, inlineCallbacks

    from epcscf.media import Certificate, Fingerprint, MediaSession, MediaSessionConfig
    from epcscf.media.bundle import BundleDemux, BundleLine

    certificate = Certificate.generate("relay")
    config = MediaSessionConfig(core_address=LOCAL)

    class WicSide(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.peer: tuple[str, int] | None = None
            self.session: MediaSession | None = None
            self.transport: asyncio.DatagramTransport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]

        def send(self, data: bytes) -> None:
            self.transport.sendto(data, self.peer)  # type: ignore[union-attr]

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            self.session.datagram_received(data)  # type: ignore[union-attr]

    state: dict[str, Any] = {"calls": []}

    @inlineCallbacks
    def serve():  # type: ignore[no-untyped-def]
        while True:
            command, argument = yield threads.deferToThread(conn.recv)
            if command == "open":
                count, video = argument
                calls = []
                loop = asyncio.get_event_loop()
                for index in range(count):
                    transport, wic = yield Deferred.fromFuture(
                        asyncio.ensure_future(loop.create_datagram_endpoint(WicSide, local_addr=(LOCAL, 0)))
                    )
                    sessions = [MediaSession(reactor, reactor, config, certificate, wic)]
                    if video:
                        sessions.append(MediaSession(reactor, reactor, config, certificate, wic))
                        demux = BundleDemux((BundleLine(0, "0", (0x10000 + index,), (AUDIO_PT,)),
                                             BundleLine(1, "1", (0x30000 + index,), (VIDEO_PT,))))
                        sessions[0].bundle(demux, {0: sessions[0], 1: sessions[1]})
                    wic.session = sessions[0]
                    calls.append((wic, transport, sessions))
                state["calls"] = calls
                conn.send((certificate.fingerprint.value,
                           [(t.get_extra_info("sockname")[1], [s.core_rtp_port for s in ss]) for _, t, ss in calls]))
            elif command == "start":
                fingerprint, peers = argument
                for (wic, _, sessions), (wic_port, core_ports) in zip(state["calls"], peers):
                    wic.peer = (LOCAL, wic_port)
                    for session, port in zip(sessions, core_ports):
                        session.set_core_remote(LOCAL, port)
                    sessions[0].start_dtls("server", Fingerprint("sha-256", fingerprint))
                conn.send("started")
            elif command == "connected":
                conn.send(sum(1 for _, _, ss in state["calls"] if all(s.connected for s in ss)))
            elif command == "measure":
                state["cpu"], state["wall"], state["relayed"] = time.process_time(), time.monotonic(), relayed()
                conn.send("measuring")
            elif command == "report":
                conn.send((relayed() - state["relayed"], time.process_time() - state["cpu"],
                           time.monotonic() - state["wall"], dropped()))
            elif command == "close":
                for _, transport, sessions in state["calls"]:
                    for session in sessions:
                        yield session.close()
                    transport.close()
                state["calls"] = []
                conn.send("closed")
            elif command == "quit":
                conn.send("bye")
                reactor.stop()
                return

    def sessions() -> list[Any]:
        return [s for _, _, ss in state["calls"] for s in ss]

    def relayed() -> int:
        return sum(s.wic_to_core.packets + s.core_to_wic.packets for s in sessions())

    def dropped() -> int:
        return sum(s.wic_to_core.dropped + s.core_to_wic.dropped for s in sessions())

    reactor.callWhenRunning(serve)
    reactor.run()


@dataclass
class Call:
    index: int
    wic: socket.socket
    cores: list[socket.socket]
    relay_wic: tuple[str, int]
    relay_cores: list[tuple[str, int]]
    ssl: Any
    tx: Any = None
    rx: Any = None
    done: bool = False
    seq: list[int] = field(default_factory=lambda: [0, 0, 0, 0])


@dataclass
class Results:
    up_ms: list[float] = field(default_factory=list)
    down_ms: list[float] = field(default_factory=list)
    sent: int = 0
    received: int = 0
    srtp_errors: int = 0


def run_media(calls: list[Call], seconds: float, video: bool) -> Results:
    """Every call's streams both ways for ``seconds``: audio every 20 ms, video 3× per 20 ms."""
    results = Results()
    selector = selectors.DefaultSelector()
    for call in calls:
        selector.register(call.wic, selectors.EVENT_READ, (call, True))
        for core in call.cores:
            selector.register(core, selectors.EVENT_READ, (call, False))
    n = len(calls)
    # (offset in the period, call, stream: 0 audio / 1 video, from the WIC?)
    schedule: list[tuple[float, Call, int, bool]] = []
    for i, call in enumerate(calls):
        schedule.append((i / n * PERIOD, call, 0, True))
        schedule.append(((i + 0.5) / n * PERIOD, call, 0, False))
        if video:
            for k in range(VIDEO_PER_PERIOD):
                offset = (i / n + k) / VIDEO_PER_PERIOD * PERIOD
                schedule.append((offset, call, 1, True))
                schedule.append((offset + 0.25 / n * PERIOD, call, 1, False))
    schedule.sort(key=lambda item: item[0])
    padding = (bytes(AUDIO_PAYLOAD - STAMP.size), bytes(VIDEO_PAYLOAD - STAMP.size))
    monotonic, monotonic_ns = time.monotonic, time.monotonic_ns
    start = monotonic()
    measure_from = monotonic_ns() + int(WARMUP * 1e9)
    end, period_start, slot = start + seconds, start, 0

    def receive(events: list[Any]) -> None:
        for key, _ in events:
            call, on_wic = key.data
            sock = key.fileobj
            while True:
                try:
                    data = sock.recv(2048)
                except BlockingIOError:
                    break
                now = monotonic_ns()
                if on_wic:
                    if data[0] < 128 or 192 <= data[1] <= 223:
                        continue
                    try:
                        data = call.rx.unprotect(data)
                    except Exception:
                        results.srtp_errors += 1
                        continue
                sent, _ = STAMP.unpack_from(data, 12)
                results.received += 1
                if sent >= measure_from:
                    (results.down_ms if on_wic else results.up_ms).append((now - sent) / 1e6)

    while monotonic() < end:
        now = monotonic()
        while True:
            due, call, stream, from_wic = schedule[slot]
            if period_start + due > now:
                break
            which = stream * 2 + (0 if from_wic else 1)
            call.seq[which] += 1
            seq = call.seq[which]
            ssrc = (0x10000 if stream == 0 else 0x30000) + call.index + (0 if from_wic else 0x100000)
            pt = AUDIO_PT if stream == 0 else VIDEO_PT
            packet = struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, seq * 160, ssrc) \
                + STAMP.pack(monotonic_ns(), call.index) + padding[stream]
            if from_wic:
                call.wic.sendto(call.tx.protect(packet), call.relay_wic)
            else:
                call.cores[stream].sendto(packet, call.relay_cores[stream])
            results.sent += 1
            slot += 1
            if slot == len(schedule):
                slot, period_start = 0, period_start + PERIOD
        receive(selector.select(max(period_start + schedule[slot][0] - monotonic(), 0)))
    drain_until = monotonic() + 0.3
    while monotonic() < drain_until and results.received < results.sent:
        receive(selector.select(0.02))
    selector.close()
    return results


def run_step(conn: multiprocessing.connection.Connection, n: int, seconds: float, video: bool) -> dict[str, Any]:
    from OpenSSL import SSL

    from epcscf.media import Certificate

    wic_certificate = Certificate.generate("wic")
    conn.send(("open", (n, video)))
    relay_fingerprint, relay_ports = conn.recv()
    context = make_context(wic_certificate, relay_fingerprint)
    calls = []
    for index, (wic_port, core_ports) in enumerate(relay_ports):
        ssl = SSL.Connection(context, None)
        ssl.set_ciphertext_mtu(1200)
        ssl.set_connect_state()
        calls.append(Call(index, udp_socket(), [udp_socket() for _ in core_ports], (LOCAL, wic_port),
                          [(LOCAL, port) for port in core_ports], ssl))
    conn.send(("start", (wic_certificate.fingerprint.value,
                         [(c.wic.getsockname()[1], [s.getsockname()[1] for s in c.cores]) for c in calls])))
    conn.recv()
    handshake_all(calls)  # sets tx/rx (pylibsrtp, SSRC-any) on each call
    conn.send(("connected", None))
    if conn.recv() < n:
        raise SystemExit("not every relay session is connected")
    conn.send(("measure", None))
    conn.recv()
    cpu_before = time.process_time()
    results = run_media(calls, seconds, video)
    generator_cpu = time.process_time() - cpu_before
    conn.send(("report", None))
    relayed, relay_cpu, wall, dropped = conn.recv()
    conn.send(("close", None))
    conn.recv()
    for call in calls:
        call.wic.close()
        for core in call.cores:
            core.close()
    share = relay_cpu / wall
    return {
        "n": n, "video": video, "offered_pps": results.sent / wall, "relayed_pps": relayed / wall,
        "relay_cpu": share, "calls_per_core": n / share if share else float("nan"), "gen_cpu": generator_cpu / wall,
        "up_p50": percentile(results.up_ms, 0.5), "up_p99": percentile(results.up_ms, 0.99),
        "down_p50": percentile(results.down_ms, 0.5), "down_p99": percentile(results.down_ms, 0.99),
        "lost": results.sent - results.received, "dropped": dropped, "srtp_errors": results.srtp_errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="10,25,50,75,100,125", help="comma-separated bundled call counts")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--pin", action="store_true", help="pin relay and generator to one core each")
    parser.add_argument("--realtime", action="store_true", help="relay and generator SCHED_FIFO (root)")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    started = time.monotonic()
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    relay = context.Process(target=relay_main, args=(child, args.pin, args.realtime), daemon=True)
    relay.start()
    if args.pin:
        pin_to_cpu(1)
    if args.realtime:
        make_realtime()
    print(f"{'calls':>5} {'kind':>10} {'offered/s':>9} {'relayed/s':>9} {'relayCPU':>8} {'calls/core':>10} "
          f"{'genCPU':>6} {'up p50':>7} {'up p99':>7} {'dn p50':>7} {'dn p99':>7} {'lost':>5}  loadavg")
    steps = [int(x) for x in args.steps.split(",")]
    best = None
    try:
        plan = [(steps[0], False)] + [(n, True) for n in steps]  # baseline first: audio only, unbundled
        for n, video in plan:
            if time.monotonic() - started + args.seconds + 10 > TIME_BUDGET:
                print("time budget spent; stopping")
                break
            r = run_step(parent, n, args.seconds, video)
            with open("/proc/loadavg") as handle:
                load = " ".join(handle.read().split()[:3])
            print(f"{r['n']:>5} {'bundle A+V' if video else 'audio':>10} {r['offered_pps']:>9.0f} {r['relayed_pps']:>9.0f} "
                  f"{r['relay_cpu']:>7.0%} {r['calls_per_core']:>10.0f} {r['gen_cpu']:>5.0%} {r['up_p50']:>7.3f} "
                  f"{r['up_p99']:>7.3f} {r['down_p50']:>7.3f} {r['down_p99']:>7.3f} {r['lost']:>5}  {load}", flush=True)
            if not video:
                continue
            if max(r["up_p99"], r["down_p99"]) > LATENCY_LIMIT_MS or r["lost"] or r["srtp_errors"]:
                print(f"stop: p99 above {LATENCY_LIMIT_MS} ms or loss at {n} bundled calls "
                      f"(relay dropped {r['dropped']}, srtp errors {r['srtp_errors']})")
                break
            best = n
    finally:
        parent.send(("quit", None))
        parent.recv()
        relay.join(5)
    print(f"largest step with p99 < {LATENCY_LIMIT_MS} ms and no loss: {best} bundled audio+video calls; "
          f"total {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
