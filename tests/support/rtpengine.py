"""A real rtpengine daemon (Debian's rtpengine-daemon, userspace: ``--table=-1``) on 127.0.0.1,
and a blocking ng client for what tests ask it directly (``list``, ``query``)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import bencodepy

from tests.support.sipp import free_port, port_bound


def rtpengine_binary() -> str | None:
    return shutil.which("rtpengine") or shutil.which("rtpengine", path="/usr/bin:/usr/sbin")


@dataclass
class RtpengineDaemon:
    ng_port: int
    port_range: tuple[int, int]
    directory: str
    process: subprocess.Popen
    log_path: str
    stopped: bool = field(default=False)
    #: its --listen-tcp-ng port on 127.0.0.1 (ng over TCP: replies of any size)
    tcp_ng_port: int = 0

    @property
    def node(self) -> str:
        """The [rtpengine] nodes entry of this daemon."""
        return f"udp:127.0.0.1:{self.ng_port}"

    def log(self) -> str:
        with open(self.log_path, errors="replace") as handle:
            return handle.read()

    def ng(self, message: dict, timeout: float = 2.0) -> dict:
        """One ng command, answered (blocking; the daemon is another process)."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            cookie = os.urandom(6).hex().encode()
            sock.sendto(cookie + b" " + bencodepy.encode(message), ("127.0.0.1", self.ng_port))
            data = sock.recv(65535)
        reply = bencodepy.decode(data.partition(b" ")[2])
        return {k.decode(): v for k, v in reply.items()}

    def calls(self) -> list[str]:
        """``list``: the ng call-ids rtpengine holds now."""
        return [call.decode() for call in self.ng({"command": "list", "limit": 1000})["calls"]]

    def kill(self) -> None:
        """SIGKILL: the node stops answering at once (a crash, not a shutdown)."""
        self.stop(signal.SIGKILL)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.stopped:
            return
        self.stopped = True
        try:
            self.process.send_signal(sig)
            self.process.wait(5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait(5)
        shutil.rmtree(self.directory, ignore_errors=True)


def start_rtpengine(port_min: int, port_max: int, timeout: float = 10.0) -> RtpengineDaemon:
    """rtpengine on 127.0.0.1 with media ports ``port_min``-``port_max``; blocks until it answers
    a ping.  ``--delete-delay=0``: a deleted call leaves ``list`` at once (the default keeps it 30 s)."""
    binary = rtpengine_binary()
    if binary is None:
        raise RuntimeError("rtpengine is missing (Debian package rtpengine-daemon): bin/test installs it")
    directory = tempfile.mkdtemp(prefix="epcscf-rtpengine-")
    ng_port = free_port()
    tcp_ng_port = free_port()
    log_path = os.path.join(directory, "rtpengine.log")
    argv = [binary, "--config-file=none", "--table=-1", "--foreground", "--log-stderr", "--log-level=5",
            "--interface=127.0.0.1", f"--listen-ng=127.0.0.1:{ng_port}", f"--listen-tcp-ng=127.0.0.1:{tcp_ng_port}", f"--port-min={port_min}",
            f"--port-max={port_max}", "--delete-delay=0", "--timeout=60", "--num-threads=1",
            f"--pidfile={directory}/rtpengine.pid"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=directory, start_new_session=True)
    daemon = RtpengineDaemon(ng_port, (port_min, port_max), directory, process, log_path, tcp_ng_port=tcp_ng_port)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            text = daemon.log()
            daemon.stop()
            raise RuntimeError(f"rtpengine did not start (exit {process.poll()}):\n{text[-3000:]}")
        if port_bound(ng_port, "UDP"):
            try:
                if daemon.ng({"command": "ping"}, 0.5).get("result") == b"pong":
                    return daemon
            except OSError:
                pass
        time.sleep(0.05)
