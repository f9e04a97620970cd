"""Benchmark: the edge's CPU per refused INVITE (503 + Retry-After, then its ACK), against CPU per admitted call.

Usage::

    .venv/bin/python benchmarks/refusal_cost.py [--refusals 5000] [--wics 40] [--calls 150] [--rate R] [--py-spy FILE]

Run it in a private loopback namespace (``unshare -n sh -c 'ip link set lo up && exec …'``).

Two epcscf runs with the embedded core and a sipp UAS (``benchmarks/calls.py``'s deployment), the second's window
of calls in setup pinned to ``--hold`` calls (``[overload] min_calls_in_setup = max_calls_in_setup``):

1. Baseline, on an epcscf of its own with ``[overload]`` defaults: ``--calls`` whole calls (INVITE,
   ICE, BYE) at 30/s: epcscf CPU per admitted call.
2. ``--hold`` WICs each set up a call and never run ICE: the edge keeps them in the edge's part of
   their setup (answered, ICE not up, ``setup_window.phase``) until ``[media] connect_timeout``
   (raised to 120 s here), so the window stays full.  The idle CPU of that state is measured.
3. ``--wics`` WICs send new INVITEs as fast as they are answered, each answered 503 and ACKed
   (RFC 3261 §17.1.1.3), until ``--refusals`` were refused: epcscf CPU per refusal, the idle CPU
   subtracted.  Refusals by reason come from the edge's /metrics.  With ``--rate R`` the INVITEs
   are paced instead, R a second, each from the WIC idle longest (as ``overload.py`` spreads them
   over its many WICs): one message per wake-up of the edge, none batched with another.

Figures: CPU-seconds per operation (comparable on a loaded host), /proc/loadavg, the generator's
own CPU.  With ``EDGE_SAMPLES=FILE EDGE_SAMPLES_ON_SIGNAL=1 PYTHONPATH=benchmarks/cpu_sampler`` the pinned
edge samples its CPU while it refuses, and only then.  Bounded (``--refusals``, a 120 s cap) and self-stopping; 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _load import raise_open_files_limit  # noqa: E402
from calls import STEP_TIMEOUT, Caller, ack_for_failure, open_callers, run_load, start_sipp, stop_sipp  # noqa: E402
from overload import OverloadDeployment, refusals_by_reason  # noqa: E402
from w2_register import EpcscfProcess, make_users  # noqa: E402
from ws_register import start_py_spy  # noqa: E402

BASELINE_RATE = 30.0
CAP_SECONDS = 120.0
DEAD_PORT = 9  # discard: the held calls' candidate, so the edge's checks never succeed


def loadavg() -> str:
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])


async def hold_call(caller: Caller, uas_port: int) -> None:
    """INVITE → 200 → ACK, and no ICE: the call stays in the edge's part of its setup."""
    call_id, from_tag = os.urandom(10).hex(), os.urandom(4).hex()
    uri, to = f"sip:service@127.0.0.1:{uas_port}", f"<sip:service@127.0.0.1:{uas_port}>"
    offer = caller.offer().replace(f" {caller.ice.port} typ host".encode(), f" {DEAD_PORT} typ host".encode())
    invite = caller.request("INVITE", uri, call_id, from_tag, to, 1, body=offer)
    caller.flow.send(invite)
    ok = await caller.final(call_id, 1, "INVITE", STEP_TIMEOUT)
    if not ok.startswith(b"SIP/2.0 200"):
        raise RuntimeError(f"held call not answered: {ok[:40]!r}")
    head = ok.split(b"\r\n\r\n", 1)[0].decode(errors="replace").split("\r\n")
    to_value = next(h.split(":", 1)[1].strip() for h in head if h.lower().startswith(("to:", "t:")))
    contact = next(h.split(":", 1)[1].strip() for h in head if h.lower().startswith(("contact:", "m:")))
    target = contact[contact.index("<") + 1: contact.index(">")] if "<" in contact else contact
    routes = []
    for h in head:
        if h.lower().startswith("record-route:"):
            routes += [v.strip() for v in h.split(":", 1)[1].split(",")]
    caller.flow.send(caller.request("ACK", target, call_id, from_tag, to_value, 1, list(reversed(routes))))


