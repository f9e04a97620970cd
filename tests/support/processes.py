"""Running real programs from tests: bounded waits, and nothing left behind."""

from __future__ import annotations

import inspect
import os
import sys
from types import FrameType
from typing import Callable

from twisted.internet import defer, reactor, task

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.dirname(sys.executable)


def child_env(**extra: str) -> dict[str, str]:
    """The test's environment with the checkout importable first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = TOP + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


async def wait_for(
    condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05, what: str | Callable[[], str] = ""
) -> None:
    """Poll ``condition`` on the real reactor until true; fail after ``timeout`` seconds
    (counted in ``interval`` steps) naming ``what`` (or the condition; a callable ``what`` is
    asked at the failure, for the state the condition was waiting on).

    Works from a coroutine driven by Twisted (an ``async def`` test, or a coroutine yielded
    by an ``inlineCallbacks`` test) and from one running as an asyncio task
    (``Deferred.fromFuture(asyncio.ensure_future(...))``).
    """
    import asyncio

    in_asyncio_task = _driven_by_asyncio(sys._getframe())
    waited = 0.0
    while not condition():
        if waited >= timeout:
            raise AssertionError(f"condition not met within {timeout} s: {(what() if callable(what) else what) or condition}")
        if in_asyncio_task:
            await asyncio.sleep(interval)
        else:
            await task.deferLater(reactor, interval, lambda: None)
        waited += interval


def _driven_by_asyncio(frame: FrameType) -> bool:
    """Whether the coroutine running ``frame`` (and those awaiting it) is an asyncio task's
    rather than Twisted's: the first frame below the coroutines is the driver's.

    ``asyncio.current_task()`` cannot tell: a Twisted-driven test resumed by a Deferred that an
    asyncio task fired (aioice's reader, say) runs inside that task.
    """
    caller: FrameType | None = frame
    while caller is not None and caller.f_code.co_flags & inspect.CO_COROUTINE:
        caller = caller.f_back
    return caller is None or caller.f_globals.get("__name__") != "twisted.internet.defer"


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def catches_signal(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has installed a handler for ``signum`` (``SigCgt`` in
    /proc/PID/status): a daemon that logs it is up may not have reached ``reactor.run``,
    which installs Twisted's SIGTERM handler, yet."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except OSError:
        pass
    return False


def run(argv: list[str], env: dict[str, str] | None = None, path: str | None = None) -> defer.Deferred:
    """(stdout, stderr, exit code) of a program run to completion."""
    from twisted.internet.utils import getProcessOutputAndValue

    return getProcessOutputAndValue(argv[0], argv[1:], env=env or child_env(), path=path or TOP)


def require_program(test, path: str, package: str) -> str:
    """Fail (never skip: CI must not pass without its peers) when a program is missing."""
    import shutil

    found = shutil.which(path)
    if found is None:
        test.fail(f"{path} is missing (Debian package {package}): bin/test installs it")
    return found
