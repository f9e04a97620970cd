"""Run lines in a running epcscf's SSH console (the manhole) from a benchmark, synchronously.

The manhole is an interactive terminal (``twisted.conch.manhole``), so this drives the real
OpenSSH client the way ``tests/support/ssh_console.py`` does: one line typed per prompt, the
screen collected, ANSI sequences stripped.  Keep typed lines short (the manhole redraws the
line on every keystroke): to run more, write a file and type ``exec(open(path).read())``.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support.ssh_console import ANSI, PROMPT, ssh_invocation  # noqa: E402


def run_lines(port: int, user: str, password: str, lines: list[str], timeout: float = 60.0) -> str:
    """Log in, type ``lines`` one per prompt, hang up after the last prompt; the screen text."""
    argv, env, directory = ssh_invocation(port, user, password)
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
        shutil.rmtree(directory, ignore_errors=True)
    if pending:
        raise RuntimeError(f"console: {len(pending)} line(s) not run within {timeout:g} s:\n"
                           + ANSI.sub(b"", output)[-2000:].decode(errors="replace"))
    return ANSI.sub(b"", output).decode(errors="replace")
