"""Media relay capacity: N concurrent G.711 calls through MediaSessions on loopback.

Run: ``.venv/bin/python benchmarks/media_relay.py [--steps 50,100,200,300,400,500] [--seconds 3]``

Two processes.  The relay (a spawned child) runs the Twisted asyncio reactor with one
`MediaSession` per call, each with its own WIC-side UDP socket (standing in for the ICE pair)
and its core-side RTP/RTCP pair.  The load generator (this process, plain `selectors`) plays
both ends of every call: a WIC (pyOpenSSL DTLS client + pylibsrtp) and a core RTP endpoint.

Per call and direction: 172-byte RTP (12 header + 160 payload, G.711 20 ms) every 20 ms, calls
spread evenly over the 20 ms period.  WIC → relay is SRTP, relay → core plain RTP; core → relay
plain RTP, relay → WIC SRTP.  Each payload carries the generator's CLOCK_MONOTONIC send time;
the receive time minus it is the one-way latency *through* the relay, which includes two
loopback hops and the generator's own scheduling: an upper bound on the latency the relay adds.

N steps up until p99 passes 2 ms or a packet is lost (or the time budget is spent).  On a
machine shared with other busy processes the tail latency is theirs as much as ours (the relay
waits for a CPU); `--realtime` runs both processes SCHED_FIFO to measure the relay alone.  Printed
per step: offered and relayed packets/s, relayed packets per second of relay CPU ("per core"),
the relay's CPU share, p50/p99/max latency per direction, and losses.
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

PERIOD = 0.020  # G.711 packetisation: 20 ms
PAYLOAD = 160
WARMUP = 0.3  # seconds of each step not measured (SRTP contexts, caches, first bursts)
LATENCY_LIMIT_MS = 2.0
TIME_BUDGET = 110.0  # seconds for the whole run (< 2 min)
LOCAL = "127.0.0.1"
STAMP = struct.Struct("!QI")  # send time (ns, CLOCK_MONOTONIC), call index

SRTP_SIZES = {  # profile → (key, salt)
    b"SRTP_AEAD_AES_256_GCM": (32, 12),
    b"SRTP_AEAD_AES_128_GCM": (16, 12),
    b"SRTP_AES128_CM_SHA1_80": (16, 14),
}


# --------------------------------------------------------------------------------------------
# Relay process
# --------------------------------------------------------------------------------------------


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

    certificate = Certificate.generate("relay")
    config = MediaSessionConfig(core_address=LOCAL)

    class WicSide(asyncio.DatagramProtocol):
        """The ICE pair stand-in: one asyncio datagram endpoint per call toward the generator's
        WIC, as the ICE agents bind theirs (epcscf.ice.sockets)."""

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

    state: dict[str, Any] = {"calls": [], "cpu": 0.0}

    @inlineCallbacks
    def serve():  # type: ignore[no-untyped-def]
        while True:
            command, argument = yield threads.deferToThread(conn.recv)
            if command == "open":
                calls = []
                loop = asyncio.get_event_loop()
                for _ in range(argument):
                    transport, wic = yield Deferred.fromFuture(
                        asyncio.ensure_future(loop.create_datagram_endpoint(WicSide, local_addr=(LOCAL, 0)))
                    )
                    session = MediaSession(reactor, reactor, config, certificate, wic)
                    wic.session = session
                    calls.append((wic, transport, session))
                state["calls"] = calls
                conn.send(
                    (certificate.fingerprint.value, [(t.get_extra_info("sockname")[1], s.core_rtp_port) for _, t, s in calls])
                )
            elif command == "start":
                fingerprint, peers = argument
                for (wic, _, session), (wic_port, core_port) in zip(state["calls"], peers):
                    wic.peer = (LOCAL, wic_port)
                    session.set_core_remote(LOCAL, core_port)
                    session.start_dtls("server", Fingerprint("sha-256", fingerprint))
                conn.send("started")
            elif command == "connected":
                conn.send(sum(1 for _, _, s in state["calls"] if s.connected))
            elif command == "measure":
                state["cpu"] = time.process_time()
                state["wall"] = time.monotonic()
                state["relayed"] = relayed(state["calls"])
                conn.send("measuring")
            elif command == "report":
                cpu = time.process_time() - state["cpu"]
                wall = time.monotonic() - state["wall"]
                conn.send((relayed(state["calls"]) - state["relayed"], cpu, wall, errors(state["calls"])))
            elif command == "close":
                for _, transport, session in state["calls"]:
                    yield session.close()
                    transport.close()
                state["calls"] = []
                conn.send("closed")
            elif command == "quit":
                conn.send("bye")
                reactor.stop()
                return

    def relayed(calls: list[Any]) -> int:
        return sum(s.wic_to_core.packets + s.core_to_wic.packets for _, _, s in calls)

    def errors(calls: list[Any]) -> tuple[int, int]:
        return (
            sum(s.wic_to_core.dropped + s.core_to_wic.dropped for _, _, s in calls),
            sum(s.wic_to_core.lost + s.core_to_wic.lost for _, _, s in calls),
        )

    reactor.callWhenRunning(serve)
    reactor.run()


# --------------------------------------------------------------------------------------------
# Load generator (this process)
# --------------------------------------------------------------------------------------------


@dataclass
class Call:
    index: int
    wic: socket.socket
    core: socket.socket
    relay_wic: tuple[str, int]
    relay_core: tuple[str, int]
    ssl: Any
    tx: Any = None
    rx: Any = None
    wic_seq: int = 0
    core_seq: int = 0
    done: bool = False


@dataclass
class Results:
    up_ms: list[float] = field(default_factory=list)  # WIC → core
    down_ms: list[float] = field(default_factory=list)  # core → WIC
    sent_up: int = 0
    sent_down: int = 0
    received_up: int = 0
    received_down: int = 0
    srtp_errors: int = 0


def make_context(certificate: Any, expected: str) -> Any:
    from cryptography.hazmat.primitives import hashes
    from OpenSSL import SSL

    def verify(conn: Any, cert: Any, errno: int, depth: int, ok: int) -> bool:
        if depth:
            return True
        digest = cert.to_cryptography().fingerprint(hashes.SHA256())
        return ":".join(f"{b:02X}" for b in digest) == expected

    context = SSL.Context(SSL.DTLS_METHOD)
    context.use_certificate(certificate.certificate)
    context.use_privatekey(certificate.private_key)
    context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)
    context.set_tlsext_use_srtp(b"SRTP_AES128_CM_SHA1_80:SRTP_AEAD_AES_128_GCM:SRTP_AEAD_AES_256_GCM")
    context.set_options(SSL.OP_NO_QUERY_MTU)
    return context


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((LOCAL, 0))
    sock.setblocking(False)
    return sock


def flush(call: Call) -> None:
    from OpenSSL import SSL

    while True:
        try:
            data = call.ssl.bio_read(65535)
        except SSL.WantReadError:
            return
        call.wic.sendto(data, call.relay_wic)


def handshake_step(call: Call) -> None:
    from OpenSSL import SSL
    from pylibsrtp import Policy, Session

    try:
        call.ssl.do_handshake()
    except SSL.WantReadError:
        flush(call)
        return
    flush(call)
    call.done = True
    profile = call.ssl.get_selected_srtp_profile()
    k, s = SRTP_SIZES[profile]
    m = call.ssl.export_keying_material(b"EXTRACTOR-dtls_srtp", 2 * (k + s))
    libsrtp = {
        b"SRTP_AEAD_AES_256_GCM": Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
        b"SRTP_AEAD_AES_128_GCM": Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
        b"SRTP_AES128_CM_SHA1_80": Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    }[profile]
    client, server = m[:k] + m[2 * k : 2 * k + s], m[k : 2 * k] + m[2 * k + s :]
    call.tx = Session(Policy(key=client, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=libsrtp))
    call.rx = Session(Policy(key=server, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=libsrtp))


def handshake_all(calls: list[Call], timeout: float = 20.0) -> str:
    from OpenSSL import SSL

    selector = selectors.DefaultSelector()
    for call in calls:
        selector.register(call.wic, selectors.EVENT_READ, call)
        handshake_step(call)
    deadline = time.monotonic() + timeout
    pending = sum(1 for c in calls if not c.done)
    last_timeout_check = time.monotonic()
    while pending and time.monotonic() < deadline:
        for key, _ in selector.select(0.05):
            call = key.data
            while True:
                try:
                    data = call.wic.recv(65535)
                except BlockingIOError:
                    break
                if not call.done:
                    call.ssl.bio_write(data)
                    handshake_step(call)
                    if call.done:
                        pending -= 1
        if time.monotonic() - last_timeout_check > 0.1:
            last_timeout_check = time.monotonic()
            for call in calls:
                if not call.done:
                    try:
                        call.ssl.DTLSv1_handle_timeout()
                        flush(call)
                    except SSL.Error:
                        pass
    selector.close()
    return calls[0].ssl.get_selected_srtp_profile().decode() if calls and calls[0].done else "none"


def run_media(calls: list[Call], seconds: float) -> Results:
    """Send both directions of every call for `seconds`, measuring latency and loss."""
    results = Results()
    selector = selectors.DefaultSelector()
    for call in calls:
        selector.register(call.wic, selectors.EVENT_READ, (call, True))
        selector.register(call.core, selectors.EVENT_READ, (call, False))
    n = len(calls)
    # Spread sends evenly: WIC i at i/n of the period, core i half a slot later.
    schedule = sorted(
        [(i / n * PERIOD, calls[i], True) for i in range(n)] + [((i + 0.5) / n * PERIOD, calls[i], False) for i in range(n)],
        key=lambda item: item[0],
    )
    padding = bytes(PAYLOAD - STAMP.size)
    start = time.monotonic()
    measure_from = time.monotonic_ns() + int(WARMUP * 1e9)
    end = start + seconds
    period_start = start
    slot = 0
    up_ms, down_ms = results.up_ms, results.down_ms
    monotonic, monotonic_ns = time.monotonic, time.monotonic_ns

    def receive(events: list[Any]) -> None:
        for key, _ in events:
            call, from_relay_on_wic = key.data
            sock = key.fileobj
            while True:
                try:
                    data = sock.recv(2048)
                except BlockingIOError:
                    break
                now = monotonic_ns()
                if from_relay_on_wic:
                    if data[0] < 128 or 192 <= data[1] <= 223:
                        continue  # DTLS retransmission or RTCP
                    try:
                        packet = call.rx.unprotect(data)
                    except Exception:
                        results.srtp_errors += 1
                        continue
                    sent, _ = STAMP.unpack_from(packet, 12)
                    results.received_down += 1
                    if sent >= measure_from:
                        down_ms.append((now - sent) / 1e6)
                else:
                    sent, _ = STAMP.unpack_from(data, 12)
                    results.received_up += 1
                    if sent >= measure_from:
                        up_ms.append((now - sent) / 1e6)

    while True:
        now = monotonic()
        if now >= end:
            break
        while True:
            due, call, from_wic = schedule[slot]
            if period_start + due > now:
                break
            stamp_ns = monotonic_ns()
            if from_wic:
                call.wic_seq += 1
                seq = call.wic_seq
                header = struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160, 0x10000 + call.index)
                call.wic.sendto(call.tx.protect(header + STAMP.pack(stamp_ns, call.index) + padding), call.relay_wic)
                results.sent_up += 1
            else:
                call.core_seq += 1
                seq = call.core_seq
                header = struct.pack("!BBHII", 0x80, 8, seq & 0xFFFF, seq * 160, 0x20000 + call.index)
                call.core.sendto(header + STAMP.pack(stamp_ns, call.index) + padding, call.relay_core)
                results.sent_down += 1
            slot += 1
            if slot == len(schedule):
                slot = 0
                period_start += PERIOD
        wait = period_start + schedule[slot][0] - monotonic()
        receive(selector.select(max(wait, 0)))
    # Drain what is still in flight.
    drain_until = monotonic() + 0.3
    while monotonic() < drain_until and (results.received_up < results.sent_up or results.received_down < results.sent_down):
        receive(selector.select(0.02))
    selector.close()
    return results


def pin_to_cpu(index: int) -> None:
    """Relay on one core, generator on the other (when there are two): fewer migrations."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        os.sched_setaffinity(0, {cpus[index % len(cpus)]})


