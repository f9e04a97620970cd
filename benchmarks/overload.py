"""Benchmark: overload control — whole calls offered at twice the sustainable rate, with and without it.

Usage::

    .venv/bin/python benchmarks/overload.py [--sustainable S] [--seconds 30] [--step-seconds 5]
                                            [--confirm-seconds 15] [--repeats 2] [--precision 0.05]
                                            [--overload "setup_target = 0.5"] [--no-baseline] [--log-level warn]

The calls are those of ``benchmarks/calls.py`` (WebSocket WICs → epcscf + embedded core → sipp UAS:
INVITE, ICE completed, BYE; a refused INVITE is ACKed, RFC 3261 §17.1.1.3).

1. The sustainable rate S (unless ``--sustainable`` gives it), against an epcscf with ``[overload]
   enabled = false``.  **Definition:** S is the highest offered rate at which every one of
   ``--repeats`` steps of ``--confirm-seconds`` each had fewer than 1 % of its calls not completed
   and setup p99 ≤ 1 s (the floor's own latency bound).  Short steps overstate it: a rate above
   what the node carries only builds a queue, and in 5 s the queue is not yet a second long (the
   5 s ladder alone found S 25 % above the rate the same node completed under load).  So a quick
   ladder (×1.25 from 30 calls/s, ``--step-seconds`` each) brackets S, then a bisection with the
   long, repeated steps narrows the bracket to ``--precision``; S is printed with the bracket
   (the lowest rate that failed) and each repeat's completed/s and p99 at S: its spread.
2. 2×S for ``--seconds`` against that epcscf (no overload control: the baseline of the same run;
   ``--no-baseline`` skips it), then against a fresh epcscf with overload control (``[overload]``
   defaults, or ``--overload``).

One table: offered, completed, refused (503 + Retry-After), failed (anything else: timeouts, …),
calls/s completed (over the whole run, tail included) and its share of S, setup p50/p99 of the
completed calls, epcscf CPU and CPU per completed call, the time epcscf's reactor thread was
runnable but waited for a CPU (other processes' load), the generator's own CPU, STUN checks per
completed call both ways, and /proc/loadavg.  Then the CPU arithmetic of the controlled run: what
the refusals cost if an admitted call cost what it cost at S.  Floor (the project's target): with
overload control, completed/s ≥ 90 % of S and setup p99 ≤ 1 s, the excess refused, epcscf still
running.  The exit status is 0 whatever the figures; non-zero only when the benchmark could not
run.  Everything is on 127.0.0.1 and stopped on exit.  Figures depend on what else runs on the
machine: on a shared host run it several times and keep the loadavg with each figure.

With ``EDGE_SAMPLES=FILE EDGE_SAMPLES_ON_SIGNAL=1 PYTHONPATH=benchmarks/cpu_sampler`` the edge
samples its CPU (``benchmarks/cpu_sampler``) during each 2×S run only; FILE ends up with the
controlled run's samples.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _load import raise_open_files_limit  # noqa: E402
from calls import Caller, Result, open_callers, run_load, sipp_pids, start_sipp  # noqa: E402
from w2_register import Deployment, EpcscfProcess, free_port, make_users, percentile  # noqa: E402

FIRST_RATE = 30.0
LADDER_STEP = 1.25
SUSTAINED_SHARE = 0.99  # fewer than 1 % of the offered calls not completed
SUSTAINED_P99 = 1.0
FLOOR_SHARE = 0.9
FLOOR_P99 = 1.0
REFUSED = "CallFailed: SIP/2.0 503"
NOT_SENT = "no idle WIC"


class OverloadDeployment(Deployment):
    """``Deployment`` whose ini also sets the media ports of calls.py and an ``[overload]`` section."""

    overload = ""
    metrics_port = 0

    def write_ini(self, name: str, core_next_hop: str | None = None, workers: int = 1) -> tuple[str, int, int, int]:
        written = super().write_ini(name, core_next_hop, workers)
        with open(written[0]) as handle:
            text = handle.read().replace("port_range = 41000-41999", "port_range = 30000-39999")
        self.metrics_port = free_port()
        with open(written[0], "w") as handle:
            handle.write(text + f"[metrics]\nenabled = true\nport = {self.metrics_port}\n[overload]\n" + self.overload)
        return written


def refusals_by_reason(port: int) -> Counter:
    """``epcscf_overload_refusals_total`` by reason, from the edge's /metrics."""
    found: Counter = Counter()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return found
    for line in text.splitlines():
        match = re.match(r'epcscf_overload_refusals_total\{reason="([^"]+)"\} ([0-9.e+]+)', line)
        if match:
            found[match.group(1)] += int(float(match.group(2)))
    return found


