"""Benchmark: overload control — whole calls offered at twice the sustainable rate, with and without it.

Usage::

    .venv/bin/python benchmarks/overload.py [--sustainable S] [--seconds 20] [--step-seconds 6]
                                            [--overload "lag_high = 0.2, lag_low = 0.05"] [--log-level warn]

The calls are those of ``benchmarks/calls.py`` (WebSocket WICs → epcscf + embedded core → sipp UAS:
INVITE, ICE completed, BYE; a refused INVITE is ACKed, RFC 3261 §17.1.1.3).

1. The sustainable rate S (unless ``--sustainable`` gives it): a ladder of offered rates (×1.25 from
   30 calls/s, ``--step-seconds`` each) against an epcscf with ``[overload] enabled = false``; S is the
   highest rate at which ≥ 97 % of the offered calls completed with setup p99 ≤ 1 s (the floor's
   own latency bound: "sustainable" is what the node carries with the latency asked of it).
2. 2×S for ``--seconds`` against that epcscf (no overload control: the baseline of the same run),
   then against a fresh epcscf with overload control (``[overload]`` defaults, or ``--overload``).

One table: offered, completed, refused (503 + Retry-After), failed (anything else: timeouts, …),
calls/s completed (over the whole run, tail included), setup p50/p99 of the completed calls, epcscf
CPU, the time epcscf's reactor thread was runnable but waited for a CPU (other processes' load:
when it is comparable to epcscf's CPU the figures say more about the host than about epcscf), and
the generator's own CPU.  Floor (the project's target): with overload control, completed/s ≥ 90 % of S
and setup p99 ≤ 1 s, the excess refused, epcscf still running.  The exit status is 0 whatever the
figures; non-zero only when the benchmark could not run.  Everything is on 127.0.0.1 and stopped
on exit.  Figures depend on what else runs on the machine: on a shared host run it twice.
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
SUSTAINED_SHARE = 0.97
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

    def p(self, share: float) -> float:
        setups = sorted(self.result.setups)
        return percentile(setups, share) if setups else float("nan")


def runqueue_wait(pid: int) -> float:
    """Seconds the process's main thread has waited for a CPU while runnable (/proc/PID/schedstat):
    on a shared host, how much of the figures is other people's load rather than ours."""
    try:
        with open(f"/proc/{pid}/schedstat") as handle:
            return int(handle.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return float("nan")


async def measure(epcscf: EpcscfProcess, callers: list[Caller], uas_port: int, rate: float, seconds: float, label: str = "",
                  metrics_port: int = 0) -> Row:
    cpu_before, own_before, wait_before = epcscf.cpu_seconds(), time.process_time(), runqueue_wait(epcscf.pid)
    refused_before = refusals_by_reason(metrics_port) if metrics_port else Counter()
    result = await run_load(callers, uas_port, rate, seconds, True)
    result.cpu = epcscf.cpu_seconds() - cpu_before
    result.generator_cpu = time.process_time() - own_before
    reasons = refusals_by_reason(metrics_port) - refused_before if metrics_port else Counter()
    return Row(label, result, runqueue_wait(epcscf.pid) - wait_before, reasons)


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
              f"{'calls/s':>8} {'p50 ms':>7} {'p99 ms':>8} {'epcscf CPU':>10} {'CPU wait':>8} {'gen CPU':>8}")
    print(header)
    for row in rows:
        r = row.result
        print(f"{row.label:24} {r.attempted:>8} {r.completed:>9} {row.refused:>8} {row.failed:>7} {row.not_sent:>8} "
              f"{r.rate:>8.1f} {1000 * row.p(0.5):>7.0f} {1000 * row.p(0.99):>8.0f} {r.cpu:>9.1f}s {row.cpu_wait:>7.1f}s "
              f"{r.generator_cpu:>7.1f}s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sustainable", type=float, help="skip the search: S in calls/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each 2×S run")
    parser.add_argument("--step-seconds", type=float, default=6.0, help="length of each step of the search for S")
    parser.add_argument("--wics", type=int, help="WebSocket WICs (default: 8 s worth of calls at 2×S (S = 50 while unknown), at least 300)")
    parser.add_argument("--overload", default="", help="[overload] keys for the controlled run, e.g. 'lag_high = 0.3, recover = 0.5'")
    parser.add_argument("--log-level", default="warn")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (ini files, epcscf logs)")
    options = parser.parse_args(argv)
    raise_open_files_limit(40000)
    directory = tempfile.mkdtemp(prefix="epcscf-overload-bench-")
    sipp, uas_port = None, 0
    try:
        sipp, uas_port = start_sipp(directory)
        time.sleep(0.5)

        async def scenario() -> tuple[float, list[Row], list[str]]:
            ladder: list[str] = []
            sustainable = options.sustainable or 0.0
            wics = options.wics or max(300, int(16 * (sustainable or 50)))
            deployment = OverloadDeployment(directory, make_users(wics), options.log_level)
            deployment.overload = "enabled = false\n"

            async def uncontrolled(epcscf: EpcscfProcess, callers: list[Caller]) -> Row:
                nonlocal sustainable
                rate = FIRST_RATE
                while not sustainable:
                    row = await measure(epcscf, callers, uas_port, rate, options.step_seconds)
                    step = row.result
                    good = step.completed >= SUSTAINED_SHARE * step.attempted and row.p(0.99) <= SUSTAINED_P99
                    ladder.append(f"  {rate:6.1f}/s offered: {step.completed}/{step.attempted} completed, "
                                  f"p99 {1000 * row.p(0.99):.0f} ms, epcscf CPU {step.cpu:.1f} s, waited for a CPU "
                                  f"{row.cpu_wait:.1f} s: {'ok' if good else 'not sustained'}")
                    if not good:
                        sustainable = round(rate / LADDER_STEP, 1) if rate > FIRST_RATE else rate / 2
                    rate *= LADDER_STEP
                await asyncio.sleep(3)  # let the ladder's last calls end
                return await measure(epcscf, callers, uas_port, 2 * sustainable, options.seconds, "without overload control")

            async def controlled(epcscf: EpcscfProcess, callers: list[Caller]) -> Row:
                return await measure(epcscf, callers, uas_port, 2 * sustainable, options.seconds, "with overload control",
                                     deployment.metrics_port)

            baseline = await session(deployment, "uncontrolled", uas_port, uncontrolled)
            deployment.overload = "".join(f"{item.strip()}\n" for item in options.overload.split(",") if item.strip())
            with_control = await session(deployment, "controlled", uas_port, controlled)
            return sustainable, [baseline, with_control], ladder

        sustainable, rows, ladder = asyncio.run(scenario())
    finally:
        for pid in sipp_pids(uas_port) if uas_port else []:
            os.kill(pid, signal.SIGKILL)
        if sipp is not None and sipp.poll() is None:
            sipp.kill()
    if ladder:
        print("search for the sustainable rate (no overload control):")
        print("\n".join(ladder))
    print_table(sustainable, rows)
    controlled = rows[-1]
    share = controlled.result.rate / sustainable if sustainable else 0.0
    p99 = controlled.p(0.99)
    print(f"floor with overload control: completed {controlled.result.rate:.1f}/s = {100 * share:.0f} % of S "
          f"[{'PASS' if share >= FLOOR_SHARE else 'FAIL'} >= {100 * FLOOR_SHARE:g} %], p99 {1000 * p99:.0f} ms "
          f"[{'PASS' if p99 <= FLOOR_P99 else 'FAIL'} <= {1000 * FLOOR_P99:g} ms], refused {controlled.refused}")
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