async def refuse_loop(caller: Caller, uas_port: int, budget: list[int], statuses: dict[str, int]) -> None:
    """New INVITEs, each answered (503 expected) and its final response ACKed, while the budget lasts."""
    uri, to = f"sip:service@127.0.0.1:{uas_port}", f"<sip:service@127.0.0.1:{uas_port}>"
    offer = caller.offer()
    while budget[0] > 0:
        budget[0] -= 1
        call_id, from_tag = os.urandom(10).hex(), os.urandom(4).hex()
        invite = caller.request("INVITE", uri, call_id, from_tag, to, 1, body=offer)
        caller.flow.send(invite)
        final = await caller.final(call_id, 1, "INVITE", STEP_TIMEOUT)
        status = final[8:11].decode()
        statuses[status] = statuses.get(status, 0) + 1
        if status != "200":
            caller.flow.send(ack_for_failure(invite, final))
        else:
            raise RuntimeError("an INVITE was admitted while the window was meant to be full")


async def refuse_paced(callers: list[Caller], uas_port: int, rate: float, budget: list[int], statuses: dict[str, int]) -> None:
    """``refuse_loop``'s INVITEs, one every 1/``rate`` s (open loop), round robin over ``callers``."""
    idle = list(callers)
    tasks: set[asyncio.Task] = set()

    async def one(caller: Caller) -> None:
        try:
            await refuse_loop(caller, uas_port, [1], statuses)
        finally:
            idle.append(caller)

    start, sent = time.monotonic(), 0
    while budget[0] > 0:
        sent += 1
        delay = start + sent / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if not idle:
            statuses["no idle WIC"] = statuses.get("no idle WIC", 0) + 1
            continue
        budget[0] -= 1
        task = asyncio.ensure_future(one(idle.pop(0)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=STEP_TIMEOUT)


class PinnedDeployment(OverloadDeployment):
    """The deployment of ``overload.py``; ``pinned``: the window held at ``hold`` calls, ICE given 120 s."""

    hold = 0

    def write_ini(self, name: str, core_next_hop: str | None = None, workers: int = 1) -> tuple[str, int, int, int]:
        self.overload = f"min_calls_in_setup = {self.hold}\nmax_calls_in_setup = {self.hold}\n" if self.hold else ""
        written = super().write_ini(name, core_next_hop, workers)
        with open(written[0]) as handle:
            text = handle.read()
        with open(written[0], "w") as handle:
            handle.write(text.replace("port_range = 30000-39999", "port_range = 30000-39999\nconnect_timeout = 120"))
        return written


def with_edge(deployment: PinnedDeployment, name: str, scenario: Any) -> None:
    """Run ``scenario(epcscf, uas_port)`` (a coroutine function) against a fresh epcscf and sipp UAS."""
    epcscf = EpcscfProcess(deployment, name)
    sipp, uas_port = None, 0
    try:
        epcscf.wait_listening()
        sipp, uas_port = start_sipp(deployment.directory)
        time.sleep(0.5)
        asyncio.run(scenario(epcscf, uas_port))
    finally:
        stop_sipp(sipp, uas_port)
        epcscf.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--refusals", type=int, default=5000)
    parser.add_argument("--wics", type=int, default=40, help="WICs sending the INVITEs that are refused")
    parser.add_argument("--hold", type=int, default=4, help="the window: calls held in setup")
    parser.add_argument("--calls", type=int, default=150, help="admitted calls of the baseline")
    parser.add_argument("--rate", type=float, default=0.0, help="pace the refused INVITEs at this many a second (0: as fast as answered)")
    parser.add_argument("--log-level", default="warn")
    parser.add_argument("--py-spy", metavar="FILE",
                        help="sample epcscf with py-spy while it refuses (collapsed stacks; read with benchmarks/spy_top.py)")
    options = parser.parse_args(argv)
    raise_open_files_limit(20000)
    directory = tempfile.mkdtemp(prefix="epcscf-refusal-bench-")
    users = make_users(options.wics + options.hold)
    deployment = PinnedDeployment(directory, users, options.log_level)
    figures: dict[str, Any] = {}

    async def baseline(epcscf: EpcscfProcess, uas_port: int) -> None:
        callers = await open_callers(epcscf.ws_port, users[:20])
        try:
            await run_load(callers, uas_port, 10.0, 1.0, True)  # warm-up
            cpu0, own0 = epcscf.cpu_seconds(), time.process_time()
            base = await run_load(callers, uas_port, BASELINE_RATE, options.calls / BASELINE_RATE, True)
            figures["calls"] = base.completed
            figures["call_failures"] = len(base.failures)
            figures["call_cpu"] = (epcscf.cpu_seconds() - cpu0) / max(1, base.completed)
            figures["call_generator_cpu"] = (time.process_time() - own0) / max(1, base.completed)
            figures["load_calls"] = loadavg()
        finally:
            for caller in callers:
                caller.flow.close()
                caller.ice.transport.close()

    async def refusals(epcscf: EpcscfProcess, uas_port: int) -> None:
        callers = await open_callers(epcscf.ws_port, users)
        holders, blasters = callers[:options.hold], callers[options.hold:]
        try:
            await asyncio.gather(*(hold_call(holder, uas_port) for holder in holders))
            await asyncio.sleep(0.5)
            idle0, t0 = epcscf.cpu_seconds(), time.monotonic()
            await asyncio.sleep(2.0)
            figures["idle_cpu_per_s"] = (epcscf.cpu_seconds() - idle0) / (time.monotonic() - t0)
            before = refusals_by_reason(deployment.metrics_port)
            budget, statuses = [options.refusals], {}
            sampler = None
            if options.py_spy:
                expected = options.refusals / 400.0  # seconds, roughly
                sampler = start_py_spy(options.py_spy, epcscf.pid, max(2.0, 0.8 * expected))
            if os.environ.get("EDGE_SAMPLES") and os.environ.get("EDGE_SAMPLES_ON_SIGNAL"):
                os.kill(epcscf.pid, signal.SIGUSR2)  # benchmarks/cpu_sampler: the refusals only
            cpu1, own1, t1 = epcscf.cpu_seconds(), time.process_time(), time.monotonic()
            if options.rate:
                await asyncio.wait_for(refuse_paced(blasters, uas_port, options.rate, budget, statuses), CAP_SECONDS)
            else:
                await asyncio.wait_for(
                    asyncio.gather(*(refuse_loop(b, uas_port, budget, statuses) for b in blasters)), CAP_SECONDS)
            elapsed = time.monotonic() - t1
            cpu = epcscf.cpu_seconds() - cpu1 - figures["idle_cpu_per_s"] * elapsed
            refused = statuses.get("503", 0)
            figures.update(statuses=statuses, refused=refused, refusal_rate=refused / elapsed,
                           refusal_cpu=cpu / max(1, refused),
                           refusal_generator_cpu=(time.process_time() - own1) / max(1, refused),
                           load_refusals=loadavg())
            await asyncio.sleep(0.5)  # the last ACKs
            figures["reasons"] = dict(refusals_by_reason(deployment.metrics_port) - before)
            if sampler is not None:
                sampler.wait(30)
        finally:
            for caller in callers:
                caller.flow.close()
                caller.ice.transport.close()

    with_edge(deployment, "baseline", baseline)
    deployment.hold = options.hold
    with_edge(deployment, "pinned", refusals)
    print(f"refusal cost (window pinned to {options.hold} held calls, log level {options.log_level})")
    print(f"  admitted calls (another epcscf, [overload] defaults): {figures['calls']} at {BASELINE_RATE:g}/s "
          f"({figures['call_failures']} failed): epcscf {1000 * figures['call_cpu']:.2f} ms CPU per call, "
          f"generator {1000 * figures['call_generator_cpu']:.2f} ms [loadavg {figures['load_calls']}]")
    print(f"  refused INVITEs: {figures['refused']} at {figures['refusal_rate']:.0f}/s, answers {figures['statuses']}, "
          f"edge's reasons {figures['reasons']}")
    print(f"  epcscf {1000 * figures['refusal_cpu']:.3f} ms CPU per refusal incl. its ACK "
          f"(idle {1000 * figures['idle_cpu_per_s']:.1f} ms/s subtracted), generator {1000 * figures['refusal_generator_cpu']:.3f} ms "
          f"[loadavg {figures['load_refusals']}]")
    print(f"  a refusal costs {100 * figures['refusal_cpu'] / figures['call_cpu']:.1f} % of an admitted call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