@dataclass
class Row:
    label: str
    result: Result
    cpu_wait: float = float("nan")  # seconds epcscf was runnable but had no CPU
    reasons: Counter = field(default_factory=Counter)  # the edge's refusals by reason
    load: str = ""  # /proc/loadavg (1, 5, 15 min) at the end of the run

    def count(self, prefix: str) -> int:
        return sum(1 for failure in self.result.failures if failure.startswith(prefix))

    @property
    def refused(self) -> int:
        return self.count(REFUSED)

    @property
    def not_sent(self) -> int:
        return self.count(NOT_SENT)

    @property
    def failed(self) -> int:
        return len(self.result.failures) - self.refused - self.not_sent

    @property
    def cpu_per_call(self) -> float:
        """Seconds of epcscf CPU per completed call (refusals and everything else included)."""
        return self.result.cpu / self.result.completed if self.result.completed else float("nan")

    @property
    def sustained(self) -> bool:
        """The definition of a sustained step (module docstring)."""
        step = self.result
        return step.completed >= SUSTAINED_SHARE * step.attempted and self.p(0.99) <= SUSTAINED_P99

    def p(self, share: float) -> float:
        setups = sorted(self.result.setups)
        return percentile(setups, share) if setups else float("nan")

    def summary(self) -> str:
        step = self.result
        return (f"{step.completed}/{step.attempted} completed ({step.rate:.1f}/s), p99 {1000 * self.p(0.99):.0f} ms, "
                f"epcscf CPU {step.cpu:.1f} s ({1000 * self.cpu_per_call:.2f} ms/call), waited for a CPU "
                f"{self.cpu_wait:.1f} s, loadavg {self.load}")


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as handle:
            return " ".join(handle.read().split()[:3])
    except OSError:
        return "?"


