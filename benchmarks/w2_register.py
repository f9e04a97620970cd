"""Benchmark: REGISTER throughput and resident memory per idle registered connection.

Usage::

    .venv/bin/python benchmarks/w2_register.py [--quick] [--seconds 10] [--connections 200]
                                               [--workers 2] [--sizes 1000,5000] [--log-level info]
                                               [--core-transport udp|tcp] [--separate-core]
                                               [--only throughput|memory] [--keep]
                                               [--epcscf-workers 1,2] [--ws-socket-sharing reuseport|inherit]

epcscf runs as its own process (``twistd -n epcscf`` on a generated ini: ws and wss listeners
on free 127.0.0.1 ports, the embedded core with generated users ``user0001``…, a self-signed
ECDSA P-256 certificate made here with ``cryptography``), so that its RSS is read from
``/proc/<pid>/status`` apart from the generator.  The generator is ``--workers`` separate
processes (``benchmarks/_load.py``: raw asyncio WebSocket WICs).

Measured, on a fresh epcscf for ws and then for wss:

1. RSS per idle registered connection: baseline VmRSS after a small warm-up (10 WICs
   registered and closed, so that one-off lazy initialisation is not charged to connections),
   then VmRSS once N WICs are connected, registered and idle and the figure has settled;
   (after − before) / N in KiB, for each N in ``--sizes`` (cumulative: the 5000 include the
   first 1000).
2. Registrations/s, on the same process with those WICs still registered: ``--connections``
   of them re-register back to back for ``--seconds`` (each registration = REGISTER → 401 →
   REGISTER with Authorization → 200, digest computed by the WIC); p50/p99 of that whole
   exchange; CPU of epcscf and of the generator per registration.

With ``--core-transport tcp`` (the default, as in ``etc/epcscf.ini``) Timer J is 0 and the
memory figure is what an idle registered connection itself costs; with ``udp`` the embedded
core keeps every completed REGISTER server transaction for Timer J = 64*T1 = 32 s (RFC 3261
§17.2.2), so the figure also includes what a registration burst leaves behind.  ``--separate-core`` runs the
embedded core in a second epcscf process that the first reaches as an external core, to
split the CPU per registration between the eP-CSCF and the core.

``--epcscf-workers 1,2`` measures each transport once per ``[service] workers`` count, in the
same run, with the core in its own process (as ``--separate-core``: in a supervisor the
embedded core would share the supervisor's one core): registrations/s of each, the ratio,
and each worker's share of the connections (from the supervisor's ``/metrics``,
``epcscf_ws_connections{worker="N"}``).  CPU and RSS are then summed over the supervisor
and its workers.

Floors (the project's targets): ≥ 1,000 registrations/s; ≤ 40 KiB per idle registered wss connection.
Every figure is printed with PASS/FAIL; the exit status is 0 whatever the figures (this is
a measurement, not a test), non-zero only when the benchmark itself could not run.
Everything is on 127.0.0.1, bounded in connections and time, and cleaned up on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Iterator

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, TOP)  # the project and its test support (certificates)

from _load import WorkerSettings, raise_open_files_limit, worker_main  # noqa: E402

DOMAIN = "ims.localdomain"
REGISTRATIONS_FLOOR = 1000.0  # registrations/s, generator included, 2 cores
WSS_KIB_FLOOR = 40.0  # KiB RSS per idle registered wss connection
WARM_UP_WICS = 10
OPEN_FILES = 20000


# --- the epcscf process ---


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process, from /proc/<pid>/stat (utime, stime)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields_ = stat.read().rsplit(")", 1)[1].split()
    return (int(fields_[11]) + int(fields_[12])) / os.sysconf("SC_CLK_TCK")


def make_certificate(directory: str) -> tuple[str, str]:
    """A self-signed ECDSA P-256 certificate for 127.0.0.1: (cert path, key path)."""
    from tests.support.certificates import self_signed_certificate

    cert_path, key_path, _ = self_signed_certificate(directory)
    return cert_path, key_path


def make_users(count: int) -> list[tuple[str, str]]:
    return [(f"user{i:04d}", f"secret-{i:04d}") for i in range(1, count + 1)]


@dataclass
class Deployment:
    """Files of one benchmark run: ini, users, certificate."""

    directory: str
    users: list[tuple[str, str]]
    log_level: str
    core_transport: str = "udp"
    ws_sharing: str = "reuseport"  # [service] ws_socket_sharing with several workers
    cert: str = ""
    key: str = ""

    def __post_init__(self) -> None:
        self.cert, self.key = make_certificate(self.directory)
        self.users_file = os.path.join(self.directory, "users")
        with open(self.users_file, "w") as handle:
            handle.write("".join(f"{name}:{password}\n" for name, password in self.users))

    def write_ini(self, name: str, core_next_hop: str | None = None, workers: int = 1) -> tuple[str, int, int, int]:
        """A fresh ini with new free ports: (path, ws port, wss port, embedded core port).

        With ``core_next_hop`` the eP-CSCF uses that external core (``[core] mode = external``)
        instead of embedding one, and the core port is 0.
        """
        ws_port, wss_port = free_port(), free_port()
        kind = socket.SOCK_DGRAM if self.core_transport == "udp" else socket.SOCK_STREAM
        core_port = 0 if core_next_hop else free_port(kind)
        if core_next_hop:
            core = f"mode = external\nnext_hop = {core_next_hop}\ndomain = {DOMAIN}"
        else:
            core = f"mode = embedded\ndomain = {DOMAIN}\nlisten = {self.core_transport}:127.0.0.1:{core_port}\nusers = {self.users_file}"
        path = os.path.join(self.directory, f"{name}.ini")
        # Worker i listens on the SIP port + i: with several, let each take any free port.
        sip_port = free_port(kind) if workers == 1 else 0
        self.metrics_port = free_port() if workers > 1 else 0
        multi = f"workers = {workers}\nws_socket_sharing = {self.ws_sharing}\n[metrics]\nenabled = true\nport = {self.metrics_port}\n" if workers > 1 else ""
        with open(path, "w") as handle:
            handle.write(
                f"""\
