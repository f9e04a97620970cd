"""Kamailio (Debian ``kamailio``) as a third-party core: one daemon per test class.

It runs our ``tests/peers/kamailio/core.cfg`` in the foreground on 127.0.0.1 (UDP and TCP on
one port), with its runtime directory, pid file and log in a temporary directory.  Kamailio
forks its workers: it is started in a process group of its own and the whole group is
killed on stop, so no worker outlives the test.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from tests.support.processes import TOP
from tests.support.sipp import free_port, port_bound

CONFIG = os.path.join(TOP, "tests", "peers", "kamailio", "core.cfg")


def kamailio_binary() -> str | None:
    """The kamailio program (Debian installs it in /usr/sbin, not always on a user's PATH)."""
    return shutil.which("kamailio") or shutil.which("kamailio", path="/usr/sbin:/usr/local/sbin")


@dataclass
class KamailioCore:
    """A running Kamailio: where it listens, its log, and how to stop it."""

    port: int
    directory: str
    process: subprocess.Popen
    log_path: str
    stopped: bool = field(default=False)

    @property
    def next_hop(self) -> str:
        return f"sip:127.0.0.1:{self.port};transport=udp"

    def log(self) -> str:
        with open(self.log_path, errors="replace") as handle:
            return handle.read()

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL if it lingers; the temporary directory goes."""
        if self.stopped:
            return
        self.stopped = True
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(grace)
                break
            except subprocess.TimeoutExpired:
                continue
        _wait_group_gone(self.process.pid, 5.0)
        shutil.rmtree(self.directory, ignore_errors=True)


def start_kamailio(uas_uri: str, service_route: bool = False, timeout: float = 10.0, defines: tuple[str, ...] = (),
                   children: int | None = None, shared_mb: int = 64) -> KamailioCore:
    """Start Kamailio on a free port of 127.0.0.1 (UDP + TCP); blocks until both listen.

    ``uas_uri``: where calls to ``uas*`` go (a sipp UAS).  ``service_route``: the variant that
    returns a Service-Route on registration and routes originating requests along it.
    ``defines``: more ``-A`` defines of core.cfg (e.g. ``QUIET``); ``children``: UDP/TCP worker
    processes (``-n``, the config's 2 when None); ``shared_mb``: shared memory (``-m``).
    Raises ``RuntimeError`` with Kamailio's log when it does not come up.
    """
    binary = kamailio_binary()
    if binary is None:
        raise RuntimeError("kamailio is missing (Debian package kamailio): bin/test installs it")
    directory = tempfile.mkdtemp(prefix="epcscf-kamailio-")
    port = free_port()
    log_path = os.path.join(directory, "kamailio.log")
    argv = [
        binary, "-f", CONFIG, "-DD", "-E",
        "-m", str(shared_mb), "-M", "8",  # shared / private memory, MB: 64 is plenty for a handful of calls
        "-Y", directory, "-P", os.path.join(directory, "kamailio.pid"), "-w", directory,
        "-l", f"udp:127.0.0.1:{port}", "-l", f"tcp:127.0.0.1:{port}",
        "-A", f'UAS_URI="{uas_uri}"',
    ]
    if service_route:
        argv += ["-A", "WITH_SERVICE_ROUTE"]
    for define in defines:
        argv += ["-A", define]
    if children is not None:
        argv += ["-n", str(children)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=directory, start_new_session=True)
    core = KamailioCore(port, directory, process, log_path)
    deadline = time.monotonic() + timeout
    while not (port_bound(port, "UDP") and port_bound(port, "TCP")):
        if process.poll() is not None or time.monotonic() > deadline:
            text = core.log()
            core.stop()
            raise RuntimeError(f"kamailio did not start (exit {process.poll()}):\n{text[-3000:]}")
        time.sleep(0.05)
    return core


def _wait_group_gone(pgid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
