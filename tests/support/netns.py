"""Hosts on a test network: separate network namespaces joined by veth pairs, one of them a NAT.

Each namespace is held open by a ``sleep`` started under ``unshare -n`` (nothing is mounted
under /run/netns and nothing outside the test's own namespaces changes): a veth pair is made
in one holder's namespace with its other end moved into another's (``ip link … netns PID``),
and a program runs in one with ``nsenter --net=/proc/PID/ns/net``.  ``remove`` kills the
holders; the kernel then deletes the namespaces and, with them, their veths and NAT rules.

The test process itself joins one namespace (``enter``: ``setns(2)`` of the calling thread,
the reactor's thread), so that what it binds — an in-process eP-CSCF — is a host of the
network; sockets keep the namespace they were made in, so an embedded core started while the
thread is briefly in another namespace (``inside``) stays a host of that one.

    network = TestNetwork()
    test.addCleanup(network.remove)
    edge, core = network.host("edge"), network.host("core")
    network.link(edge, "10.66.3.1/24", core, "10.66.3.2/24")
    network.nat(...)                       # masquerade, optionally with a random port per mapping

Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN), iproute2, util-linux's setpriv/unshare/nsenter and nft:
``require_network`` fails (never skips) when one is missing; ``bin/setup tests`` installs them.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

CLONE_NEWNET = 0x40000000  # <sched.h>; os.setns arrives only with Python 3.12
_libc = ctypes.CDLL(None, use_errno=True)
PROGRAMS = {"ip": "iproute2", "nsenter": "util-linux", "unshare": "util-linux", "setpriv": "util-linux", "nft": "nftables"}


def require_network(test: Any) -> None:
    """Fail (never skip) unless namespaces can be made here and every program is installed."""
    if os.geteuid() != 0:
        test.fail("network namespaces and veth pairs need root (bin/test runs the suite as root in its own namespace)")
    for program, package in PROGRAMS.items():
        if shutil.which(program) is None:
            test.fail(f"{program} is missing: bin/setup tests installs Debian's {package}")


def _setns(path: str) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(descriptor, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns({path}): {os.strerror(error)}")
    finally:
        os.close(descriptor)


@dataclass(eq=False)
class Host:
    """One network namespace: a host, router or NAT of the test network."""

    name: str
    holder: subprocess.Popen

    @property
    def namespace(self) -> str:
        return f"/proc/{self.holder.pid}/ns/net"

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this namespace (for spawnProcess)."""
        return ["nsenter", f"--net={self.namespace}", "--", *argv]

    def run(self, argv: Sequence[str], stdin: str | None = None) -> str:
        """Run a configuration command here; its output, or an AssertionError with its stderr."""
        done = subprocess.run(self.command(argv), input=stdin, capture_output=True, text=True, timeout=20)
        if done.returncode != 0:
            raise AssertionError(f"[{self.name}] {' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def udp_ports(self) -> set[int]:
        """Local ports of the UDP sockets bound in this namespace (/proc/PID/net/udp is per namespace)."""
        with open(f"/proc/{self.holder.pid}/net/udp") as table:
            return {int(line.split()[1].rsplit(":", 1)[1], 16) for line in table.readlines()[1:]}

    @contextmanager
    def inside(self) -> Iterator[None]:
        """The calling thread in this namespace for the block (what it binds stays here)."""
        previous = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(self.namespace)
            try:
                yield
            finally:
                _setns(f"/proc/self/fd/{previous}")
        finally:
            os.close(previous)


@dataclass(eq=False)
class TestNetwork:
    """Namespaces and the links between them; ``remove`` deletes all of it."""

    hosts: list[Host] = field(default_factory=list)
    _links: int = 0
    _left: list[int] = field(default_factory=list)

    def host(self, name: str) -> Host:
        """A new namespace with its loopback up."""
        # --pdeathsig: the holder dies with this process even if it is killed before ``remove``.
        holder = subprocess.Popen(
            ["setpriv", "--pdeathsig", "KILL", "unshare", "-n", "--", "sh", "-c", "ip link set lo up && echo up && exec sleep 3600"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        host = Host(name, holder)
        self.hosts.append(host)
        # The namespace exists once the shell runs in it (before that, /proc/PID/ns/net is ours).
        if holder.stdout is None or holder.stdout.readline().strip() != "up":
            raise AssertionError(f"namespace {name} did not start: {holder.stderr.read() if holder.stderr else ''}")
        return host

    def link(self, a: Host, a_address: str, b: Host, b_address: str) -> tuple[str, str]:
        """A veth pair between two namespaces with these addresses (CIDR); the two interfaces' names."""
        self._links += 1
        a_name, b_name = f"{a.name[:6]}{self._links}a", f"{b.name[:6]}{self._links}b"
        a.run(["ip", "link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", str(b.holder.pid)])
        for host, name, address in ((a, a_name, a_address), (b, b_name, b_address)):
            host.run(["ip", "address", "add", address, "dev", name])
            host.run(["ip", "link", "set", name, "up"])
        return a_name, b_name

    def route(self, host: Host, destination: str, via: str) -> None:
        host.run(["ip", "route", "add", destination, "via", via])

    def nat(self, box: Host, outside: str, random_ports: bool = False) -> None:
        """Forwarding on, and source NAT (masquerade, RFC 4787) of everything leaving by ``outside``.

        Plain masquerade keeps the inside port when it is free: one mapping per inside address
        and port whatever the destination ("endpoint-independent", RFC 4787 §4.1).  With
        ``random_ports`` every new flow gets a random outside port, so the mapping differs per
        destination: a symmetric NAT ("address and port-dependent mapping").  Replaces the
        box's earlier rules; flows already mapped keep their mapping (conntrack).
        """
        box.run(["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])  # per namespace
        box.run(["nft", "-f", "-"], stdin=(
            "table ip test_nat\ndelete table ip test_nat\n"
            "table ip test_nat {\n"
            "  chain postrouting {\n"
            "    type nat hook postrouting priority srcnat; policy accept;\n"
            f"    oifname \"{outside}\" masquerade{' random,fully-random' if random_ports else ''}\n"
            "  }\n"
            "}\n"
        ))

    def remove(self) -> None:
        """Kill the holders (the kernel deletes the namespaces, their veths and rules)."""
        for host in reversed(self.hosts):
            if host.holder.poll() is None:
                host.holder.send_signal(signal.SIGKILL)
            host.holder.wait(10)
            for stream in (host.holder.stdout, host.holder.stderr):
                if stream is not None:
                    stream.close()
        self.hosts.clear()