[service]
state_dir = {self.directory}/var-{name}
{multi}[sip]
listen = {self.core_transport}:127.0.0.1:{sip_port}
[ws]
listen = ws:127.0.0.1:{ws_port}, wss:127.0.0.1:{wss_port}
certificate = {self.cert}
private_key = {self.key}
allow_missing_origin = true
[core]
{core}
[media]
port_range = 41000-41999
[manhole]
enabled = false
[log]
level = {self.log_level}
"""
            )
        return path, ws_port, wss_port, core_port


class EpcscfProcess:
    """``twistd -n --pidfile= epcscf --config <ini>`` as a child process with a raised open-files limit."""

    def __init__(self, deployment: Deployment, name: str, core_next_hop: str | None = None, workers: int = 1) -> None:
        self.ini, self.ws_port, self.wss_port, self.core_port = deployment.write_ini(name, core_next_hop, workers)
        self.workers = workers
        self.metrics_port = deployment.metrics_port
        self.log_path = os.path.join(deployment.directory, f"{name}.log")
        self.log = open(self.log_path, "wb")
        env = dict(os.environ)
        env["PYTHONPATH"] = TOP + os.pathsep + env.get("PYTHONPATH", "")
        self.process = subprocess.Popen(
            [os.path.join(TOP, ".venv", "bin", "twistd"), "-n", "--pidfile=", "epcscf", "--config", self.ini],
            cwd=TOP,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: raise_open_files_limit(OPEN_FILES),
        )
        self.pid = self.process.pid

    def wait_listening(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.workers > 1 and self.workers_running() < self.workers:
            # The supervisor holds the ws port from the start; the workers listen a moment later.
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"epcscf workers not ready; see {self.log_path}:\n{self.tail()}")
            time.sleep(0.1)
        for port in (self.ws_port, self.wss_port):
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"epcscf exited with {self.process.returncode}; see {self.log_path}:\n{self.tail()}")
                with socket.socket() as probe:
                    if probe.connect_ex(("127.0.0.1", port)) == 0:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"epcscf not listening on {port} after {timeout} s; see {self.log_path}")
                time.sleep(0.05)

    def pids(self) -> list[int]:
        """The process and, with workers, its worker processes (its children)."""
        if self.workers == 1:
            return [self.pid]
        with open(f"/proc/{self.pid}/task/{self.pid}/children") as children:
            return [self.pid] + [int(pid) for pid in children.read().split()]

    def rss_kib(self) -> int:
        """VmRSS, summed over the supervisor and its workers."""
        total = 0
        for pid in self.pids():
            with open(f"/proc/{pid}/status") as status:
                total += next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        return total

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids())

    def metrics(self) -> str:
        """The supervisor's merged /metrics ("" while it does not answer yet)."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
                return response.read().decode()
        except (urllib.error.URLError, ConnectionError):
            return ""

    def workers_running(self) -> int:
        import re

        found = re.search(r'^epcscf_workers_running\{worker="supervisor"\} (\S+)$', self.metrics(), re.MULTILINE)
        return int(float(found.group(1))) if found else 0

    def connection_shares(self) -> list[int]:
        """Open WebSocket connections of each worker, from the supervisor's merged /metrics."""
        if self.workers == 1:
            return []
        import re

        body = self.metrics()
        found = dict(re.findall(r'^epcscf_ws_connections\{worker="(\d+)"\} (\S+)$', body, re.MULTILINE))
        return [int(float(found.get(str(index), "0"))) for index in range(self.workers)]

    def tail(self, lines: int = 15) -> str:
        self.log.flush()
        with open(self.log_path, "rb") as handle:
            return b"\n".join(handle.read().splitlines()[-lines:]).decode(errors="replace")

    def count_in_log(self, text: bytes) -> int:
        self.log.flush()
        with open(self.log_path, "rb") as handle:
            return handle.read().count(text)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.log.close()


