"""Run a Node.js peer script (JsSIP) as a child process and read its JSON-lines events."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from typing import Any

from twisted.internet import protocol, reactor

from tests.support.processes import TOP


def require_node_modules(test: Any, *packages: str) -> None:
    """Fail (never skip) when the JS peers are missing: bin/test installs them."""
    if shutil.which("node") is None:
        test.fail("node is not installed: bin/test installs Debian's nodejs")
    for package in packages:
        if not os.path.isdir(os.path.join(TOP, "node_modules", package)):
            test.fail(f"npm package {package} is missing: bin/test runs npm ci")


class NodePeer(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.events: asyncio.Queue = asyncio.Queue()
        self.log: list[dict[str, Any]] = []
        self.stderr = b""
        self._buffer = b""
        self.ended: asyncio.Future = asyncio.get_event_loop().create_future()

    def outReceived(self, data: bytes) -> None:  # noqa: N802
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            if line.strip():
                try:
                    event = json.loads(line)
                except ValueError:
                    event = {"event": "output", "text": line.decode(errors="replace")}
                self.log.append(event)
                self.events.put_nowait(event)

    def errReceived(self, data: bytes) -> None:  # noqa: N802
        self.stderr += data

    def processEnded(self, reason: Any) -> None:  # noqa: N802
        if not self.ended.done():
            self.ended.set_result(getattr(reason.value, "exitCode", None))

    async def wait_for(self, name: str, timeout: float = 15.0, **fields: Any) -> dict[str, Any]:
        async def scan() -> dict[str, Any]:
            while True:
                event = await self.events.get()
                if event.get("event") == name and all(event.get(k) == v for k, v in fields.items()):
                    return event
                if event.get("event") in ("error", "timeout"):
                    raise AssertionError(f"peer failed: {event}; stderr: {self.stderr[-2000:]!r}")

        try:
            return await asyncio.wait_for(scan(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"no {name!r} event within {timeout} s; events so far: {self.log[-20:]}; stderr: {self.stderr[-2000:]!r}"
            ) from None


def start_node_peer(test: Any, script: str, *args: str) -> NodePeer:
    peer = NodePeer()
    path = os.path.join(TOP, "tests", "peers", script)
    process = reactor.spawnProcess(peer, shutil.which("node") or "node", ["node", path, *args], env=dict(os.environ), path=TOP)

    async def stop() -> None:
        if not peer.ended.done():
            process.signalProcess("KILL")
        await peer.ended

    from tests.support.wic import as_deferred

    test.addCleanup(lambda: as_deferred(stop()))
    return peer
