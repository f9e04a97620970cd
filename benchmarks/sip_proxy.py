"""Benchmark: sipp UAC → epcscf stateful proxy (own process) → sipp UAS, MESSAGE over UDP.

Usage::

    .venv/bin/python benchmarks/sip_proxy.py [--rates 1000,2000,3000] [--seconds 4]

For each rate, sipp sends ``rate × seconds`` MESSAGE transactions, first straight to the
UAS (baseline) and then through the proxy, and records every response time with
``-trace_rtt``.  Printed per rate: transactions/s completed through the proxy, failed
transactions, and p50/p99 response times direct and proxied; the difference is the latency
the proxy adds.  Everything is on 127.0.0.1 and bounded in time (``-timeout``).

``--serve`` runs only the proxy (used internally as the child process).
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
SCENARIOS = os.path.join(TOP, "tests", "sipp")


def serve(listen_port: int, next_hop: str) -> None:
    """The proxy process: UDP listener, transaction layer, stateful proxy, static next hop."""
    sys.path.insert(0, TOP)
    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet import reactor
    from twisted.names import client

    from epcscf.sip.proxy import ProxySettings, StatefulProxy
    from epcscf.sip.proxy_policy import DefaultRoutingPolicy
    from epcscf.sip.resolver import NextHopResolver
    from epcscf.sip.transaction import TransactionLayer
    from epcscf.sip.transaction_machine import TimerSettings
    from epcscf.sip.transport import TransportManager

    import gc

    gc_mode = os.environ.get("BENCH_GC", "tuned")
    if gc_mode == "off":
        gc.disable()
    elif gc_mode == "tuned":
        # Fewer young collections; objects alive at start-up are never scanned again.
        gc.freeze()
        gc.set_threshold(100_000, 50, 100)
    holder: dict = {}
    transports = TransportManager(reactor, lambda message, connection: holder["layer"].receive(message, connection))
    transports.listen(f"udp:127.0.0.1:{listen_port}")
    resolver = NextHopResolver(client.Resolver(servers=[("127.0.0.1", 53)]))  # never asked: numeric next hop
    policy = DefaultRoutingPolicy(transports, resolver, [next_hop])
    proxy = StatefulProxy(reactor, transports, resolver, policy, ProxySettings())
    layer = TransactionLayer(reactor, proxy, lambda connection: TimerSettings())
    holder["layer"] = layer
    proxy.transactions = layer
    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(reactor.stop))
    print("ready", flush=True)
    reactor.run()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def read_rtts(directory: str) -> list[float]:
    """Response times (ms) from sipp's ``-trace_rtt`` CSV files in ``directory``."""
    values: list[float] = []
    for path in glob.glob(os.path.join(directory, "*_rtt.csv")):
        with open(path) as f:
            for line in f:
                parts = line.strip().split(";")
                if len(parts) >= 2:
                    try:
                        values.append(float(parts[1]))
                    except ValueError:
                        continue  # the header line
    return values


def run_uac(sipp: str, target: str, rate: int, calls: int, directory: str, seconds: float) -> tuple[int, float, list[float]]:
    """(exit code, elapsed seconds, response times ms) of one sipp UAC run."""
    os.makedirs(directory, exist_ok=True)
    argv = [
        sipp, target, "-sf", os.path.join(SCENARIOS, "uac_message.xml"), "-s", "bench",
        "-i", "127.0.0.1", "-p", str(free_udp_port()), "-t", "u1",
        "-r", str(rate), "-rp", "1000", "-m", str(calls), "-l", str(max(rate, 100)),
        "-timeout", f"{int(seconds * 3 + 10)}s", "-timeout_error", "-nostdin",
        "-trace_rtt", "-rtt_freq", "500", "-recv_timeout", "5000",
    ]
    start = time.monotonic()
    completed = subprocess.run(argv, cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=seconds * 3 + 30)
    elapsed = time.monotonic() - start
    return completed.returncode, elapsed, read_rtts(directory)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="1000,2000,3000", help="comma-separated sipp call rates (transactions/s)")
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each step")
    parser.add_argument("--gc", choices=("default", "tuned", "off"), default="tuned",
                        help="garbage collector of the proxy process: Python's default, tuned "
                        "(gc.freeze + threshold 100000; the default here), or off")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--listen-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--next-hop", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.listen_port, args.next_hop)
        return 0

    sipp = shutil.which("sipp")
    if sipp is None:
        print("sipp is not installed (Debian package sip-tester)", file=sys.stderr)
        return 2
    workdir = tempfile.mkdtemp(prefix="epcscf-bench-")
    uas_port, proxy_port = free_udp_port(), free_udp_port()
    uas = subprocess.Popen(
        [sipp, "-sf", os.path.join(SCENARIOS, "uas_message.xml"), "-i", "127.0.0.1", "-p", str(uas_port),
         "-t", "u1", "-nostdin", "-timeout", "600s"],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    proxy = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve", "--listen-port", str(proxy_port),
         "--next-hop", f"sip:127.0.0.1:{uas_port};transport=udp"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "BENCH_GC": args.gc},
    )
    try:
        assert proxy.stdout is not None
        if proxy.stdout.readline().strip() != "ready":
            print("the proxy did not start", file=sys.stderr)
            return 1
        print(f"proxy GC: {args.gc}")
        print(f"{'rate':>6} {'sent':>7} {'tx/s via proxy':>15} {'failed':>7} "
              f"{'p50 direct':>11} {'p99 direct':>11} {'p50 proxied':>12} {'p99 proxied':>12} {'+p50 ms':>8} {'+p99 ms':>8}")
        for rate in [int(r) for r in args.rates.split(",")]:
            calls = int(rate * args.seconds)
            code_d, _, direct = run_uac(sipp, f"127.0.0.1:{uas_port}", rate, calls, os.path.join(workdir, f"direct-{rate}"), args.seconds)
            code_p, elapsed, proxied = run_uac(sipp, f"127.0.0.1:{proxy_port}", rate, calls, os.path.join(workdir, f"proxied-{rate}"), args.seconds)
            failed = calls - len(proxied)
            throughput = len(proxied) / elapsed if elapsed else 0.0
            d50, d99 = percentile(direct, 0.5), percentile(direct, 0.99)
            p50, p99 = percentile(proxied, 0.5), percentile(proxied, 0.99)
            print(f"{rate:>6} {calls:>7} {throughput:>15.0f} {failed:>7} {d50:>11.2f} {d99:>11.2f} "
                  f"{p50:>12.2f} {p99:>12.2f} {p50 - d50:>8.2f} {p99 - d99:>8.2f}"
                  + ("" if code_p == 0 else f"   (sipp exit {code_p})") + ("" if code_d == 0 else f"   (direct sipp exit {code_d})"),
                  flush=True)
            if proxy.poll() is not None:
                print("the proxy process died", file=sys.stderr)
                return 1
    finally:
        for process in (proxy, uas):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
