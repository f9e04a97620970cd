"""Benchmark: whole calls per second, WIC (WebSocket + ICE) → epcscf → core → sipp UAS, ICE completed on every call.

Usage::

    .venv/bin/python benchmarks/calls.py [--rate 100] [--seconds 30] [--wics 60] [--ice-mode full|lite]
                                         [--generator node|python] [--core embedded|kamailio|sipp]
                                         [--epcscf-workers 1,2] [--hold 0] [--quick] [--log-level warn]
                                         [--counts] [--edge-tree /work/main]

epcscf runs as its own process (``twistd -n epcscf`` on a generated ini, the same
``Deployment``/``EpcscfProcess`` as ``benchmarks/w2_register.py``); a sipp UAS
(``tests/sipp/calls_uas_answer.xml``: 180, 200 with plain RTP/AVP SDP, ACK, BYE) is the IMS
party.  ``--core`` (``benchmarks/_call_cores.py``) is what the eP-CSCF forwards to: its embedded
core (default; challenges the initial registrations), the interop tests' Kamailio (registrar +
stateful proxy, no authentication, its own processes) or one sipp that is registrar and UAS.

The load generator (``--generator``): ``node`` (default) is ``benchmarks/wic_calls.mjs``, npm
``ws``, a process of its own; ``python`` is the asyncio one below, in this process, kept for
comparison.  Both run ``--wics`` registered WebSocket WICs, each with a UDP socket playing its
ICE agent, and place the same calls.

One call, as the generator does it (open loop: a call starts every 1/``--rate`` s on a free WIC):

1. INVITE with a Chrome-like WebRTC offer (ICE credentials, a host candidate on the WIC's UDP
   socket, a fingerprint, actpass) → 100/180/200 with our WebRTC answer → ACK;
2. ICE: the WIC sends STUN Binding checks with USE-CANDIDATE (RFC 8445 §7.2.2, aggressive
   nomination as a controlling full agent) to the eP-CSCF's candidate and answers the
   eP-CSCF's own checks (full mode); the call's ICE is *completed* when the WIC's nominating
   check got its success response and, in full mode, the eP-CSCF's check was answered;
3. ``--hold`` seconds (0 by default), then BYE → 200.

The Node generator also ACKs every retransmitted 2xx (RFC 3261 §13.2.2.4: the first ACK was lost
on the core's UDP side) and answers requests from the edge (a BYE from the core side) with 200;
the Python one does neither.

Measured: calls/s completed, failures by step (any step wrong or slower than 10 s), setup time
(INVITE sent → ICE completed) and INVITE → 200 p50/p99, and the CPU per call of every process:
epcscf (split user/system), the core, the UAS, the generator; UDP datagrams lost on full socket
receive buffers (run it in a private network namespace: the counters are then this run's).
DTLS is not run by the generator: the eP-CSCF's ClientHello goes unanswered until the BYE (its
cost per call is included).

``--epcscf-workers N`` (N > 1) runs epcscf with ``[service] workers = N`` and an embedded core in
its own process (as ``--separate-core``); the WICs per worker are read from the supervisor's
``/metrics`` and epcscf CPU is the supervisor's and the workers' together.  A list (``1,2``) runs
one deployment after the other in the same invocation and prints the ratio of calls/s.

``--counts`` prints, per worker, what the edge received, sent, absorbed and sent on unparsed in the
timed phase, its STUN, its collector passes with their pauses, its event loop's turns and lag with the longest
turns by name (``benchmarks/edge_counts``; ``EDGE_COUNTS_TYPES=1``: the young survivors by type), and sipp's message counts; the
Node generator always prints its retransmissions and event-loop delay.  ``--edge-tree DIR`` runs another
checkout's edge with this harness (paired runs where only the edge differs).

Floors (the project's targets): ≥ 100 calls/s sustained for 30 s, < 1 % failures, p99 setup < 250 ms.
The exit status is 0 whatever the figures (a measurement, not a test); non-zero only when the
benchmark could not run.  Everything is on 127.0.0.1 and stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
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

import _call_cores  # noqa: E402
from _load import raise_open_files_limit  # noqa: E402
# The Python generator, also imported from here by overload.py, soak.py and idle_call.py.
from _py_calls import (  # noqa: E402,F401
    NO_IDLE_WIC, STEP_TIMEOUT, CallFailed, Caller, IceSocket, Result, ack_for_failure, open_callers, run_load,
)
from w2_register import DOMAIN, Deployment, EpcscfProcess, make_users, percentile  # noqa: E402

RATE_FLOOR = 100.0
FAILURE_FLOOR = 0.01
P99_FLOOR = 0.250
SCENARIO = _call_cores.UAS_SCENARIO
NODE_GENERATOR = os.path.join(HERE, "wic_calls.mjs")


def start_sipp(directory: str) -> tuple[subprocess.Popen | None, int]:
    """The sipp UAS in the background (for benchmarks/overload.py); its port."""
    return None, _call_cores.start_sipp(directory, SCENARIO)


def stop_sipp(sipp: subprocess.Popen | None, uas_port: int) -> None:
    """Stop the sipp UAS of ``start_sipp`` (for benchmarks/refusal_cost.py)."""
    if uas_port:
        _call_cores.stop_sipp(uas_port)
    if sipp is not None and sipp.poll() is None:
        sipp.kill()


sipp_pids = _call_cores.sipp_pids
cpu_of = _call_cores.cpu_of


def user_system(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of one process (/proc/<pid>/stat utime, stime)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields_ = stat.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields_[11]) / tick, int(fields_[12]) / tick


def process_tree_user_system(epcscf: EpcscfProcess) -> tuple[float, float]:
    """(user, system) CPU seconds of epcscf: the process, and its workers when it has any."""
    pairs = [user_system(pid) for pid in epcscf.pids()]
    return sum(user for user, _ in pairs), sum(system for _, system in pairs)


# --- one run: a deployment, a generator, the figures -------------------------------------------


@dataclass
class Figures:
    """What one run printed, whichever generator placed the calls (times in seconds)."""

    workers: int
    offered: int = 0
    completed: int = 0
    elapsed: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)
    failure_calls: dict[str, list[str]] = field(default_factory=dict)  # a few Call-IDs of each failure (node)
    setup_p50: float = float("nan")
    setup_p99: float = float("nan")
    answer_p50: float = float("nan")  # INVITE → 200
    answer_p99: float = float("nan")
    epcscf_cpu: float = 0.0  # supervisor and workers
    user: float = 0.0  # of epcscf_cpu: in epcscf itself
    system: float = 0.0  # of epcscf_cpu: in the kernel (sockets; on loopback, delivery to the peer too)
    generator_cpu: float = 0.0
    generator_user: float = 0.0  # of generator_cpu, outside the kernel
    core_cpu: float = 0.0
    uas_cpu: float = 0.0
    rtpengine_cpu: float = 0.0
    shares: list[int] = field(default_factory=list)  # WICs per worker
    epcscf_waited: float = 0.0  # epcscf's main threads runnable but waiting for a CPU (another's load)
    udp_drops: int = 0  # datagrams dropped on a full socket receive buffer, in this network namespace
    udp_drops_by_process: dict[str, int] = field(default_factory=dict)  # of those, by receiving process
    loadavg: str = ""
    generator_tally: dict[str, int] = field(default_factory=dict)  # node: its retransmissions and checks
    generator_lag: dict[str, float] = field(default_factory=dict)  # node: its event loop's delay, ms
    edge_counts: list[dict[str, float]] = field(default_factory=list)  # --counts: per worker, timed phase
    sipp_counts: dict[str, int] = field(default_factory=dict)  # every sipp of the run, timed phase (±1 s)

    @property
    def rate(self) -> float:
        return self.completed / self.elapsed if self.elapsed else 0.0

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


@dataclass
class Counters:
    """CPU seconds of every process of a run, read before and after the timed phase."""

    epcscf: EpcscfProcess
    ims: _call_cores.Ims
    rtpengine: Any
    generator_pid: int = 0
    counts_directory: str = ""  # --counts: where the edge's processes write theirs (EDGE_COUNTS)
    sipp_directory: str = ""  # where the sipps write their -trace_counts files

    def worker_pids(self) -> list[int]:
        pids = self.epcscf.pids()
        return pids[1:] if len(pids) > 1 else pids

    def edge_counts(self) -> list[dict[str, float]]:
        """Each worker's counts so far (benchmarks/edge_counts): asked for by SIGUSR1, read from its file."""
        if not self.counts_directory:
            return []
        pids = self.worker_pids()
        for pid in pids:
            try:
                os.remove(os.path.join(self.counts_directory, f"{pid}.json"))
            except FileNotFoundError:
                pass
            os.kill(pid, signal.SIGUSR1)
        found = []
        for pid in pids:
            path = os.path.join(self.counts_directory, f"{pid}.json")
            deadline = time.monotonic() + 10
            while not os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.02)
            with open(path) as handle:
                found.append(json.load(handle))
        return found

    def snapshot(self) -> tuple[list[dict[str, float]], dict[str, int]]:
        return self.edge_counts(), _call_cores.sipp_counts(self.sipp_directory) if self.sipp_directory else {}

    def fill_counts(self, figures: Figures, before: tuple[list[dict[str, float]], dict[str, int]]) -> None:
        time.sleep(1.1)  # sipp writes its counts once a second
        edge_after, sipp_after = self.snapshot()
        edge_before, sipp_before = before
        figures.edge_counts = [{key: value if key.endswith("(max)") else value - old.get(key, 0)
                                for key, value in new.items() if value != old.get(key, 0)}
                               for old, new in zip(edge_before, edge_after)]
        figures.sipp_counts = {key: value - sipp_before.get(key, 0) for key, value in sipp_after.items()
                               if value != sipp_before.get(key, 0)}

    def read(self) -> tuple[float, ...]:
        user, system = process_tree_user_system(self.epcscf)
        rtpengine = cpu_of(self.rtpengine.process.pid) if self.rtpengine is not None else 0.0
        waited = _call_cores.runqueue_wait(self.epcscf.pids())
        return user, system, self.ims.core_cpu(), self.ims.uas_cpu(), rtpengine, waited, udp_receive_drops(), *self.drops().values()

    def drops(self) -> dict[str, int]:
        return _call_cores.udp_drops_by_process({
            "epcscf": self.epcscf.pids(), "core": self.ims.core_pids(), "UAS": self.ims.uas_pids(),
            "generator": [self.generator_pid], "rtpengine": [self.rtpengine.process.pid] if self.rtpengine else []})

    def fill(self, figures: Figures, before: tuple[float, ...]) -> None:
        after = self.read()
        user, system, core, uas, rtpengine, waited, drops, *by_process = (a - b for a, b in zip(after, before))
        figures.epcscf_waited = waited
        figures.user, figures.system, figures.epcscf_cpu = user, system, user + system
        figures.core_cpu, figures.uas_cpu, figures.rtpengine_cpu = core, uas, rtpengine
        figures.udp_drops = int(drops)
        figures.udp_drops_by_process = {name: int(n) for name, n in zip(self.drops(), by_process) if n}
        closed = figures.udp_drops - sum(figures.udp_drops_by_process.values())
        if closed > 0:  # on sockets gone by now: the edge's per-call media sockets, mostly
            figures.udp_drops_by_process["closed sockets"] = closed
        figures.loadavg = " ".join(open("/proc/loadavg").read().split()[:3])


