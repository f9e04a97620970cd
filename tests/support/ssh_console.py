"""Drive the manhole with the real OpenSSH client, as an operator would."""

from __future__ import annotations

import os
import re
import shutil
import tempfile

from twisted.internet import defer, protocol, reactor

PROMPT = b">>> "
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]")


class _ConsoleSession(protocol.ProcessProtocol):
    """Types each line after a prompt; collects everything shown."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = list(lines)
        self.output = b""
        self.prompts_seen = 0
        self.finished: defer.Deferred[tuple[int, bytes]] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:  # noqa: N802
        self.output += data
        # The manhole redraws the prompt on every keystroke; a prompt that starts the screen or
        # a line is a fresh one (the previous line has finished running).
        screen = ANSI.sub(b"", self.output)
        prompts = int(PROMPT in screen.split(b"\n", 1)[0]) + screen.count(b"\n" + PROMPT)
        while prompts > self.prompts_seen:
            self.prompts_seen += 1
            if self.lines:
                self.transport.write(self.lines.pop(0).encode() + b"\r")
            else:
                # Done: the manhole cannot take EOF politely, so hang up.
                self.transport.signalProcess("TERM")
                break

    errReceived = outReceived

    def processEnded(self, reason) -> None:  # noqa: N802
        code = getattr(reason.value, "exitCode", None)
        self.finished.callback((code if code is not None else -1, ANSI.sub(b"", self.output)))


def ssh_invocation(port: int, user: str, password: str) -> tuple[list[str], dict[str, str], str]:
    """The OpenSSH client's argv and environment logging ``user`` in with ``password`` (through an
    askpass script in a new directory, the third item: the caller removes it)."""
    directory = tempfile.mkdtemp(prefix="epcscf-ssh-")
    askpass = os.path.join(directory, "askpass")
    with open(askpass, "w") as handle:
        handle.write(f"#!/bin/sh\necho '{password}'\n")
    os.chmod(askpass, 0o700)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": directory,
        "SSH_ASKPASS": askpass,
        "SSH_ASKPASS_REQUIRE": "force",
        "DISPLAY": ":0",
        "TERM": "dumb",
    }
    argv = [
        "ssh", "-tt", "-p", str(port),
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no",
        "-o", "NumberOfPasswordPrompts=1", "-o", "LogLevel=ERROR",
        f"{user}@127.0.0.1",
    ]
    return argv, env, directory


def run_console(port: int, user: str, password: str, lines: list[str], timeout: float = 20.0) -> defer.Deferred:
    """Log in over SSH, type ``lines`` one per prompt; fires with (exit code, screen text)."""
    argv, env, directory = ssh_invocation(port, user, password)
    session = _ConsoleSession(lines)
    process = reactor.spawnProcess(session, "/usr/bin/ssh", argv, env=env)
    guard = reactor.callLater(timeout, lambda: process.signalProcess("KILL"))

    def done(result):
        if guard.active():
            guard.cancel()
        shutil.rmtree(directory, ignore_errors=True)
        return result

    return session.finished.addBoth(done)
