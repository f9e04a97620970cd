"""Benchmark: CPU of the eP-CSCF per REGISTER refresh over WebSocket, external core, no challenge.

Usage::

    .venv/bin/python benchmarks/ws_register.py [--users 200] [--seconds 10] [--rate 0]
                                               [--profile FILE] [--log-level warn] [--epcscf-workers 1,2]

Run it in a private loopback-only network namespace on a shared machine::

    unshare -rn sh -c 'ip link set lo up && exec .venv/bin/python benchmarks/ws_register.py'

Peers, all on 127.0.0.1:

* epcscf: ``twistd -n epcscf`` on a generated ini, ``[core] mode = external`` toward a UDP next
  hop, ``[overload] enabled = false`` (the figure is the cost of the work, not of refusing it);
* the core: a sipp UAS (``benchmarks/sipp/registrar.xml``) answering every REGISTER 200 with
  the Contact and Path echoed — a registrar that does not challenge refreshes, as an S-CSCF does
  not within a nonce's life;
* the WICs: ``benchmarks/wic_register.mjs`` in Node (npm ``ws``), one persistent WebSocket per
  user; each registers once (not timed), then refreshes closed loop (``--rate 0``) or open loop.

``--epcscf-workers 1,2`` measures each ``[service] workers`` count in turn in the same run (a fresh
epcscf, sipp and generator each), prints each worker's share of the WICs (the supervisor's
``/metrics``) and the ratio of the REGISTER/s; epcscf CPU is then the supervisor's and the
workers' together.

Printed: REGISTER/s, p50/p99, failures, and CPU seconds divided by refreshes for epcscf, the
Node generator and sipp — all measured over the same timed phase, with ``/proc/loadavg``.
With ``--py-spy FILE`` epcscf is sampled by py-spy (``pip install py-spy`` into .venv) during the
timed phase, collapsed stacks written to FILE (``benchmarks/spy_top.py FILE`` prints the top
functions).  With ``--profile FILE`` epcscf runs under cProfile (``twistd --profiler=cprofile``) and FILE is
its pstats dump (the figures are then cProfile's, not the edge's).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, TOP)

from calls import cpu_of, sipp_pids, user_system  # noqa: E402
from w2_register import DOMAIN, Deployment, EpcscfProcess, free_port, make_users  # noqa: E402

REGISTRAR = os.path.join(HERE, "sipp", "registrar.xml")
GENERATOR = os.path.join(HERE, "wic_register.mjs")
CPU_FLOOR_MS = 0.30  # the project's target per REGISTER refresh


def start_registrar(directory: str) -> tuple[subprocess.Popen, int]:
    sipp = shutil.which("sipp")
    if sipp is None:
        raise RuntimeError("sipp is not installed (Debian package sip-tester)")
    port = free_port(socket.SOCK_DGRAM)
    process = subprocess.Popen(
        [sipp, "-sf", REGISTRAR, "-i", "127.0.0.1", "-p", str(port), "-nostdin", "-bg", "-trace_err",
         "-error_file", os.path.join(directory, "sipp_errors.log"), "-max_recv_loops", "10000"],
        cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return process, port


def external_core_deployment(directory: str, users: int, log_level: str) -> Deployment:
    deployment = Deployment(directory, make_users(users), log_level, core_transport="udp")
    original = deployment.write_ini

    def write_ini(name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        written = original(name, *args, **kwargs)
        with open(written[0], "a") as handle:
            handle.write("[overload]\nenabled = false\n")
        return written

    deployment.write_ini = write_ini  # type: ignore[method-assign]
    return deployment


def profiled_popen(path: str) -> None:
    """Make ``EpcscfProcess`` start twistd under cProfile, the stats saved to ``path``."""
    real_popen = subprocess.Popen

    def popen(args: list[str], **kwargs: Any) -> subprocess.Popen:
        if "epcscf" in args:
            at = args.index("epcscf")
            args = args[:at] + [f"--profile={os.path.abspath(path)}", "--profiler=cprofile", "--savestats"] + args[at:]
        return real_popen(args, **kwargs)

    subprocess.Popen = popen  # type: ignore[misc]


def start_py_spy(path: str, pid: int, seconds: float) -> subprocess.Popen:
    """py-spy (a sampling profiler: no cost in the profiled process) on ``pid`` for ``seconds``."""
    py_spy = os.path.join(TOP, ".venv", "bin", "py-spy")
    return subprocess.Popen([py_spy, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds) - 1)),
                             "--rate", "250", "--format", "raw", "--output", path, "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def loadavg() -> str:
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=0.0, help="REGISTERs/s offered (0: closed loop, as fast as answered)")
    parser.add_argument("--profile", metavar="FILE")
    parser.add_argument("--py-spy", metavar="FILE", help="sample epcscf with py-spy during the timed phase (collapsed stacks to FILE)")
    parser.add_argument("--log-level", default="warn")
    parser.add_argument("--epcscf-workers", default="1", help="[service] workers counts to measure in turn, e.g. 1,2")
    options = parser.parse_args(argv)
    if shutil.which("node") is None:
        raise RuntimeError("node is not installed (bin/setup installs it)")
    if options.profile:
        profiled_popen(options.profile)
    rates: dict[int, float] = {}
    for workers in [int(n) for n in options.epcscf_workers.split(",")]:
        status, rates[workers] = measure(options, workers)
        if status:
            return status
    if 1 in rates and len(rates) > 1:
        for workers, rate in rates.items():
            if workers > 1 and rates[1]:
                print(f"workers = {workers} / workers = 1: {rate / rates[1]:.2f}× REGISTER/s")
    return 0


def tree_user_system(epcscf: EpcscfProcess) -> tuple[float, float]:
    pairs = [user_system(pid) for pid in epcscf.pids()]
    return sum(user for user, _ in pairs), sum(system for _, system in pairs)


def measure(options: Any, workers: int) -> tuple[int, float]:
    """One fresh epcscf with ``[service] workers = workers``: (exit status, REGISTER/s)."""
    directory = tempfile.mkdtemp(prefix="epcscf-ws-register-")
    deployment = external_core_deployment(directory, options.users, options.log_level)
    sipp, core_port = start_registrar(directory)
    epcscf = EpcscfProcess(deployment, "edge", f"sip:127.0.0.1:{core_port};transport=udp", workers)
    generator = None
    shares: list[int] = []
    try:
        epcscf.wait_listening()
        command = ["node", GENERATOR, "--url", f"ws://127.0.0.1:{epcscf.ws_port}", "--users", str(options.users),
                   "--seconds", str(options.seconds), "--rate", str(options.rate), "--domain", DOMAIN, "--wait", "1"]
        generator = subprocess.Popen(command, cwd=TOP, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert generator.stdout is not None and generator.stdin is not None
        ready = json.loads(generator.stdout.readline() or "{}")
        if "ready" not in ready:
            raise RuntimeError(f"the generator did not register its WICs; see {epcscf.log_path}:\n{epcscf.tail()}")
        time.sleep(0.5)
        shares = epcscf.connection_shares()
        load_before = loadavg()
        edge_before = epcscf.cpu_seconds()
        split_before = tree_user_system(epcscf)
        sipp_before = sum(cpu_of(pid) for pid in sipp_pids(core_port))
        generator.stdin.write("go\n")
        generator.stdin.flush()
        sampler = start_py_spy(options.py_spy, epcscf.pid, options.seconds) if options.py_spy else None
        result = json.loads(generator.stdout.readline() or "{}")
        edge_cpu = epcscf.cpu_seconds() - edge_before
        split_after = tree_user_system(epcscf)
        user, system = split_after[0] - split_before[0], split_after[1] - split_before[1]
        sipp_cpu = sum(cpu_of(pid) for pid in sipp_pids(core_port)) - sipp_before
        load_after = loadavg()
        generator.wait(30)
        if sampler is not None:
            sampler.wait(60)
    finally:
        if generator is not None and generator.poll() is None:
            generator.kill()
        for pid in sipp_pids(core_port):
            os.kill(pid, signal.SIGKILL)
        if sipp.poll() is None:
            sipp.kill()
        epcscf.stop()
    done = result.get("registered", 0)
    if not done:
        print(f"no refresh completed: {result}")
        return 1, 0.0
    per_ms = 1000 * edge_cpu / done
    print(f"REGISTER refresh over WS, external core (sipp registrar, no challenge), {options.users} WICs, workers = {workers}, "
          f"{'closed loop' if not options.rate else f'{options.rate:g}/s offered'}, {result['seconds']:.1f} s"
          f"{' [epcscf under cProfile]' if options.profile else ''}")
    print(f"  {done} refreshes = {done / result['seconds']:.0f}/s; p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms; "
          f"failures {sum(result['errors'].values())} {result['errors'] or ''}")
    print(f"  epcscf CPU {edge_cpu:.2f} s = {per_ms:.3f} ms per refresh [{'PASS' if per_ms <= CPU_FLOOR_MS else 'FAIL'} <= {CPU_FLOOR_MS} ms] "
          f"(user {1000 * user / done:.3f} + system {1000 * system / done:.3f} ms)")
    print(f"  generator (node) CPU {result['cpu_s']:.2f} s = {1000 * result['cpu_s'] / done:.3f} ms per refresh; "
          f"sipp {sipp_cpu:.2f} s = {1000 * sipp_cpu / done:.3f} ms")
    if shares:
        print(f"  WICs per worker: {' / '.join(str(n) for n in shares)}")
    print(f"  loadavg before {load_before}, after {load_after}")
    shutil.rmtree(directory, ignore_errors=True)
    return 0, done / result["seconds"]


if __name__ == "__main__":
    sys.exit(main())
