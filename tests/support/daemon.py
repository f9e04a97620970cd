"""A ``twistd -n epcscf`` child process as an operator runs it: every kind of listener on port 0,
its log read as it is written, a WIC registering through it, SIGTERM."""

from __future__ import annotations

import os
import re
import signal
from typing import Any

from twisted.internet import defer, protocol, reactor

from tests.support.certificates import self_signed_certificate
from tests.support.deployment import DOMAIN, USERS, write_users
from tests.support.processes import wait_for
from tests.support.wic import WsSipClient, as_deferred

#: what Twisted writes per listener, connection factory and socket unless told otherwise
#: ("Starting factory <…>", "Starting protocol <…>", "SipWebSocketServerFactory starting on 8080",
#: "(UDP Port 5060 Closed)"): none of it may reach an info-level log
TWISTED_NOISE = re.compile(r"(Starting|Stopping) (factory|protocol)\b|\bstarting on \d+$|\bPort \d+ Closed\)", re.MULTILINE)


def write_daemon_config(directory: str, manhole_users: str, wwsf: bool = True) -> str:
    """An ini file with every listener epcscf has (SIP udp/tcp/tls, ws/wss, the WWSF over http and
    https, metrics, the console) and the embedded core, reached over TCP first."""
    users = write_users(directory)
    certificate, private_key, _ = self_signed_certificate(os.path.join(directory, "tls"))
    path = os.path.join(directory, "epcscf.ini")
    with open(path, "w") as handle:
        handle.write(
            f"""\
[service]
state_dir = {directory}/var
drain_timeout = 5
[sip]
listen = tcp:127.0.0.1:0, udp:127.0.0.1:0, tls:127.0.0.1:0
tls_certificate = {certificate}
tls_private_key = {private_key}
[ws]
listen = ws:127.0.0.1:0, wss:127.0.0.1:0
certificate = {certificate}
private_key = {private_key}
allow_missing_origin = true
[core]
mode = embedded
domain = {DOMAIN}
listen = tcp:127.0.0.1:0, udp:127.0.0.1:0
users = {users}
[media]
port_range = 41000-41099
[manhole]
enabled = true
port = 0
users = {manhole_users}
[metrics]
enabled = true
port = 0
[wwsf]
enabled = {str(wwsf).lower()}
listen = http:127.0.0.1:0, https:127.0.0.1:0
"""
        )
    return path


class Daemon(protocol.ProcessProtocol):
    """``twistd -n epcscf --config …``: stdout and stderr together in ``output``."""

    def __init__(self) -> None:
        self.output = ""
        self.ended: defer.Deferred = defer.Deferred()

    @classmethod
    def start(cls, twistd: str, config: str, cwd: str, env: dict[str, str]) -> "Daemon":
        daemon = cls()
        argv = [twistd, "--nodaemon", "--pidfile=", "epcscf", "--config", config]
        daemon.process = reactor.spawnProcess(daemon, twistd, argv, env=env, path=cwd)
        return daemon

    def outReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted API)
        self.output += data.decode("utf-8", "replace")

    errReceived = outReceived  # noqa: N815

    def processEnded(self, reason: Any) -> None:  # noqa: N802
        self.ended.callback((reason.value.exitCode, reason.value.signal))

    def kill(self) -> None:
        """Cleanup: whatever state the test left it in."""
        if not self.ended.called:
            self.process.signalProcess("KILL")

    async def ws_url(self) -> str:
        await wait_for(lambda: "eP-CSCF listening on" in self.output or self.ended.called, timeout=30)
        if self.ended.called:
            raise AssertionError(f"twistd epcscf ended at start:\n{self.output}")
        return "ws://" + re.search(r"eP-CSCF listening on .*\bws:(127\.0\.0\.1:\d+)", self.output).group(1)

    async def stop(self) -> tuple[int | None, int | None]:
        """SIGTERM; (exit code, signal).  twistd stops the reactor, then ends itself with the
        signal it received (as a process killed by it would: systemd counts that as success)."""
        os.kill(self.process.pid, signal.SIGTERM)
        return await self.ended


async def register_alice(url: str) -> int:
    """A WIC registers over the WebSocket (digest against the embedded core); the final status."""

    async def register() -> int:
        client = WsSipClient(url, "alice", USERS["alice"], DOMAIN)
        await client.connect()
        try:
            return (await client.register()).status
        finally:
            await client.close()

    return await as_deferred(register())