def runqueue_wait(pid: int) -> float:
    """Seconds the process's main thread has waited for a CPU while runnable (/proc/PID/schedstat):
    on a shared host, how much of the figures is other people's load rather than ours."""
    try:
        with open(f"/proc/{pid}/schedstat") as handle:
            return int(handle.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return float("nan")


async def measure(epcscf: EpcscfProcess, callers: list[Caller], uas_port: int, rate: float, seconds: float, label: str = "",
                  metrics_port: int = 0, sample: bool = False) -> Row:
    """Offer ``rate`` calls/s for ``seconds``; with ``sample`` (and a CPU sampler armed by signal in
    the edge, see the module docstring) the edge's samples start afresh here."""
    if sample and os.environ.get("EDGE_SAMPLES") and os.environ.get("EDGE_SAMPLES_ON_SIGNAL"):
        os.kill(epcscf.pid, signal.SIGUSR2)
    cpu_before, own_before, wait_before = epcscf.cpu_seconds(), time.process_time(), runqueue_wait(epcscf.pid)
    refused_before = refusals_by_reason(metrics_port) if metrics_port else Counter()
    result = await run_load(callers, uas_port, rate, seconds, True)
    result.cpu = epcscf.cpu_seconds() - cpu_before
    result.generator_cpu = time.process_time() - own_before
    reasons = refusals_by_reason(metrics_port) - refused_before if metrics_port else Counter()
    return Row(label, result, runqueue_wait(epcscf.pid) - wait_before, reasons, loadavg())


@dataclass
class Search:
    """The search for S: its steps as printed lines, the bracket and the repeats at S."""

    lines: list[str] = field(default_factory=list)
    sustainable: float = 0.0
    failed_at: float = float("inf")  # the lowest rate found not sustained with long steps
    at_s: list[Row] = field(default_factory=list)  # the long steps at S


async def find_sustainable(epcscf: EpcscfProcess, callers: list[Caller], uas_port: int, options: argparse.Namespace) -> Search:
    """S as the module docstring defines it: a quick ladder brackets it, long repeated steps decide."""
    search = Search()

    async def step(rate: float, seconds: float, kind: str) -> Row:
        row = await measure(epcscf, callers, uas_port, rate, seconds)
        search.lines.append(f"  {kind} {rate:6.1f}/s for {seconds:g} s: {row.summary()}: "
                            f"{'ok' if row.sustained else 'not sustained'}")
        await asyncio.sleep(2)  # the Accepted-state transactions and ended calls settle a little
        return row

    async def sustained(rate: float) -> list[Row] | None:
        rows = []
        for _ in range(options.repeats):
            row = await step(rate, options.confirm_seconds, "long ")
            if not row.sustained:
                return None
            rows.append(row)
        return rows

    rate, low, high = FIRST_RATE, 0.0, 0.0
    while not high:  # the ladder: short steps, up until one fails
        if (await step(rate, options.step_seconds, "quick")).sustained:
            low, rate = rate, round(rate * LADDER_STEP, 1)
        else:
            high = rate
    low = low or FIRST_RATE / 2
    at_low = await sustained(low)
    while at_low is None and low > 1.0:  # a short step's pass is not a sustained rate: go down
        high, low = low, round(low / LADDER_STEP, 1)
        at_low = await sustained(low)
    while high / low > 1 + options.precision:  # bisection, long repeated steps
        middle = round((low * high) ** 0.5, 1)
        rows = await sustained(middle)
        if rows is None:
            high = middle
        else:
            low, at_low = middle, rows
    search.sustainable, search.failed_at, search.at_s = low, high, at_low or []
    return search


async def session(deployment: OverloadDeployment, name: str, uas_port: int, plan: Any) -> Any:
    """Start an epcscf, register the WICs, run ``plan(epcscf, callers)``, stop it."""
    for attempt in range(3):
        epcscf = EpcscfProcess(deployment, name)
        try:
            epcscf.wait_listening()
            break
        except RuntimeError as error:  # a free port taken by someone else meanwhile: new ports
            epcscf.stop()
            if "Address already in use" not in str(error) or attempt == 2:
                raise
    try:
        callers = await open_callers(epcscf.ws_port, deployment.users)
        try:
            await run_load(callers, uas_port, 20.0, 1.0, True)  # warm-up
            outcome = await plan(epcscf, callers)
            if epcscf.process.poll() is not None:
                raise RuntimeError(f"epcscf exited with {epcscf.process.returncode}: {epcscf.tail()}")
            return outcome
        finally:
            for caller in callers:
                caller.flow.close()
                caller.ice.transport.close()
    finally:
        epcscf.stop()


def print_table(sustainable: float, rows: list[Row]) -> None:
    print(f"sustainable rate S = {sustainable:g} calls/s; offered 2×S = {2 * sustainable:g} calls/s")
    header = (f"{'':24} {'offered':>8} {'completed':>9} {'refused':>8} {'failed':>7} {'not sent':>8} "
              f"{'calls/s':>8} {'of S':>5} {'p50 ms':>7} {'p99 ms':>8} {'epcscf CPU':>10} {'ms/call':>7} "
              f"{'CPU wait':>8} {'gen CPU':>8} {'STUN out/in':>11}  loadavg")
    print(header)
    for row in rows:
        r = row.result
        share = 100 * r.rate / sustainable if sustainable else float("nan")
        checks = (f"{r.checks_sent / r.completed:.1f}/{r.peer_checks / r.completed:.1f}" if r.completed else "-")
        print(f"{row.label:24} {r.attempted:>8} {r.completed:>9} {row.refused:>8} {row.failed:>7} {row.not_sent:>8} "
              f"{r.rate:>8.1f} {share:>4.0f}% {1000 * row.p(0.5):>7.0f} {1000 * row.p(0.99):>8.0f} {r.cpu:>9.1f}s "
              f"{1000 * row.cpu_per_call:>7.2f} {row.cpu_wait:>7.1f}s {r.generator_cpu:>7.1f}s {checks:>11}  {row.load}")


def refusal_arithmetic(search: Search, controlled: Row) -> str | None:
    """What a refusal cost in the controlled run if an admitted call cost what it cost at S."""
    if not search.at_s or not controlled.refused:
        return None
    per_call = sum(row.result.cpu for row in search.at_s) / sum(row.result.completed for row in search.at_s)
    r = controlled.result
    left = r.cpu - r.completed * per_call
    text = (f"CPU arithmetic: at S a call cost {1000 * per_call:.2f} ms; under control {1000 * controlled.cpu_per_call:.2f} ms "
            f"per completed call, its {controlled.refused} refusals included")
    if left <= 0:
        return text + " (less than at S: a call's CPU moves with the load more than refusals cost)"
    return (text + f"; {r.completed} calls at the price of S leave {left:.1f} s for the refusals = "
            f"{1000 * left / controlled.refused:.3f} ms each, if admitted calls cost what they cost at S")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sustainable", type=float, help="skip the search: S in calls/s")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each 2×S run")
    parser.add_argument("--step-seconds", type=float, default=5.0, help="length of each step of the quick ladder")
    parser.add_argument("--confirm-seconds", type=float, default=15.0, help="length of each long step that decides S")
    parser.add_argument("--repeats", type=int, default=2, help="long steps per rate; all must pass")
    parser.add_argument("--precision", type=float, default=0.05, help="bisect until the bracket is this narrow (share)")
    parser.add_argument("--wics", type=int, help="WebSocket WICs (default: 8 s worth of calls at 2×S (S = 50 while unknown), at least 300)")
    parser.add_argument("--overload", default="", help="[overload] keys for the controlled run, e.g. 'setup_target = 0.5, min_calls_in_setup = 30'")
    parser.add_argument("--no-baseline", action="store_true", help="skip the 2×S run without overload control")
    parser.add_argument("--log-level", default="warn")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (ini files, epcscf logs)")
    options = parser.parse_args(argv)
    raise_open_files_limit(40000)
    directory = tempfile.mkdtemp(prefix="epcscf-overload-bench-")
    sipp, uas_port = None, 0
    started_load = loadavg()
    try:
        sipp, uas_port = start_sipp(directory)
        time.sleep(0.5)

        async def scenario() -> tuple[Search, list[Row]]:
            search = Search(sustainable=options.sustainable or 0.0)
            wics = options.wics or max(300, int(16 * (search.sustainable or 50)))
            deployment = OverloadDeployment(directory, make_users(wics), options.log_level)
            deployment.overload = "enabled = false\n"
            rows: list[Row] = []

            async def uncontrolled(epcscf: EpcscfProcess, callers: list[Caller]) -> None:
                nonlocal search
                if not search.sustainable:
                    search = await find_sustainable(epcscf, callers, uas_port, options)
                    await asyncio.sleep(3)  # let the search's last calls end
                if not options.no_baseline:
                    rows.append(await measure(epcscf, callers, uas_port, 2 * search.sustainable, options.seconds,
                                              "without overload control", sample=True))

            async def controlled(epcscf: EpcscfProcess, callers: list[Caller]) -> None:
                rows.append(await measure(epcscf, callers, uas_port, 2 * search.sustainable, options.seconds,
                                          "with overload control", deployment.metrics_port, sample=True))

            await session(deployment, "uncontrolled", uas_port, uncontrolled)
            deployment.overload = "".join(f"{item.strip()}\n" for item in options.overload.split(",") if item.strip())
            await session(deployment, "controlled", uas_port, controlled)
            return search, rows

        search, rows = asyncio.run(scenario())
    finally:
        for pid in sipp_pids(uas_port) if uas_port else []:
            os.kill(pid, signal.SIGKILL)
        if sipp is not None and sipp.poll() is None:
            sipp.kill()
    sustainable = search.sustainable
    print(f"loadavg at start {started_load}, at end {loadavg()}")
    if search.lines:
        print("search for the sustainable rate (no overload control):")
        print("\n".join(search.lines))
        spread = ", ".join(f"{row.result.rate:.1f}/s p99 {1000 * row.p(0.99):.0f} ms" for row in search.at_s)
        print(f"S = {sustainable:g} calls/s: sustained in all {len(search.at_s)} long steps ({spread}); "
              f"the lowest rate not sustained: {search.failed_at:g}/s")
    print_table(sustainable, rows)
    controlled = rows[-1]
    share = controlled.result.rate / sustainable if sustainable else 0.0
    p99 = controlled.p(0.99)
    print(f"floor with overload control: completed {controlled.result.rate:.1f}/s = {100 * share:.0f} % of S "
          f"[{'PASS' if share >= FLOOR_SHARE else 'FAIL'} >= {100 * FLOOR_SHARE:g} %], p99 {1000 * p99:.0f} ms "
          f"[{'PASS' if p99 <= FLOOR_P99 else 'FAIL'} <= {1000 * FLOOR_P99:g} ms], refused {controlled.refused}")
    arithmetic = refusal_arithmetic(search, controlled)
    if arithmetic:
        print(arithmetic)
    for row in rows:
        answers = sorted(row.result.answers)
        if answers:
            print(f"  {row.label}: INVITE → 200 p50 {1000 * percentile(answers, 0.5):.0f} ms, "
                  f"p99 {1000 * percentile(answers, 0.99):.0f} ms (the rest of the setup: ACK and ICE)")
    for row in rows:
        if row.reasons:
            print(f"  {row.label}: refused by " + ", ".join(f"{reason} {count}" for reason, count in row.reasons.most_common()))
    for row in rows:
        other = Counter(f for f in row.result.failures if not f.startswith((REFUSED, NOT_SENT)))
        for text, count in other.most_common(3):
            print(f"  {row.label}: {count} × {text}")
    if options.keep:
        print(f"kept {directory}")
    else:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