def udp_receive_drops() -> int:
    """Udp RcvbufErrors of /proc/net/snmp: every UDP socket of this network namespace (with
    ``unshare -n``, of this run only) — SIP lost on loopback and then retransmitted, or not."""
    with open("/proc/net/snmp") as snmp:
        names, values = [line.split() for line in snmp if line.startswith("Udp:")][:2]
    return int(values[names.index("RcvbufErrors")])


def run_python(options: argparse.Namespace, users: list[tuple[str, str]], ws_port: int, target: str,
               counters: Counters, figures: Figures) -> None:
    """The asyncio generator of this module, in this process."""
    full_ice = options.ice_mode == "full"
    counters.generator_pid = os.getpid()

    async def scenario() -> None:
        callers = await open_callers(ws_port, users)
        figures.shares = counters.epcscf.connection_shares()
        try:
            await run_load(callers, target, min(options.rate, 20.0), 1.0, full_ice, options.hold)  # warm-up
            before, own_before, user_before = counters.read(), time.process_time(), os.times().user
            result = await run_load(callers, target, options.rate, options.seconds, full_ice, options.hold)
            figures.generator_cpu = time.process_time() - own_before
            figures.generator_user = os.times().user - user_before
            counters.fill(figures, before)
        finally:
            for caller in callers:
                caller.flow.close()
                caller.ice.transport.close()
        figures.offered, figures.completed, figures.elapsed = result.attempted, result.completed, result.elapsed
        for failure in result.failures:
            figures.failures[failure] = figures.failures.get(failure, 0) + 1
        setups, answers = sorted(result.setups), sorted(result.answers)
        if setups:
            figures.setup_p50, figures.setup_p99 = percentile(setups, 0.5), percentile(setups, 0.99)
            figures.answer_p50, figures.answer_p99 = percentile(answers, 0.5), percentile(answers, 0.99)

    asyncio.run(scenario())


