"""The IMS side of ``benchmarks/calls.py``: the core the eP-CSCF forwards to, and the sipp UAS.

``--core`` chooses the core (issue 16: "the Kamailio core of the interop tests, or the embedded
core with a benchmark switch"):

- ``embedded``: epcscf's embedded core, in the eP-CSCF's process (or, with ``--separate-core`` or
  several workers, in a second epcscf process).  It challenges the initial registrations only;
  every INVITE/ACK/BYE goes through its Python proxy.
- ``kamailio``: the interop tests' Kamailio (``tests/peers/kamailio/core.cfg`` with ``QUIET``: no
  log line per request): registrar with Path, no authentication, stateful proxy with
  Record-Route toward the sipp UAS for ``uas*`` Request-URIs.  Its worker processes are one
  process group; its CPU is the group's.
- ``sipp``: one sipp (``benchmarks/sipp/core_uas.xml``) that is registrar and IMS party at once,
  no proxying: the floor of what any core can cost.

Every process here is on 127.0.0.1 and stopped by ``Core.stop``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable

from w2_register import DOMAIN, Deployment, EpcscfProcess, cpu_seconds, free_port

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
# The UAS, and with core sipp the core too (tests/sipp/calls_uas_answer.xml aborts a call on a
# retransmitted INVITE, which a starved core over UDP sends).
UAS_SCENARIO = CORE_UAS_SCENARIO = os.path.join(HERE, "sipp", "core_uas.xml")
KAMAILIO_CHILDREN = 4  # UDP worker processes: two per core of this machine, as Kamailio's default 8 is for bigger hosts


def cpu_of(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:
        return 0.0  # gone meanwhile


def pids_where(name: str, matches: Callable[[bytes], bool]) -> list[int]:
    """The processes whose /proc/PID/``name`` file satisfies ``matches``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/{name}", "rb") as handle:
                if matches(handle.read()):
                    found.append(int(pid))
        except OSError:
            continue  # gone meanwhile
    return found


def sipp_pids(port: int) -> list[int]:
    """sipp -bg forks: find the background sipp by its port in its command line."""

    def is_it(cmdline: bytes) -> bool:
        argv = cmdline.split(b"\0")
        return argv[0].endswith(b"sipp") and str(port).encode() in argv

    return pids_where("cmdline", is_it)


def group_pids(pgid: int) -> list[int]:
    """Every process of one process group (Kamailio's main process and the workers it forks)."""
    return pids_where("stat", lambda stat: int(stat.rsplit(b")", 1)[1].split()[2]) == pgid)


