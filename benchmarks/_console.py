"""Run lines in a running epcscf's SSH console (the manhole) from a benchmark, synchronously.

The manhole is an interactive terminal (``twisted.conch.manhole``), so this drives the real
OpenSSH client the way ``tests/support/ssh_console.py`` does: one line typed per prompt, the
screen collected, ANSI sequences stripped.  Keep typed lines short (the manhole redraws the
line on every keystroke): to run more, write a file and type ``exec(open(path).read())``.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import tempfile
import time

PROMPT = b">>> "
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]")


def run_lines(port: int, user: str, password: str, lines: list[str], timeout: float = 60.0) -> str:
    """Log in, type ``lines`` one per prompt, hang up after the last prompt; the screen text."""
    directory = tempfile.mkdtemp(prefix="epcscf-console-")
    askpass = os.path.join(directory, "askpass")
    with open(askpass, "w") as handle:
        handle.write(f"#!/bin/sh\necho '{password}'\n")
    os.chmod(askpass, 0o700)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": directory, "SSH_ASKPASS": askpass,
        "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0", "TERM": "dumb",
    }
    argv = [
        "ssh", "-tt", "-p", str(port), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no",
        "-o", "NumberOfPasswordPrompts=1", "-o", "LogLevel=ERROR", f"{user}@127.0.0.1",
    ]
    process = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pending = list(lines)
    output = b""
    seen = 0
    deadline = time.monotonic() + timeout
    try:
        assert process.stdout is not None and process.stdin is not None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 0.2)
            if not ready:
                continue
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                break
            output += chunk
            screen = ANSI.sub(b"", output)
            # A prompt that starts the screen or a line is a fresh one: the previous line ran.
            prompts = int(PROMPT in screen.split(b"\n", 1)[0]) + screen.count(b"\n" + PROMPT)
            if prompts > seen:
                seen = prompts
                if not pending:
                    break
                process.stdin.write(pending.pop(0).encode() + b"\r")
                process.stdin.flush()
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        os.remove(askpass)
        os.rmdir(directory)
    if pending:
        raise RuntimeError(f"console: {len(pending)} line(s) not run within {timeout:g} s:\n"
                           + ANSI.sub(b"", output)[-2000:].decode(errors="replace"))
    return ANSI.sub(b"", output).decode(errors="replace")