def run_node(options: argparse.Namespace, ws_port: int, target: str, counters: Counters, figures: Figures) -> None:
    """``benchmarks/wic_calls.mjs``: registers, warms up, then starts the timed phase on our "go"."""
    if shutil.which("node") is None:
        raise RuntimeError("node is not installed (bin/setup installs it)")
    profile = ["--cpu-prof", "--cpu-prof-dir", os.path.abspath(options.generator_profile)] if options.generator_profile else []
    command = ["node", *profile, NODE_GENERATOR, "--url", f"ws://127.0.0.1:{ws_port}", "--target", target,
               "--wics", str(options.wics), "--rate", str(options.rate), "--seconds", str(options.seconds),
               "--hold", str(options.hold), "--ice", options.ice_mode, "--domain", DOMAIN,
               "--timeout", str(STEP_TIMEOUT), "--wait", "1"]
    generator = subprocess.Popen(command, cwd=TOP, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 preexec_fn=lambda: raise_open_files_limit(20000))
    counters.generator_pid = generator.pid
    assert generator.stdout is not None and generator.stdin is not None
    try:
        ready = json.loads(generator.stdout.readline() or "{}")
        if ready.get("ready") != options.wics:
            raise RuntimeError(f"the Node generator did not get ready: {ready!r} (exit {generator.poll()})")
        figures.shares = counters.epcscf.connection_shares()
        counts_before = counters.snapshot()
        before = counters.read()
        generator.stdin.write("go\n")
        generator.stdin.flush()
        result = json.loads(generator.stdout.readline() or "{}")
        counters.fill(figures, before)
        counters.fill_counts(figures, counts_before)
        if "completed" not in result:
            raise RuntimeError(f"the Node generator ended without a result (exit {generator.wait(5)})")
    finally:
        try:
            generator.wait(10 if generator.poll() is None and options.generator_profile else 1)  # it writes the profile on exit
        except subprocess.TimeoutExpired:
            generator.kill()
            generator.wait()
    figures.offered, figures.completed, figures.elapsed = result["offered"], result["completed"], result["seconds"]
    figures.failures, figures.failure_calls = result["failures"], result.get("failure_calls", {})
    ms = lambda key: (result.get(key) or float("nan")) / 1000  # noqa: E731  (JSON has null for NaN)
    figures.setup_p50, figures.setup_p99 = ms("setup_p50_ms"), ms("setup_p99_ms")
    figures.answer_p50, figures.answer_p99 = ms("answer_p50_ms"), ms("answer_p99_ms")
    figures.generator_cpu, figures.generator_user = result["cpu_s"], result["cpu_user_s"]
    figures.generator_tally, figures.generator_lag = result.get("tally", {}), result.get("loop_lag", {})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--wics", type=int, default=60)
    parser.add_argument("--hold", type=float, default=0.0, help="seconds between ICE completed and the BYE")
    parser.add_argument("--ice-mode", choices=("full", "lite"), default="full")
    parser.add_argument("--generator", choices=("node", "python"), default="node",
                        help="node: benchmarks/wic_calls.mjs (cheap); python: this process (asyncio)")
    parser.add_argument("--generator-profile", metavar="DIR",
                        help="node --cpu-prof: the Node generator's CPU profile (.cpuprofile, for Chrome DevTools) in DIR")
    parser.add_argument("--core", choices=("embedded", "kamailio", "sipp"), default="embedded",
                        help="the core the eP-CSCF forwards to (see benchmarks/_call_cores.py)")
    parser.add_argument("--engine", choices=("builtin", "rtpengine", "both"), default="builtin",
                        help="[media] engine; both: builtin then rtpengine in one run (rtpengine-daemon, userspace)")
    parser.add_argument("--quick", action="store_true", help="5 s at the requested rate")
    parser.add_argument("--log-level", default="warn")
    parser.add_argument("--profile", metavar="FILE", help="run epcscf under cProfile, stats saved to FILE")
    parser.add_argument("--separate-core", action="store_true",
                        help="run the embedded core in a second epcscf process (the eP-CSCF's own cost without the core's)")
    parser.add_argument("--edge-tree", metavar="DIR",
                        help="run the eP-CSCF of another checkout (its .venv), e.g. /work/main, with this "
                             "benchmark, generator and core: a paired comparison where only the edge differs")
    parser.add_argument("--counts", action="store_true",
                        help="count each worker's SIP, STUN and collector passes in the timed phase (benchmarks/edge_counts; "
                             "costs the edge a little CPU per message)")
    parser.add_argument("--epcscf-workers", default="1",
                        help="[service] workers of the eP-CSCF, or a list (1,2) for one deployment each in this run; "
                             "more than 1 with the embedded core: the core runs in its own process")
    options = parser.parse_args(argv)
    try:
        workers_list = [int(n) for n in options.epcscf_workers.split(",")]
    except ValueError:
        parser.error("--epcscf-workers: a number or a comma-separated list of numbers")
    if options.profile:
        real_popen = subprocess.Popen

        def profiled(args: list[str], **kwargs: Any) -> subprocess.Popen:
            if "epcscf" in args and not any(str(arg).endswith("core.ini") for arg in args):  # the edge only
                at = args.index("epcscf")
                args = args[:at] + [f"--profile={os.path.abspath(options.profile)}", "--profiler=cprofile", "--savestats"] + args[at:]
            return real_popen(args, **kwargs)

        subprocess.Popen = profiled  # type: ignore[misc]
    if options.quick:
        options.seconds = 5.0
    if options.edge_tree:
        import w2_register

        tree = os.path.abspath(options.edge_tree)
        if not os.access(os.path.join(tree, ".venv", "bin", "twistd"), os.X_OK):
            parser.error(f"--edge-tree: no {tree}/.venv/bin/twistd (run bin/setup there)")
        w2_register.TOP = tree  # EpcscfProcess starts twistd from there, with that tree on PYTHONPATH
    raise_open_files_limit(20000)
    engines = ("builtin", "rtpengine") if options.engine == "both" else (options.engine,)
    for engine in engines:
        runs = [run_engine(options, engine, workers) for workers in workers_list]
        if len(runs) > 1 and runs[0].rate:
            print(f"calls/s with {runs[-1].workers} workers ÷ with {runs[0].workers}: {runs[-1].rate / runs[0].rate:.2f}×")
    return 0