# --- the generator processes ---


class Generator:
    """``workers`` processes, each owning a contiguous slice of the users, driven in lock step."""

    def __init__(self, epcscf: EpcscfProcess, secure: bool, users: list[tuple[str, str]], workers: int, cafile: str) -> None:
        context = multiprocessing.get_context("fork")
        self.pipes = []
        self.processes = []
        port = epcscf.wss_port if secure else epcscf.ws_port
        share = -(-len(users) // workers)
        for index in range(workers):
            parent, child = context.Pipe()
            settings = WorkerSettings("127.0.0.1", port, secure, cafile, users[index * share : (index + 1) * share], DOMAIN)
            process = context.Process(target=worker_main, args=(child, settings, OPEN_FILES), daemon=True)
            process.start()
            child.close()
            self.pipes.append(parent)
            self.processes.append(process)
        self._all("ready", timeout=30)

    def _all(self, expected: str, timeout: float) -> list[dict[str, Any]]:
        results = []
        deadline = time.monotonic() + timeout
        for pipe in self.pipes:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"a generator worker did not answer {expected!r} within {timeout} s")
            answer, result = pipe.recv()
            if answer != expected:
                raise RuntimeError(f"generator worker answered {answer!r} {result!r}, expected {expected!r}")
            results.append(result)
        return results

    def open(self, count: int, timeout: float = 120.0) -> dict[str, Any]:
        """Open and register ``count`` more WICs spread over the workers."""
        started = time.perf_counter()
        share = [count // len(self.pipes) + (1 if i < count % len(self.pipes) else 0) for i in range(len(self.pipes))]
        for pipe, n in zip(self.pipes, share):
            pipe.send(("open", (n,)))
        results = self._all("opened", timeout)
        errors: dict[str, int] = {}
        for result in results:
            for key, n in result["errors"].items():
                errors[key] = errors.get(key, 0) + n
        return {"opened": sum(r["opened"] for r in results), "errors": errors, "seconds": time.perf_counter() - started}

    def run(self, seconds: float, connections: int) -> dict[str, Any]:
        """``connections`` of the open WICs (spread over the workers) re-register for ``seconds``."""
        start_at = time.time() + 0.3  # every worker starts on the same wall-clock instant
        for index, pipe in enumerate(self.pipes):
            share = connections // len(self.pipes) + (1 if index < connections % len(self.pipes) else 0)
            pipe.send(("run", (seconds, start_at, share)))
        results = self._all("ran", seconds + 60)
        latencies = sorted(latency for result in results for latency in result["latencies"])
        errors: dict[str, int] = {}
        for result in results:
            for key, n in result["errors"].items():
                errors[key] = errors.get(key, 0) + n
        elapsed = max(result["seconds"] for result in results)
        return {"latencies": latencies, "errors": errors, "seconds": elapsed}

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("close", ()))
        with contextlib.suppress(RuntimeError, OSError, EOFError):
            self._all("closed", 30)
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.terminate()
                process.join(5)


@contextlib.contextmanager
def generator(*args: Any) -> Iterator[Generator]:
    gen = Generator(*args)
    try:
        yield gen
    finally:
        gen.close()


# --- measurements ---


def percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass
class ThroughputResult:
    transport: str
    connections: int
    registrations: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]
    server_cpu: float  # fraction of one core used by epcscf during the run
    generator_cpu: float  # fraction of one core used by all generator processes together
    core_cpu: float | None = None  # fraction of one core used by a separate core process (--separate-core)
    epcscf_workers: int = 1  # [service] workers
    shares: tuple[int, ...] = ()  # open connections of each worker

    @property
    def rate(self) -> float:
        return self.registrations / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_registration(self) -> float:
        """epcscf CPU (one core = 100 %) spent per completed registration, in ms."""
        return self.server_cpu * 1000 / self.rate if self.rate else float("nan")


@dataclass
class MemoryResult:
    transport: str
    core_transport: str
    connections: int
    wanted: int
    baseline_kib: int
    after_kib: int
    open_seconds: float
    errors: dict[str, int]
    epcscf_workers: int = 1

    @property
    def per_connection_kib(self) -> float:
        return (self.after_kib - self.baseline_kib) / self.connections if self.connections else float("nan")


def settled_rss(epcscf: EpcscfProcess, settle: float, limit: float) -> int:
    """VmRSS once it stops moving: wait ``settle`` s, then until two reads 0.5 s apart differ < 0.5 %."""
    time.sleep(settle)
    deadline = time.monotonic() + limit
    previous = epcscf.rss_kib()
    while True:
        time.sleep(0.5)
        current = epcscf.rss_kib()
        if abs(current - previous) <= previous * 0.005 or time.monotonic() > deadline:
            return current
        previous = current


def measure_transport(
    deployment: Deployment,
    secure: bool,
    sizes: list[int],
    connections: int,
    seconds: float,
    workers: int,
    settle: float,
    separate_core: bool = False,
    epcscf_workers: int = 1,
) -> tuple[list[MemoryResult], ThroughputResult | None]:
    """One fresh epcscf: RSS per idle registered connection for each N in ``sizes``, then
    registrations/s with ``connections`` of those WICs re-registering back to back
    (``seconds`` = 0: no throughput run; ``sizes`` empty: no memory figure)."""
    transport = "wss" if secure else "ws"
    core: EpcscfProcess | None = None
    if separate_core:
        # The same embedded core, but in its own process: the eP-CSCF reaches it as an external core.
        core = EpcscfProcess(deployment, f"{transport}-{epcscf_workers}-core")
        core.wait_listening()
        next_hop = f"sip:127.0.0.1:{core.core_port};transport={deployment.core_transport}"
    epcscf = EpcscfProcess(deployment, f"{transport}-{epcscf_workers}", next_hop if core else None, epcscf_workers)
    memories: list[MemoryResult] = []
    throughput: ThroughputResult | None = None
    try:
        epcscf.wait_listening()
        # Warm-up: the first registration imports and caches things once per process.
        warm_users = deployment.users[-WARM_UP_WICS:]
        with generator(epcscf, secure, warm_users, 1, deployment.cert) as warm:
            warm.open(len(warm_users))
        baseline = settled_rss(epcscf, min(1.0, settle), 3 * settle + 0.5) if sizes else 0
        wanted_sizes = sizes or [connections]
        with generator(epcscf, secure, deployment.users[: max(wanted_sizes)], workers, deployment.cert) as gen:
            opened_total, errors_total, open_seconds, wanted = 0, {}, 0.0, 0
            for size in wanted_sizes:
                opened = gen.open(size - wanted)
                wanted = size
                opened_total += opened["opened"]
                open_seconds += opened["seconds"]
                for key, n in opened["errors"].items():
                    errors_total[key] = errors_total.get(key, 0) + n
                if not sizes:
                    break
                after = settled_rss(epcscf, settle, 3 * settle + 0.5)
                memories.append(
                    MemoryResult(
                        transport, deployment.core_transport, opened_total, size, baseline, after, open_seconds, dict(errors_total),
                        epcscf_workers,
                    )
                )
                print(
                    f"  {transport}: {opened_total}/{size} registered in {open_seconds:.1f} s, "
                    f"RSS {baseline / 1024:.1f} → {after / 1024:.1f} MiB",
                    flush=True,
                )
            if seconds > 0:
                if opened_total == 0:
                    raise RuntimeError(f"no {transport} WIC could register: {errors_total}")
                shares = tuple(epcscf.connection_shares())
                throughput = run_throughput(epcscf, gen, transport, min(connections, opened_total), seconds, core)
                throughput.epcscf_workers, throughput.shares = epcscf_workers, shares
                print(f"  {transport}, {epcscf_workers} worker(s): {throughput.rate:.0f} registrations/s", flush=True)
    finally:
        epcscf.stop()
        if core is not None:
            core.stop()
    return memories, throughput