def make_realtime() -> None:
    """SCHED_FIFO: other processes on a shared box no longer preempt us (the kernel's RT
    throttling, sched_rt_runtime_us, still keeps 5 % of each CPU for everyone else)."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except (OSError, AttributeError) as error:
        print(f"cannot switch to SCHED_FIFO ({error}); measuring with normal priority", file=sys.stderr)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run_step(conn: multiprocessing.connection.Connection, n: int, seconds: float) -> dict[str, Any]:
    from OpenSSL import SSL

    from epcscf.media import Certificate

    wic_certificate = Certificate.generate("wic")
    conn.send(("open", n))
    relay_fingerprint, relay_ports = conn.recv()
    context = make_context(wic_certificate, relay_fingerprint)
    calls = []
    for index, (wic_port, core_port) in enumerate(relay_ports):
        ssl = SSL.Connection(context, None)
        ssl.set_ciphertext_mtu(1200)
        ssl.set_connect_state()
        calls.append(Call(index, udp_socket(), udp_socket(), (LOCAL, wic_port), (LOCAL, core_port), ssl))
    conn.send(("start", (wic_certificate.fingerprint.value, [(c.wic.getsockname()[1], c.core.getsockname()[1]) for c in calls])))
    conn.recv()
    began = time.monotonic()
    profile = handshake_all(calls)
    handshake_seconds = time.monotonic() - began
    done = sum(1 for c in calls if c.done)
    conn.send(("connected", None))
    relay_connected = conn.recv()
    if done < n or relay_connected < n:
        raise SystemExit(f"only {done}/{n} handshakes completed (relay: {relay_connected})")
    conn.send(("measure", None))
    conn.recv()
    results = run_media(calls, seconds)
    conn.send(("report", None))
    relayed, relay_cpu, relay_wall, (relay_dropped, relay_lost) = conn.recv()
    conn.send(("close", None))
    conn.recv()
    for call in calls:
        call.wic.close()
        call.core.close()
    lost = (results.sent_up - results.received_up) + (results.sent_down - results.received_down)
    return {
        "n": n,
        "profile": profile,
        "handshake_s": handshake_seconds,
        "offered_pps": (results.sent_up + results.sent_down) / relay_wall,
        "relayed_pps": relayed / relay_wall,
        "pps_per_core": relayed / relay_cpu if relay_cpu else float("nan"),
        "relay_cpu": relay_cpu / relay_wall,
        "up_p50": percentile(results.up_ms, 0.50),
        "up_p99": percentile(results.up_ms, 0.99),
        "down_p50": percentile(results.down_ms, 0.50),
        "down_p99": percentile(results.down_ms, 0.99),
        "max": max(results.up_ms + results.down_ms, default=float("nan")),
        "lost": lost,
        "relay_dropped": relay_dropped,
        "relay_seq_lost": relay_lost,
        "srtp_errors": results.srtp_errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="50,100,200,300,400,500,600,800", help="comma-separated call counts")
    parser.add_argument("--seconds", type=float, default=3.0, help="media seconds per step")
    parser.add_argument("--pin", action="store_true", help="pin relay and generator to one core each")
    parser.add_argument("--realtime", action="store_true",
                        help="run relay and generator SCHED_FIFO (needs root): latency of the relay itself, "
                             "without preemption by other processes of a shared machine")
    parser.add_argument("--attempts", type=int, default=2,
                        help="tries per step before stopping (other processes on a shared box cause stalls)")
    args = parser.parse_args()
    if args.attempts < 1:
        parser.error("--attempts must be at least 1")
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
    print(
        f"{'calls':>5} {'profile':>22} {'hs s':>5} {'offered/s':>9} {'relayed/s':>9} {'pkt/s/core':>10} {'relayCPU':>8} "
        f"{'up p50':>7} {'up p99':>7} {'dn p50':>7} {'dn p99':>7} {'max ms':>7} {'lost':>5} {'load':>5}"
    )
    best = None
    try:
        for n in (int(x) for x in args.steps.split(",")):
            if time.monotonic() - started + args.seconds + 8 > TIME_BUDGET:
                print("time budget spent; stopping")
                break
            for attempt in range(1, args.attempts + 1):
                r = run_step(parent, n, args.seconds)
                print(
                    f"{r['n']:>5} {r['profile']:>22} {r['handshake_s']:>5.2f} {r['offered_pps']:>9.0f} {r['relayed_pps']:>9.0f} "
                    f"{r['pps_per_core']:>10.0f} {r['relay_cpu']:>7.0%} {r['up_p50']:>7.3f} {r['up_p99']:>7.3f} "
                    f"{r['down_p50']:>7.3f} {r['down_p99']:>7.3f} {r['max']:>7.2f} {r['lost']:>5} {os.getloadavg()[0]:>5.2f}",
                    flush=True,
                )
                passed = max(r["up_p99"], r["down_p99"]) <= LATENCY_LIMIT_MS and not r["lost"] and not r["srtp_errors"]
                if passed or time.monotonic() - started + args.seconds + 8 > TIME_BUDGET:
                    break
            if not passed:
                print(f"stop: p99 above {LATENCY_LIMIT_MS} ms or loss at {n} calls "
                      f"(relay dropped {r['relay_dropped']}, srtp errors {r['srtp_errors']})")
                break
            best = n
    finally:
        parent.send(("quit", None))
        parent.recv()
        relay.join(5)
    print(f"largest step with p99 < {LATENCY_LIMIT_MS} ms and no loss: {best} calls; total {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
