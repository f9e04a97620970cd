"""The edge under fuzz for ``benchmarks/fuzz.py``: the ``twistd epcscf`` process it starts (ini,
RSS, fds, live counts from ``/metrics``), the core it forwards to when that is not embedded
(``start_core``: the embedded core in its own ``twistd``, or Kamailio), the sipp UAS, and the
reading of the edge's log into traceback families."""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from _load import raise_open_files_limit
from w2_register import DOMAIN, cpu_seconds, free_port

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
SIPP_SCENARIO = os.path.join(TOP, "tests", "sipp", "calls_uas_answer.xml")
MAX_MESSAGE_SIZE = 65536  # the edge's [ws]/[sip] max_message_size below
LIVE_GAUGES = ("epcscf_sip_transactions", "epcscf_sip_timers", "epcscf_calls", "epcscf_ws_connections", "epcscf_registrations",
               "epcscf_ice_agents", "epcscf_dtls_sessions", "epcscf_media_ports_in_use", "epcscf_reactor_delayed_calls",
               "epcscf_asyncio_tasks", "process_open_fds")


# --- the edge ---------------------------------------------------------------------------------


@dataclass
class Edge:
    directory: str
    udp: int = field(default_factory=lambda: free_port(socket.SOCK_DGRAM))
    tcp: int = field(default_factory=free_port)
    ws: int = field(default_factory=free_port)
    core: int = field(default_factory=lambda: free_port(socket.SOCK_DGRAM))
    metrics: int = field(default_factory=free_port)
    process: Any = None
    #: with a console (``--probe``): its port and password; tracemalloc frames (0: off)
    console_port: int = 0
    console_password: str = ""
    trace_frames: int = 0
    #: the deployed shapes: an external core (``[core] mode = external``; None: embedded in the
    #: edge's process) and ``[service] workers`` (worker i listens on the SIP ports + i)
    core_next_hop: str | None = None
    workers: int = 1
    #: more ini lines by section (``fuzz.py --edge-option``), for experiments only
    extra: dict[str, list[str]] = field(default_factory=dict)

    @property
    def log_path(self) -> str:
        return os.path.join(self.directory, "epcscf.log")

    def start(self, users: dict[str, str]) -> None:
        users_file = os.path.join(self.directory, "users")
        with open(users_file, "w") as handle:
            handle.write("".join(f"{user}:{password}\n" for user, password in users.items()))
        ini = os.path.join(self.directory, "fuzz.ini")
        if self.core_next_hop:
            core = f"mode = external\nnext_hop = {self.core_next_hop}\ndomain = {DOMAIN}"
        else:
            core = f"mode = embedded\ndomain = {DOMAIN}\nlisten = udp:127.0.0.1:{self.core}\nusers = {users_file}"
        workers = f"workers = {self.workers}\nws_socket_sharing = reuseport\n" if self.workers > 1 else ""
        with open(ini, "w") as handle:
            handle.write(f"""\
[service]
state_dir = {self.directory}/var
{workers}[sip]
listen = udp:127.0.0.1:{self.udp}, tcp:127.0.0.1:{self.tcp}
max_message_size = {MAX_MESSAGE_SIZE}
[ws]
listen = ws:127.0.0.1:{self.ws}
allow_missing_origin = true
max_message_size = {MAX_MESSAGE_SIZE}
[core]
{core}
[media]
port_range = 30000-39999
[metrics]
enabled = true
port = {self.metrics}
{self._manhole()}
[log]
level = warn
""")
        if self.extra:
            with open(ini) as handle:
                text = handle.read()
            for section, lines in self.extra.items():
                added = "".join(line + "\n" for line in lines)
                header = f"[{section}]\n"
                text = text.replace(header, header + added, 1) if header in text else text + header + added
            with open(ini, "w") as handle:
                handle.write(text)
        env = dict(os.environ, PYTHONPATH=TOP + os.pathsep + os.environ.get("PYTHONPATH", ""))
        if self.trace_frames:
            env["PYTHONTRACEMALLOC"] = str(self.trace_frames)
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [os.path.join(TOP, ".venv", "bin", "twistd"), "-n", "--pidfile=", "epcscf", "--config", ini],
            cwd=TOP, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=lambda: raise_open_files_limit(20000),
        )
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"epcscf exited with {self.process.returncode}; see {self.log_path}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.ws)) == 0 and probe.close() is None:
                    with socket.socket() as second:
                        if second.connect_ex(("127.0.0.1", self.metrics)) == 0 and self._workers_ready():
                            return
            if time.monotonic() > deadline:
                raise RuntimeError(f"epcscf did not start listening; see {self.log_path}")
            time.sleep(0.1)

    def _workers_ready(self) -> bool:
        """With workers: every one of them reported running to the supervisor's /metrics."""
        if self.workers == 1:
            return True
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=10) as response:
            found = re.search(r'^epcscf_workers_running\{worker="supervisor"\} (\S+)$', response.read().decode(), re.MULTILINE)
        return found is not None and int(float(found.group(1))) >= self.workers

    def worker_pids(self) -> list[int]:
        """The processes that hold the edge's state: itself, or with workers the supervisor's children."""
        if self.workers == 1:
            return [self.process.pid]
        with open(f"/proc/{self.process.pid}/task/{self.process.pid}/children") as children:
            return sorted(int(pid) for pid in children.read().split())

    def sip_ports(self, transport: str) -> list[int]:
        """The core-facing SIP port of each worker (``epcscf.workers.plan``: the configured port + index)."""
        port = self.udp if transport == "udp" else self.tcp
        return [port + index for index in range(self.workers)]

    def enable_console(self) -> None:
        """An SSH console for ``probe`` (the soak's counts by class, tracemalloc snapshots)."""
        import secrets

        self.console_port = free_port()
        self.console_password = secrets.token_hex(8)

    def _manhole(self) -> str:
        if not self.console_port:
            return "[manhole]\nenabled = false"
        import bcrypt

        users_file = os.path.join(self.directory, "manhole_users")
        with open(users_file, "w") as handle:
            handle.write(f"fuzz:{bcrypt.hashpw(self.console_password.encode(), bcrypt.gensalt(4)).decode()}\n")
        return f"[manhole]\nenabled = true\nport = {self.console_port}\nusers = {users_file}"

    def _run_probe(self, script: str, settings: dict[str, Any], marker: str) -> dict[str, Any]:
        """Type ``settings`` and ``exec`` of ``script`` into the console; the JSON after ``marker``."""
        import json

        from _console import run_lines

        probe = os.path.join(HERE, script)
        lines = [f"{name} = {value!r}" for name, value in settings.items()] + [f"exec(open({probe!r}).read())"]
        screen = run_lines(self.console_port, "fuzz", self.console_password, lines, timeout=300.0)
        for line in screen.splitlines():
            if line.startswith(marker + " "):
                return json.loads(line.split(" ", 1)[1])
        raise RuntimeError(f"the console printed no {marker}:\n" + screen[-2000:])

    def probe(self, snapshot: str | None = None) -> dict[str, Any]:
        """Live objects by class after ``gc.collect()`` (``_soak_probe.py``), and a tracemalloc
        snapshot into ``snapshot`` when the edge traces."""
        return self._run_probe("_soak_probe.py", {"SOAK_SNAPSHOT": snapshot, "SOAK_GARBAGE": True}, "SOAK-COUNTS")

    def heap(self, forget_history: bool = False, trim: bool = False, as_is: bool = False) -> dict[str, Any]:
        """The allocators' figures (``_heap_probe.py``); optionally after forgetting the ended
        calls kept for the console, and with a ``malloc_trim(0)`` after the reading; ``as_is``:
        without the ``gc.collect()`` before it (what the cyclic garbage adds)."""
        settings = {"HEAP_FORGET": forget_history, "HEAP_TRIM": trim, "HEAP_AS_IS": as_is}
        figures = self._run_probe("_heap_probe.py", settings, "HEAP-FIGURES")
        figures["rss_kib"] = self.rss_kib()
        return figures

    def arenas(self, baseline: bool = False) -> dict[str, Any]:
        """The live objects in the arenas the run added since the ``baseline`` call
        (``_arena_probe.py``): by type and, under tracemalloc, by allocation site."""
        return self._run_probe("_arena_probe.py", {"ARENA_BASELINE": baseline}, "ARENA-FIGURES")

    def call_referrers(self) -> dict[str, Any]:
        """The whole ``Call`` objects alive, where the call manager has them, and who refers to
        those it does not (``_call_referrers_probe.py``)."""
        found = self._run_probe("_call_referrers_probe.py", {}, "CALL-REFERRERS")
        found["fan out"] = self._run_probe("_call_referrers_probe.py", {}, "CALL-FANOUT")
        return found

    def rss_kib(self) -> int:
        """VmRSS of the edge's state: the process, or the workers summed (the supervisor apart)."""
        return sum(rss_kib_of(pid) for pid in self.worker_pids())

    def fds(self) -> int:
        return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in self.worker_pids())

    def gauges(self) -> dict[str, float]:
        """The live counts the edge exports (summed over labels), from one scrape."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=10) as response:
            text = response.read().decode()
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in LIVE_GAUGES:
                    key = sample.name + "".join(f"{{{v}}}" for k, v in sorted(sample.labels.items()) if k == "kind")
                    found[key] = found.get(key, 0) + sample.value
        return found

    def snapshot(self) -> dict[str, Any]:
        try:
            gauges = self.gauges()
        except OSError as error:
            gauges = {"scrape failed": str(error)}
        pids = self.worker_pids()
        found = {"rss_kib": sum(rss_kib_of(pid) for pid in pids), "fds": self.fds(), "gauges": gauges,
                 "cpu": sum(cpu_seconds(pid) for pid in {self.process.pid, *pids})}
        if self.workers > 1:
            found["rss_kib by worker"] = [rss_kib_of(pid) for pid in pids]
            found["supervisor rss_kib"] = rss_kib_of(self.process.pid)
        return found

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def rss_kib_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


# --- the core, when it is not embedded in the edge's process ----------------------------------


@dataclass
class Core:
    """A core in processes of its own: where the edge sends, its RSS, how to stop it."""

    kind: str
    next_hop: str
    pids: Any  # () -> list[int]
    stop: Any  # () -> None

    def rss_kib(self) -> int:
        total = 0
        for pid in self.pids():
            try:
                total += rss_kib_of(pid)
            except (OSError, StopIteration):
                continue  # gone meanwhile
        return total


def start_core(kind: str, directory: str, users: dict[str, str], uas_port: int) -> Core:
    """``separate``: epcscf's embedded core in its own ``twistd`` (as ``calls.py --separate-core``);
    ``kamailio``: the interop tests' Kamailio (``_call_cores``: registrar with Path, no
    authentication, calls to ``uas*`` relayed to the sipp UAS at ``uas_port``)."""
    if kind == "kamailio":
        from _call_cores import KAMAILIO_CHILDREN, group_pids
        from tests.support.kamailio import start_kamailio

        kamailio = start_kamailio(f"sip:127.0.0.1:{uas_port}", defines=("QUIET",), children=KAMAILIO_CHILDREN, shared_mb=256)
        return Core(kind, kamailio.next_hop, lambda: group_pids(kamailio.process.pid), kamailio.stop)
    from w2_register import Deployment, EpcscfProcess

    own = os.path.join(directory, "core")  # its users file, certificate and log apart from the edge's
    os.makedirs(own, exist_ok=True)
    process = EpcscfProcess(Deployment(own, sorted(users.items()), "warn"), "core")
    try:
        process.wait_listening()
    except BaseException:
        process.stop()
        raise
    return Core(kind, f"sip:127.0.0.1:{process.core_port};transport=udp", process.pids, process.stop)


def start_sipp(directory: str, seconds: float) -> tuple[subprocess.Popen, int]:
    sipp = shutil.which("sipp")
    if sipp is None:
        raise RuntimeError("sipp is not installed (Debian package sip-tester)")
    port = free_port(socket.SOCK_DGRAM)
    process = subprocess.Popen(
        [sipp, "-sf", SIPP_SCENARIO, "-i", "127.0.0.1", "-p", str(port), "-mi", "127.0.0.1", "-mp", str(free_port(socket.SOCK_DGRAM)),
         "-nostdin", "-timeout", f"{int(seconds)}s", "-max_recv_loops", "10000"],  # no -trace_err: mutants make sipp write hundreds of MB
        cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return process, port


# --- the log ----------------------------------------------------------------------------------

_NUMBERS = re.compile(r"0x[0-9a-f]+|\d+")


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)|^\s*(/\S+):(\d+):(\S+)$')
_EXCEPTION = re.compile(r"^\s*(?:Failure: )?([A-Za-z_][\w.]*(?:Error|Exception|Closed|Disconnected|Lost|Failure|Warning|Exit)\w*)(?::|$)(.*)")
_INNER = re.compile(r"<class '([\w.]+)'>: ([^\n\]]*)")


def failure_family(event: list[str]) -> str:
    """``ExceptionType: message (numbers blanked) @ deepest epcscf frame`` of one logged traceback."""
    frames = []
    for line in event:
        found = _FRAME.search(line)
        if found:
            path, number, function = (found.group(1), found.group(2), found.group(3)) if found.group(1) else found.group(4, 5, 6)
            frames.append((path, number, function))
    ours = [frame for frame in frames if "/epcscf/" in frame[0]]
    where = ours[-1] if ours else (frames[-1] if frames else ("?", "", ""))
    exception = "?"
    for line in reversed(event):
        inner = _INNER.search(line)
        if inner:
            exception = f"{inner.group(1)}: {inner.group(2)}"
            break
        found = _EXCEPTION.match(line)
        if found and not line.strip().startswith("File "):
            exception = f"{found.group(1)}:{found.group(2)}"
            break
    return _NUMBERS.sub("N", exception.strip())[:140] + f" @ {where[0].split('/epcscf/')[-1]}:{where[2]}"


def log_findings(path: str) -> tuple[collections.Counter, dict[str, tuple[int, list[str]]]]:
    """Counts of alarming lines and the traceback families: {key: (count, first lines)}.

    ``textFileLogObserver`` writes one event per line, later lines of a multi-line event
    (a traceback) indented with a tab; a family is the exception line (numbers blanked)
    plus the innermost frame.
    """
    counts: collections.Counter = collections.Counter()
    families: dict[str, tuple[int, list[str]]] = {}
    event: list[str] = []

    def close_event() -> None:
        if not event:
            return
        text = "\n".join(event)
        # "Unhandled error in Deferred:" is an event of its own; its traceback is the next one.
        if "Traceback (most recent call last)" in text:
            key = failure_family(event)
            count, sample = families.get(key, (0, []))
            families[key] = (count + 1, sample or event[:3] + ["\t..."] + event[-6:])

    with open(path, errors="replace") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if "Traceback (most recent call last)" in line:
                counts["traceback"] += 1
            if "Unhandled error" in line:
                counts["unhandled error"] += 1
            if "#critical]" in line:
                counts["critical"] += 1
            elif "#error]" in line:
                counts["error"] += 1
            if line.startswith("\t"):
                event.append(line)
            else:
                close_event()
                event = [line]
    close_event()
    return counts, families