def run_engine(options: argparse.Namespace, engine: str, workers: int) -> Figures:
    """One deployment and one load run with ``[media] engine = engine`` and ``workers``; prints its figures."""
    rtpengine = None
    if engine == "rtpengine":
        from tests.support.rtpengine import start_rtpengine

        rtpengine = start_rtpengine(30000, 39999)
    directory = tempfile.mkdtemp(prefix="epcscf-calls-bench-")
    users = make_users(options.wics)
    deployment = Deployment(directory, users, options.log_level)
    original = deployment.write_ini

    def write_ini(name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        written = original(name, *args, **kwargs)
        path = written[0]
        with open(path) as handle:
            text = handle.read()
        media = f"port_range = 30000-39999\nice_mode = {options.ice_mode}"
        if rtpengine is not None:
            media += "\nengine = rtpengine"
        text = text.replace("port_range = 41000-41999", media) + "[overload]\nenabled = false\n"
        if rtpengine is not None:
            text += f"[rtpengine]\nnodes = {rtpengine.node}\n"
        with open(path, "w") as handle:
            handle.write(text)
        return written

    deployment.write_ini = write_ini  # type: ignore[method-assign]
    separate = options.separate_core or workers > 1
    figures = Figures(workers)
    counts_directory = os.path.join(directory, "edge-counts") if options.counts else ""
    if counts_directory:
        os.mkdir(counts_directory)
        os.environ["EDGE_COUNTS"] = counts_directory
        os.environ["PYTHONPATH"] = os.path.join(HERE, "edge_counts") + os.pathsep + os.environ.get("PYTHONPATH", "")
    ims = _call_cores.start_ims(options.core, separate, deployment, directory)
    epcscf: EpcscfProcess | None = None
    try:
        epcscf = EpcscfProcess(deployment, "calls", ims.next_hop, workers)
        epcscf.wait_listening()
        time.sleep(0.5)
        counters = Counters(epcscf, ims, rtpengine, counts_directory=counts_directory, sipp_directory=directory)
        if options.generator == "node":
            run_node(options, epcscf.ws_port, ims.target, counters, figures)
        else:
            run_python(options, users, epcscf.ws_port, ims.target, counters, figures)
    finally:
        if epcscf is not None:
            epcscf.stop()
        ims.stop()
        if rtpengine is not None:
            rtpengine.stop()
    report(options, engine, ims, figures)
    if figures.failed and figures.failed != figures.failures.get(NO_IDLE_WIC):
        print(f"    logs kept for the failures: {directory} (epcscf: calls.log, sipp: sipp_errors_*.log)")
    else:
        shutil.rmtree(directory, ignore_errors=True)
    return figures


def histogram_order(key: str) -> tuple[str, float, str]:
    """Sort key of an edge count: a histogram's buckets ("… <=20 ms", "… >500 ms") by their bound."""
    for marker, offset in (("<=", 0.0), (">", 0.5)):
        head, found, tail = key.rpartition(f" {marker}")
        if found and tail.endswith(" ms"):
            try:
                return head, float(tail[:-3]) + offset, ""
            except ValueError:
                break
    return key, 0.0, key


def report(options: argparse.Namespace, engine: str, ims: _call_cores.Ims, f: Figures) -> None:
    failure_ratio = f.failed / f.offered if f.offered else 1.0
    if options.edge_tree:
        print(f"eP-CSCF from {os.path.abspath(options.edge_tree)}")
    print(f"calls ([media] engine = {engine}, ICE {options.ice_mode}, {ims.described}, generator {options.generator}): "
          f"target {options.rate:g}/s for {options.seconds:g} s, {options.wics} WICs, hold {options.hold:g} s")
    if f.shares:
        print(f"  {f.workers} workers; WICs per worker: {f.shares}; epcscf CPU below is the supervisor's and the workers' together")
    print(f"  completed {f.completed}/{f.offered} in {f.elapsed:.1f} s = {f.rate:.1f} calls/s "
          f"[{'PASS' if f.rate >= RATE_FLOOR else 'FAIL'} >= {RATE_FLOOR:g}]")
    print(f"  failures {f.failed} ({100 * failure_ratio:.2f} %) "
          f"[{'PASS' if failure_ratio < FAILURE_FLOOR else 'FAIL'} < {100 * FAILURE_FLOOR:g} %]")
    print(f"  setup (INVITE → ICE completed) p50 {1000 * f.setup_p50:.1f} ms, p99 {1000 * f.setup_p99:.1f} ms "
          f"[{'PASS' if f.setup_p99 < P99_FLOOR else 'FAIL'} p99 < {1000 * P99_FLOOR:g} ms]; "
          f"INVITE → 200 p50 {1000 * f.answer_p50:.1f} ms, p99 {1000 * f.answer_p99:.1f} ms")
    if f.completed:
        per_call = lambda seconds: f"{seconds:.2f} s = {1000 * seconds / f.completed:.2f} ms/call"  # noqa: E731
        print(f"  CPU: epcscf {per_call(f.epcscf_cpu)} (user {1000 * f.user / f.completed:.2f} + system "
              f"{1000 * f.system / f.completed:.2f}); core {per_call(f.core_cpu) if ims.kind != 'embedded' or ims.next_hop else 'in epcscf'}; "
              f"UAS sipp {per_call(f.uas_cpu) if ims.kind != 'sipp' else 'is the core'}; generator {per_call(f.generator_cpu)} (user {1000 * f.generator_user / f.completed:.2f})"
              + (f"; rtpengine {per_call(f.rtpengine_cpu)}" if engine == "rtpengine" else ""))
        print(f"    epcscf waited {f.epcscf_waited:.2f} s for a CPU while runnable; loadavg {f.loadavg}; UDP datagrams dropped on full receive buffers: {f.udp_drops} "
              f"{f.udp_drops_by_process or ''}")
    if f.generator_tally:
        lag = ", ".join(f"{key} {value:.1f}" for key, value in f.generator_lag.items())
        print(f"  generator: {json.dumps(f.generator_tally)}; its event loop's delay (ms): {lag}")
    if f.sipp_counts:
        print(f"  sipp (UAS/core) message counts, timed phase ±1 s: {json.dumps(f.sipp_counts)}")
    for index, counts in enumerate(f.edge_counts):
        print(f"  edge worker {index} counts:")
        long_turns = sorted(((value, key) for key, value in counts.items() if key.startswith("long turn")), reverse=True)
        for key, value in sorted(counts.items(), key=lambda item: histogram_order(item[0])):
            if key.startswith("long turn"):
                continue
            per_call = f.completed and not key.startswith(("gc", "loop"))
            print(f"    {key}: {value:g}" + (f" ({value / f.completed:.3f}/call)" if per_call else ""))
        for value, key in long_turns[:12]:
            print(f"    {value:7.1f} ms  {key.split(': ', 1)[1]}")
    for text, count in sorted(f.failures.items(), key=lambda item: -item[1])[:6]:
        examples = f.failure_calls.get(text)
        print(f"    {count} × {text}" + (f" (e.g. Call-ID {', '.join(examples)})" if examples else ""))


if __name__ == "__main__":
    sys.exit(main())