def run_throughput(
    epcscf: EpcscfProcess, gen: Generator, transport: str, connections: int, seconds: float, core: EpcscfProcess | None
) -> ThroughputResult:
    core_before = core.cpu_seconds() if core else 0.0
    cpu_before, wall_before = epcscf.cpu_seconds(), time.monotonic()
    generator_before = sum(cpu_seconds(p.pid) for p in gen.processes)
    ran = gen.run(seconds, connections)
    wall = time.monotonic() - wall_before
    cpu = (epcscf.cpu_seconds() - cpu_before) / wall
    generator_cpu = (sum(cpu_seconds(p.pid) for p in gen.processes) - generator_before) / wall
    core_cpu = (core.cpu_seconds() - core_before) / wall if core else None
    latencies = ran["latencies"]
    return ThroughputResult(
        transport,
        connections,
        len(latencies),
        ran["seconds"],
        percentile(latencies, 0.50) * 1000,
        percentile(latencies, 0.99) * 1000,
        ran["errors"],
        cpu,
        generator_cpu,
        core_cpu,
    )


# --- report ---


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(throughputs: list[ThroughputResult], memories: list[MemoryResult], quick: bool) -> bool:
    print()
    print("REGISTER throughput (REGISTER → 401 → REGISTER+Authorization → 200, epcscf + embedded core)")
    print(
        f"{'transport':<10}{'workers':>8}{'conns':>7}{'registrations':>15}{'seconds':>9}{'reg/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'epcscf CPU':>12}{'CPU ms/reg':>12}{'gen CPU':>9}{'errors':>8}  floor ≥ {REGISTRATIONS_FLOOR:.0f}/s"
    )
    all_ok = True
    for t in throughputs:
        ok = t.rate >= REGISTRATIONS_FLOOR
        all_ok &= ok
        print(
            f"{t.transport:<10}{t.epcscf_workers:>8}{t.connections:>7}{t.registrations:>15}{t.seconds:>9.1f}{t.rate:>9.0f}"
            f"{t.p50_ms:>9.1f}{t.p99_ms:>9.1f}{t.server_cpu * 100:>11.0f}%{t.cpu_ms_per_registration:>12.2f}{t.generator_cpu * 100:>8.0f}%"
            f"{sum(t.errors.values()):>8}  {verdict(ok)}"
        )
        if t.core_cpu is not None:
            print(f"    (the core ran in its own process: {t.core_cpu * 100:.0f}% CPU, {t.core_cpu * 1000 / t.rate:.2f} ms per registration)")
        if t.shares:
            total = sum(t.shares) or 1
            shares = ", ".join(f"worker {i}: {n} ({n * 100 / total:.0f} %)" for i, n in enumerate(t.shares))
            print(f"    connections per worker: {shares}")
        for key, n in t.errors.items():
            print(f"    {n} × {key}")
    for t in throughputs:
        single = next((s for s in throughputs if s.transport == t.transport and s.epcscf_workers == 1), None)
        if t.epcscf_workers > 1 and single is not None and single.rate:
            print(
                f"  {t.transport}: workers = {t.epcscf_workers} / workers = 1: {t.rate / single.rate:.2f}× registrations/s, "
                f"{t.cpu_ms_per_registration:.2f} vs {single.cpu_ms_per_registration:.2f} ms epcscf CPU per registration"
            )
    print()
    print("Resident memory per idle registered connection (epcscf VmRSS, after − before) / N")
    print(f"{'transport':<10}{'N':>7}{'registered':>12}{'RSS before':>12}{'RSS after':>12}{'per conn':>11}{'open s':>8}  floor")
    for m in memories:
        line = (
            f"{m.transport + ('' if m.epcscf_workers == 1 else f' ×{m.epcscf_workers}'):<10}{m.wanted:>7}{m.connections:>12}{m.baseline_kib / 1024:>8.1f} MiB{m.after_kib / 1024:>8.1f} MiB"
            f"{m.per_connection_kib:>7.1f} KiB{m.open_seconds:>8.1f}"
        )
        if m.transport == "wss":
            ok = m.per_connection_kib <= WSS_KIB_FLOOR and m.connections == m.wanted
            all_ok &= ok
            line += f"  ≤ {WSS_KIB_FLOOR:.0f} KiB: {verdict(ok)}"
        else:
            line += "  (no floor)"
        print(line)
        for key, n in m.errors.items():
            print(f"    {n} × {key}")
    if memories and memories[0].core_transport == "udp":
        print(
            "  note: with the core over UDP the core keeps each completed REGISTER transaction for Timer J = 64*T1 = 32 s\n"
            "  (RFC 3261 §17.2.2), so a registration burst charges that transient state to these figures; the RSS it\n"
            "  grew stays with the process. --core-transport tcp (Timer J = 0) gives the steady per-connection figure."
        )
    print()
    if quick:
        print("--quick smoke run: small N, figures are not representative of the floors.")
    print("All floors met." if all_ok else "Some floors were MISSED (see FAIL above); this is a measurement, exit status 0.")
    return all_ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10-second smoke run: 100 connections")
    parser.add_argument("--seconds", type=float, default=None, help="duration of each throughput run (default 10, quick 1)")
    parser.add_argument("--connections", type=int, default=None, help="WICs registering concurrently (default 200, quick 50)")
    parser.add_argument("--workers", type=int, default=2, help="generator processes (default 2)")
    parser.add_argument("--sizes", default=None, help="connection counts for the memory figure (default 1000,5000; quick 100)")
    parser.add_argument("--settle", type=float, default=None, help="seconds idle before reading RSS (default 3, quick 0.5)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warn", "error"), help="epcscf [log] level")
    parser.add_argument(
        "--core-transport", default="tcp", choices=("udp", "tcp"), help="eP-CSCF ↔ embedded core transport (default tcp, as etc/epcscf.ini)"
    )
    parser.add_argument(
        "--separate-core",
        action="store_true",
        help="run the embedded core in a second epcscf process, reached as an external core (diagnostic: "
        "the eP-CSCF's own CPU and memory without the core's)",
    )
    parser.add_argument("--only", choices=("throughput", "memory"), help="run only one of the two measurements")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (ini, logs)")
    parser.add_argument(
        "--ws-socket-sharing", default="reuseport", choices=("reuseport", "inherit"),
        help="with --epcscf-workers > 1: [service] ws_socket_sharing (SO_REUSEPORT, or one inherited socket)",
    )
    parser.add_argument(
        "--epcscf-workers", default="1",
        help="[service] workers counts to measure in this run, e.g. 1,2 (more than 1: the core runs in its own process)",
    )
    args = parser.parse_args(argv)
    seconds = args.seconds or (1.0 if args.quick else 10.0)
    connections = args.connections or (50 if args.quick else 200)
    sizes = sorted(int(s) for s in (args.sizes or ("100" if args.quick else "1000,5000")).split(","))
    settle = args.settle if args.settle is not None else (0.5 if args.quick else 3.0)
    if max(sizes) * 2 + 1000 > OPEN_FILES:
        parser.error(f"at most {(OPEN_FILES - 1000) // 2} connections")
    limit = raise_open_files_limit(OPEN_FILES)
    if limit < max(sizes) + 200:
        print(f"warning: open files limited to {limit}", file=sys.stderr)

    started = time.monotonic()
    directory = tempfile.mkdtemp(prefix="w2_register-")
    deployment = Deployment(directory, make_users(max(max(sizes), connections) + WARM_UP_WICS), args.log_level, args.core_transport, args.ws_socket_sharing)
    print(
        f"epcscf: twistd -n epcscf, embedded core{' in its own process' if args.separate_core else ''} over {args.core_transport}, {len(deployment.users)} users, log level {args.log_level}; "
        f"generator: {args.workers} processes; files in {directory}",
        flush=True,
    )
    throughputs: list[ThroughputResult] = []
    memories: list[MemoryResult] = []
    counts = [int(n) for n in args.epcscf_workers.split(",")]
    try:
        for secure in (False, True):
            for count in counts:
                memory, throughput = measure_transport(
                    deployment,
                    secure,
                    sizes if args.only in (None, "memory") else [],
                    connections,
                    seconds if args.only in (None, "throughput") else 0.0,
                    args.workers,
                    settle,
                    args.separate_core or max(counts) > 1,
                    count,
                )
                memories.extend(memory)
                throughputs.extend([throughput] if throughput else [])
    finally:
        if args.keep:
            print(f"kept {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    report(throughputs, memories, args.quick)
    load = os.getloadavg()
    print(
        f"(benchmark took {time.monotonic() - started:.0f} s; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
        f"on {os.cpu_count()} CPUs: other work on the machine lowers the throughput figures)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
