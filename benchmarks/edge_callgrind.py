"""Benchmark: instructions of the whole eP-CSCF process per call, under ``benchmarks/calls.py``.

Usage::

    unshare -n sh -c 'ip link set lo up && exec .venv/bin/python benchmarks/edge_callgrind.py \\
        [--idle 5] [--out /tmp/edge-cg] -- --separate-core --rate 1 --seconds 20 --wics 10 [--edge-tree /work/main]'

The arguments after ``--`` are ``calls.py``'s.  The edge (one process; ``--separate-core`` keeps the
embedded core out of it) runs under ``valgrind --tool=callgrind --instr-atstart=no``: uninstrumented while
it starts and the WICs register, then ``callgrind_control -i on`` just before the timed phase.  Counted:

- *idle*: ``--idle`` seconds with the WICs registered and no call (timers, keepalives), dumped apart;
- *calls*: the timed phase, from the generator's "go" to its result; instructions ÷ completed calls, and
  the same less the idle rate × the phase's length (what the calls themselves cost).

CPU time is not counted: the host is shared and the edge runs ~50× slower under callgrind, which is why the
rate is low (one call at a time, mostly; no SIP retransmission is provoked: T1 is 500 ms).  Instruction
counts repeat whatever the load; the dump files (``--out``.<pid>.1 idle, .2 calls) open in
``callgrind_annotate`` or KCachegrind for the functions.  ``PYTHONHASHSEED=0`` for the edge, so that two
runs of one tree hash alike.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import calls  # noqa: E402
import w2_register  # noqa: E402


def total_instructions(path: str) -> int:
    """The ``totals:`` (or ``summary:``) line of a callgrind dump: instructions (Ir)."""
    with open(path) as dump:
        for line in dump:
            if line.startswith(("totals:", "summary:")):
                return int(line.split()[1])
    raise RuntimeError(f"{path}: no totals line")


def control(pid: int, *arguments: str) -> None:
    """``callgrind_control`` on the edge (through vgdb); raises when it fails."""
    subprocess.run(["callgrind_control", *arguments, str(pid)], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.STDOUT, timeout=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--idle", type=float, default=5.0, help="seconds counted with no call before the timed phase")
    parser.add_argument("--out", default="/tmp/edge-cg", help="callgrind's dump files: OUT.<pid>.<n>")
    parser.add_argument("calls_arguments", nargs=argparse.REMAINDER, help="-- then calls.py's arguments")
    options = parser.parse_args(argv)
    calls_arguments = [a for a in options.calls_arguments if a != "--"]
    edge: dict[str, Any] = {}
    real_popen = subprocess.Popen

    def under_callgrind(args: list[str], **kwargs: Any) -> subprocess.Popen:
        if "epcscf" in args and not any(str(arg).endswith("core.ini") for arg in args):  # the edge only
            args = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={options.out}.%p",
                    *args]
            env = dict(kwargs.pop("env", None) or os.environ)
            env["PYTHONHASHSEED"] = "0"
            process = real_popen(args, env=env, **kwargs)
            edge["pid"] = process.pid
            return process
        return real_popen(args, **kwargs)

    subprocess.Popen = under_callgrind  # type: ignore[misc]
    real_wait = w2_register.EpcscfProcess.wait_listening
    w2_register.EpcscfProcess.wait_listening = lambda self, timeout=600.0: real_wait(self, timeout)  # type: ignore[method-assign]

    phases: dict[str, float] = {}
    real_read = calls.Counters.read

    def read(self: calls.Counters) -> tuple[float, ...]:
        pid = edge["pid"]
        if "go" not in phases:  # before the generator's "go": instrument, count an idle stretch apart
            control(pid, "-i", "on")
            control(pid, "-z")
            time.sleep(options.idle)
            control(pid, "-d", "idle")
            phases["idle"] = options.idle
            phases["go"] = time.monotonic()
        else:  # the generator's result: the timed phase ends
            control(pid, "-d", "calls")
            control(pid, "-i", "off")
            phases["calls"] = time.monotonic() - phases["go"]
        return real_read(self)

    calls.Counters.read = read  # type: ignore[method-assign]
    figures: list[calls.Figures] = []
    real_report = calls.report

    def report(options_: argparse.Namespace, engine: str, ims: Any, f: calls.Figures) -> None:
        figures.append(f)
        real_report(options_, engine, ims, f)

    calls.report = report  # type: ignore[assignment]
    calls.main(calls_arguments)
    pid = edge["pid"]
    idle = total_instructions(f"{options.out}.{pid}.1")
    during = total_instructions(f"{options.out}.{pid}.2")
    completed = figures[-1].completed if figures else 0
    idle_rate = idle / phases["idle"]
    print(f"edge under callgrind (pid {pid}; dumps {options.out}.{pid}.1 idle, .2 calls); loadavg "
          + " ".join(open("/proc/loadavg").read().split()[:3]))
    print(f"  idle: {idle:,} instructions in {phases['idle']:g} s = {idle_rate:,.0f}/s")
    if completed:
        print(f"  calls: {during:,} instructions in {phases['calls']:.1f} s for {completed} calls = "
              f"{during / completed:,.0f} per call; less the idle rate: {(during - idle_rate * phases['calls']) / completed:,.0f} per call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
