"""Twisted's asyncio reactor on a uvloop loop, with child processes still reaped (benchmarks only).

uvloop is a drop-in loop for what the edge asks of it (``add_reader``/``add_writer`` for Twisted's
descriptors, ``call_at`` for its timer, aioice's datagram endpoints, signals with Python-level
handlers) but one thing: it takes ``signal.set_wakeup_fd`` for its own self-pipe when it starts
running, after Twisted handed it its SIGCHLD waker.  A ``spawnProcess`` child that closes its pipes
before it exits (the supervisor's workers can) is then never reaped: ``processEnded`` never comes.
uvloop also refuses ``add_signal_handler(SIGCHLD)`` (libuv keeps it for its own children), so the
reaping is asked for from a Python-level SIGCHLD handler, which runs as soon as uvloop reads its
self-pipe.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any


def install_uvloop_reactor(reactor_class: type | None = None) -> None:
    """Install ``reactor_class`` (default: ``AsyncioSelectorReactor``) on a new uvloop loop."""
    import uvloop
    from twisted.internet import process
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor
    from twisted.internet.main import installReactor

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    installReactor((reactor_class or AsyncioSelectorReactor)(loop))
    from twisted.internet import reactor

    def child_exited(signum: int, frame: Any) -> None:
        # A signal handler runs between any two bytecodes: reap from the loop, not from here.
        loop.call_soon_threadsafe(process.reapAllProcesses)

    def reap_through_python_handler() -> None:
        # After the reactor's own start-up install (a "during startup" trigger): replace its no-op.
        signal.signal(signal.SIGCHLD, child_exited)
        process.reapAllProcesses()

    reactor.callWhenRunning(reap_through_python_handler)


def loop_description(reactor: Any) -> str:
    loop = reactor._asyncioEventloop
    if type(loop).__module__.startswith("uvloop"):
        import uvloop

        return f"uvloop {uvloop.__version__}"
    return f"asyncio {type(loop).__name__}"
