"""Summarise the collector's share of ``calls.py --counts`` runs, from their printed output.

Usage::

    EDGE_COUNTS_PASSES=1 [EDGE_COUNTS_SURVIVORS=1] .venv/bin/python benchmarks/calls.py … --counts > run.txt
    python3 benchmarks/edge_counts/passes.py run1.txt run2.txt …

One line per run: calls completed, setup p99, edge CPU per call, loadavg and the CPU the edge waited
for, then the collector over both workers' timed phases: its thread CPU per completed call, and per
generation the passes, their CPU and wall pauses (p50 / p99 / longest; with ``EDGE_COUNTS_PASSES=1``,
else only the longest).  With ``EDGE_COUNTS_SURVIVORS=1`` also the objects the young and middle passes
traversed per INVITE, and with ``--kinds N`` the N kinds traversed most.
"""

from __future__ import annotations

import argparse
import re
import statistics
from typing import Any


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def read_run(path: str) -> dict[str, Any]:
    text = open(path).read()
    run: dict[str, Any] = {"path": path}
    completed = re.search(r"completed (\d+)/(\d+) in ([\d.]+) s = ([\d.]+) calls/s", text)
    run["completed"], run["offered"] = (int(completed.group(1)), int(completed.group(2))) if completed else (0, 0)
    run["rate"] = float(completed.group(4)) if completed else 0.0
    setup = re.search(r"setup \(INVITE → ICE completed\) p50 ([\d.]+) ms, p99 ([\d.]+) ms", text)
    run["setup_p50"], run["setup_p99"] = (float(setup.group(1)), float(setup.group(2))) if setup else (0.0, 0.0)
    cpu = re.search(r"CPU: epcscf [\d.]+ s = ([\d.]+) ms/call", text)
    run["edge_ms"] = float(cpu.group(1)) if cpu else float("nan")
    waited = re.search(r"epcscf waited ([\d.]+) s for a CPU while runnable; loadavg ([^;]+);", text)
    run["waited"], run["loadavg"] = (float(waited.group(1)), waited.group(2).strip()) if waited else (0.0, "?")
    workers = []
    for block in text.split("  edge worker ")[1:]:
        counts: dict[str, float] = {}
        for line in block.splitlines():
            match = re.match(r"    (.*): ([-\d.e+]+)(?: \(|$)", line)
            if match:
                counts[match.group(1)] = float(match.group(2))
        workers.append(counts)
    run["workers"] = workers
    return run


def summarise(run: dict[str, Any], kinds: int) -> str:
    workers = run["workers"]
    completed = max(run["completed"], 1)
    invites = sum(w.get("sip in ws INVITE", 0) for w in workers) or completed
    gc_ms = sum(w.get("gc ms (thread CPU)", 0) for w in workers)
    parts = [f"{run['path']}: {run['rate']:.1f}/s ({run['completed']}/{run['offered']}), setup p99 {run['setup_p99']:.0f} ms, "
             f"edge {run['edge_ms']:.2f} ms/call, loadavg {run['loadavg']}, waited {run['waited']:.1f} s; "
             f"collector {gc_ms / completed:.3f} ms/call ({gc_ms / invites:.3f} per INVITE received)"]
    for generation, name in ((0, "young"), (1, "middle"), (2, "full")):
        passes = sum(w.get(f"gc gen{generation}", 0) for w in workers)
        cpu = [v for w in workers for k, v in w.items() if re.match(rf"gc pass #\d+ gen{generation} cpu ms$", k) and v]
        wall = [v for w in workers for k, v in w.items() if re.match(rf"gc pass #\d+ gen{generation} wall ms$", k) and v]
        longest = max((w.get(f"gc gen{generation} longest pause ms (max)", 0) for w in workers), default=0)
        text = f"{name} {passes:.0f} ({1000 * passes / invites:.1f} per 1000 INVITEs)"
        if cpu:
            text += (f" (CPU p50 {percentile(cpu, 0.5):.1f} p99 {percentile(cpu, 0.99):.1f}; wall p50 {percentile(wall, 0.5):.1f} "
                     f"p99 {percentile(wall, 0.99):.1f} ms)")
        elif passes:
            text += f" (longest wall {longest:.1f} ms)"
        parts.append(text)
    line = "; ".join(parts)
    growth = sum(w.get("gc tracked objects, growth", 0) for w in workers)
    if growth:
        line += f"\n    tracked objects left at the end of the timed phase: {growth:.0f}, {growth / invites:.1f} per INVITE"
    traversed = [sum(w.get(f"gc gen{g} traversed (all)", 0) for w in workers) for g in (0, 1)]
    if any(traversed):
        line += f"\n    traversed per INVITE: young {traversed[0] / invites:.0f}, middle {traversed[1] / invites:.0f}"
        for generation in (0, 1):
            totals: dict[str, float] = {}
            for w in workers:
                for key, value in w.items():
                    if key.startswith(f"gc gen{generation} traversed ") and not key.endswith("(all)"):
                        kind = key[len(f"gc gen{generation} traversed "):]
                        totals[kind] = totals.get(kind, 0) + value
            top = sorted(totals.items(), key=lambda item: -item[1])[:kinds]
            if top:
                line += f"\n    gen{generation}: " + ", ".join(f"{kind} {value / invites:.1f}" for kind, value in top)
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--kinds", type=int, default=0, help="with EDGE_COUNTS_SURVIVORS: the kinds traversed most")
    options = parser.parse_args()
    for path in options.runs:
        print(summarise(read_run(path), options.kinds))
    if len(options.runs) > 1:
        runs = [read_run(path) for path in options.runs]
        per_call = [sum(w.get("gc ms (thread CPU)", 0) for w in r["workers"]) / max(r["completed"], 1) for r in runs]
        print(f"collector ms/call: median {statistics.median(per_call):.3f} (of {len(runs)})")


if __name__ == "__main__":
    main()