def runqueue_wait(pids: list[int]) -> float:
    """Seconds the processes' main threads waited for a CPU while runnable (/proc/PID/schedstat,
    second field): on a shared host, how much of a latency is other people's load."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/schedstat") as handle:
                total += int(handle.read().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return total


def udp_drops_by_process(groups: dict[str, list[int]]) -> dict[str, int]:
    """Datagrams each group of processes lost on full UDP receive buffers so far: the ``drops``
    column of /proc/net/udp for the sockets (by inode) open in those processes."""
    drops_by_inode: dict[str, int] = {}
    with open("/proc/net/udp") as table:
        for line in list(table)[1:]:
            fields_ = line.split()
            drops_by_inode[fields_[9]] = int(fields_[12])
    found: dict[str, int] = {}
    for name, pids in groups.items():
        inodes: set[str] = set()
        for pid in pids:
            try:
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
            except OSError:
                continue  # gone meanwhile
        found[name] = sum(drops_by_inode.get(inode, 0) for inode in inodes)
    return found


def start_sipp(directory: str, scenario: str, timeout: float = 10.0) -> int:
    """A background sipp UAS on a free UDP port of 127.0.0.1; its port once it listens (find its
    process with ``sipp_pids``: ``-bg`` forks and the parent exits)."""
    from tests.support.sipp import port_bound

    sipp = shutil.which("sipp")
    if sipp is None:
        raise RuntimeError("sipp is not installed (Debian package sip-tester)")
    port = free_port(socket.SOCK_DGRAM)
    subprocess.Popen(
        [sipp, "-sf", scenario, "-i", "127.0.0.1", "-p", str(port), "-mi", "127.0.0.1",
         "-mp", str(free_port(socket.SOCK_DGRAM)), "-nostdin", "-bg", "-trace_err",
         # Its message counts (received, sent, retransmitted, unexpected; by scenario step) once a
         # second in <scenario>_<pid>_counts.csv, for calls.py's per-run counts.
         "-trace_counts", "-fd", "1",
         # A message out of order (an ACK overtaken by a retransmitted INVITE) is dropped, not
         # the call: the peer's retransmission comes again, as a real UAS would wait for it.
         "-default_behaviors", "all,-abortunexp",
         "-error_file", os.path.join(directory, f"sipp_errors_{port}.log"), "-max_recv_loops", "10000"],
        cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    ).wait()
    deadline = time.monotonic() + timeout
    while not port_bound(port, "UDP"):
        if time.monotonic() > deadline:
            stop_sipp(port)
            raise RuntimeError(f"sipp ({os.path.basename(scenario)}) did not listen on {port}")
        time.sleep(0.05)
    return port


def sipp_counts(directory: str) -> dict[str, int]:
    """The latest message counts of every sipp that runs in ``directory`` (``-trace_counts``), summed
    by column over the scenario's steps: ``Recv``, ``Sent``, ``Retrans``, ``Unexp`` … (one second old
    at most)."""
    totals: dict[str, int] = {}
    for name in os.listdir(directory):
        if not name.endswith("_counts.csv"):
            continue
        with open(os.path.join(directory, name)) as handle:
            lines = [line.rstrip("\n") for line in handle if line.strip()]
        if len(lines) < 2:
            continue
        for column, value in zip(lines[0].split(";"), lines[-1].split(";")):
            if "_" in column and value.strip().isdigit():
                kind = column.rsplit("_", 1)[1]
                totals[kind] = totals.get(kind, 0) + int(value)
    return totals


def stop_sipp(port: int) -> None:
    for pid in sipp_pids(port):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class Ims:
    """The core and the UAS of one run: where the eP-CSCF sends, what the WICs call, their CPU."""

    kind: str
    target: str  # the Request-URI of every call
    next_hop: str | None  # [core] next_hop of the eP-CSCF; None: it embeds the core
    core_pids: Callable[[], list[int]]  # the core's own processes (none: it is in epcscf)
    uas_pids: Callable[[], list[int]]  # the sipp UAS (none: the core is the UAS)
    described: str
    stoppers: list[Callable[[], None]] = field(default_factory=list)

    def core_cpu(self) -> float:
        return sum(cpu_of(pid) for pid in self.core_pids())

    def uas_cpu(self) -> float:
        return sum(cpu_of(pid) for pid in self.uas_pids())

    def stop(self) -> None:
        for stop in reversed(self.stoppers):
            stop()


def start_ims(kind: str, separate: bool, deployment: Deployment, directory: str) -> Ims:
    """Start the UAS and the core of ``kind``; stops what it started when something fails."""
    if kind == "sipp":
        port = start_sipp(directory, CORE_UAS_SCENARIO)
        return Ims(kind, f"sip:uas@{DOMAIN}", f"sip:127.0.0.1:{port};transport=udp", lambda: sipp_pids(port), list,
                   "core: sipp, registrar and UAS in one (no proxying)", [lambda: stop_sipp(port)])
    uas_port = start_sipp(directory, UAS_SCENARIO)
    ims = Ims(kind, "", None, list, lambda: sipp_pids(uas_port), "", [lambda: stop_sipp(uas_port)])
    try:
        if kind == "kamailio":
            from tests.support.kamailio import start_kamailio

            kamailio = start_kamailio(f"sip:127.0.0.1:{uas_port}", defines=("QUIET",), children=KAMAILIO_CHILDREN, shared_mb=256)
            ims.stoppers.append(kamailio.stop)
            ims.target, ims.next_hop = f"sip:uas@{DOMAIN}", kamailio.next_hop
            ims.core_pids = lambda: group_pids(kamailio.process.pid)
            ims.described = f"core: Kamailio ({KAMAILIO_CHILDREN} UDP workers, no authentication) in its own processes"
        elif separate:
            core = EpcscfProcess(deployment, "core")
            ims.stoppers.append(core.stop)
            core.wait_listening()
            ims.target, ims.next_hop = f"sip:service@127.0.0.1:{uas_port}", f"sip:127.0.0.1:{core.core_port};transport=udp"
            ims.core_pids = core.pids
            ims.described = "core: embedded, in its own epcscf process"
        else:
            ims.target = f"sip:service@127.0.0.1:{uas_port}"
            ims.described = "core: embedded in the eP-CSCF's process (its CPU is in epcscf's)"
    except BaseException:
        ims.stop()
        raise
    return ims
