"""Benchmark: one call's ICE session in process — the eP-CSCF's full ICE agent (``IceAgent`` on
aioice, controlled, as toward a WIC that offered) against a real peer: gathering → checks →
nominated → closed.  The ICE share of a call alone, repeatable, for callgrind.

Usage::

    .venv/bin/python benchmarks/ice_path.py [--sessions 200] [--peer wic|aioice]
        [--resends 0] [--rto 0.05] [--hold 0.05] [--profile] [--top 25]

The eP-CSCF side is what a node runs per call: an ``IceAgent`` in full mode with a port pool and a
``SocketShelf`` (sockets parked between sessions, so a measured session takes a parked socket, as
on a busy node) and the media timers on one ``TimerQueue``, on the asyncio reactor, consent
started once a pair is selected; ``--hold`` later (the call until its BYE) the agent closes.  The peer runs
in a thread of its own (its own asyncio loop), so what is measured is the eP-CSCF's thread alone:

- ``--peer wic`` (default): the Node generator's STUN (``benchmarks/wic_calls.mjs``, in Python as
  ``benchmarks/_py_calls.IceSocket``): a controlling agent that sends nominating checks
  (USE-CANDIDATE, RFC 8445 §7.2.2 as that generator does) with the RFC 8445 §14.3 RTO, and
  answers the eP-CSCF's own check;
- ``--peer aioice``: an aioice ``Connection``, controlling, regular nomination (RFC 8445 §8.1.1).

What a loaded generator adds per call (``docs/performance.md``, "400 calls/s: the two modes":
3.5 resent checks per call), on demand: ``--resends N``: after the pair is selected, the WIC peer
sends N more nominating checks, each a new transaction (RFC 8445 §14.3 resends; Chrome's pings
are the same), and waits for each answer.  ``--rto``: the WIC peer's first wait for an answer
(under callgrind, 2 s, so that a slowed edge gets no resend and every session does the same).

Printed: CPU per measured session (``time.thread_time``), STUN counts per session, and with
``--profile`` the Python function calls per session (cProfile) and the top functions.  The
deterministic figure is callgrind's instruction count of the eP-CSCF's thread: run the same
command with ``--sessions 20`` and ``--sessions 120`` (each runs as many warm-up sessions first)
and divide the difference by 200 (see ``docs/performance.md``, "The ICE share of a call").  Run
it inside ``unshare -n sh -c 'ip link set lo up && exec …'`` like the other benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import threading
import time
from typing import Any

from twisted.internet import asyncioreactor

asyncioreactor.install(asyncio.new_event_loop())

from twisted.internet import defer, reactor  # noqa: E402
from twisted.internet import task  # noqa: E402
from twisted.internet.task import deferLater  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import aioice  # noqa: E402
from _py_calls import IceSocket  # noqa: E402
from aioice import stun  # noqa: E402

from epcscf.ice import IceAgent, IceAgentConfig, UdpPortPool  # noqa: E402
from epcscf.ice.shelf import SocketShelf  # noqa: E402
from epcscf.memory import tune_collector  # noqa: E402
from epcscf.sip.timers import TimerQueue  # noqa: E402

LOCAL = "127.0.0.1"
PORTS = (44000, 45999)


class WicPeer:
    """The Node generator's STUN side (``IceSocket``) on its own loop in its own thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, rto: float) -> None:
        self.loop = loop
        self.rto = rto
        binding = loop.create_datagram_endpoint(IceSocket, local_addr=(LOCAL, 0))
        self.ice: IceSocket = asyncio.run_coroutine_threadsafe(binding, loop).result()[1]

    def credentials(self) -> tuple[str, str, str]:
        return self.ice.ufrag, self.ice.pwd, f"1 1 udp 2122260223 {LOCAL} {self.ice.port} typ host"

    def begin(self) -> None:
        pass  # the same socket and credentials every session: reset on the WIC's loop after each

    async def _connect(self, host: str, port: int, ufrag: str, pwd: str, resends: int) -> None:
        try:
            await self.ice.nominate((host, port), ufrag, pwd, 5.0, self.rto)
            await asyncio.wait_for(self.ice.checked_by_peer.wait(), 5.0)
            for _ in range(resends):
                await self.ice.nominate((host, port), ufrag, pwd, 5.0, self.rto)
        finally:
            self.ice.reset()  # for the next session (whose check may come before its connect)

    def connect(self, host: str, port: int, ufrag: str, pwd: str, resends: int) -> defer.Deferred:
        future = asyncio.run_coroutine_threadsafe(self._connect(host, port, ufrag, pwd, resends), self.loop)
        return defer.Deferred.fromFuture(asyncio.wrap_future(future, loop=reactor._asyncioEventloop))  # type: ignore[attr-defined]

    def close(self) -> None:
        pass


class AioicePeer:
    """An aioice ``Connection`` (controlling, regular nomination) on its own loop in its own thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, rto: float) -> None:
        self.loop = loop
        self.connection: aioice.Connection | None = None

    async def _new(self) -> None:
        if self.connection is not None:
            await self.connection.close()
        self.connection = aioice.Connection(ice_controlling=True, components=1, use_ipv6=False)
        self.connection.remote_is_lite = False
        # Gather on the loopback only (aioice would walk every interface of the host).
        self.connection._local_candidates += await self.connection.get_component_candidates(1, [LOCAL])
        self.connection._local_candidates_end = True
        self.connection._local_candidates_start = True

    def begin(self) -> None:
        asyncio.run_coroutine_threadsafe(self._new(), self.loop).result()

    def credentials(self) -> tuple[str, str, str]:
        assert self.connection is not None
        return self.connection.local_username, self.connection.local_password, self.connection.local_candidates[0].to_sdp()

    async def _connect(self, host: str, port: int, ufrag: str, pwd: str) -> None:
        assert self.connection is not None
        self.connection.remote_username, self.connection.remote_password = ufrag, pwd
        await self.connection.add_remote_candidate(aioice.Candidate(
            foundation="1", component=1, transport="udp", priority=2130706431, host=host, port=port, type="host"))
        await self.connection.add_remote_candidate(None)
        await self.connection.connect()

    def connect(self, host: str, port: int, ufrag: str, pwd: str, resends: int) -> defer.Deferred:
        future = asyncio.run_coroutine_threadsafe(self._connect(host, port, ufrag, pwd), self.loop)
        return defer.Deferred.fromFuture(asyncio.wrap_future(future, loop=reactor._asyncioEventloop))  # type: ignore[attr-defined]

    def close(self) -> None:
        if self.connection is not None:
            asyncio.run_coroutine_threadsafe(self.connection.close(), self.loop).result()


async def one_session(config: IceAgentConfig, pool: UdpPortPool, shelf: SocketShelf, timers: TimerQueue, peer: Any,
                      resends: int, hold: float) -> IceAgent:
    peer.begin()
    agent = IceAgent(config, controlling=False, clock=timers, pool=pool, shelf=shelf)
    await agent.gather()
    ufrag, pwd, candidate = peer.credentials()
    agent.set_remote(ufrag, pwd, [candidate], end_of_candidates=True)
    selected = agent.start()
    host, port = agent.default_address  # type: ignore[misc]
    local = agent.local_credentials
    await peer.connect(host, port, local.ufrag, local.pwd, resends)
    await selected
    await deferLater(reactor, hold, lambda: None)  # the call, until its BYE
    await agent.close()
    return agent


async def run(sessions: int, peer_kind: str, resends: int, profile: bool, top: int, rto: float, hold: float) -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="peer", daemon=True)
    thread.start()
    peer = (WicPeer if peer_kind == "wic" else AioicePeer)(loop, rto)
    tune_collector(reactor)  # the collector as a node runs it
    config = IceAgentConfig(bind_addresses=(LOCAL,), port_range=PORTS, mode="full", connect_timeout=5.0)
    pool = UdpPortPool(*PORTS)
    shelf = SocketShelf(pool, reactor)
    timers = TimerQueue(reactor)  # the media timers' one queue, as a node's CallMediaEngine has
    # A busy node's queue always holds other calls' timers: one far entry keeps it armed, so that
    # a call's first timer and its last cancel do not re-arm the reactor as they would when idle.
    others = timers.callLater(3600, lambda: None)
    for _ in range(sessions):  # warm-up: imports, memos, and a parked socket for what follows
        await one_session(config, pool, shelf, timers, peer, resends, hold)
    await deferLater(reactor, 1.2, lambda: None)  # past the shelf's quarantine
    profiler = cProfile.Profile() if profile else None
    received = sent = rejected = 0
    started = time.thread_time()
    if profiler is not None:
        profiler.enable()
    for _ in range(sessions):
        agent = await one_session(config, pool, shelf, timers, peer, resends, hold)
        received += agent.stats.checks_received
        sent += agent.stats.checks_sent
        rejected += agent.stats.checks_rejected
    if profiler is not None:
        profiler.disable()
    cpu = time.thread_time() - started
    print(f"{sessions} ICE sessions (peer {peer_kind}, resends {resends}): "
          f"{1000 * cpu / sessions:.3f} ms CPU per session{' (under cProfile)' if profile else ''}; "
          f"checks received {received / sessions:.2f}, sent {sent / sessions:.2f}, rejected {rejected / sessions:.2f} "
          f"per session; loadavg {open('/proc/loadavg').read().split(' ', 3)[:3]}")
    if profiler is not None:
        stats = pstats.Stats(profiler)
        total = sum(entry[1] for entry in stats.stats.values())  # type: ignore[attr-defined]
        print(f"{total / sessions:.0f} Python function calls per session; the top by calls ({sessions} sessions):")
        stats.strip_dirs().sort_stats("ncalls").print_stats(top)
        if os.environ.get("ICE_PATH_PSTATS"):
            stats.dump_stats(os.environ["ICE_PATH_PSTATS"])
    peer.close()
    others.cancel()
    shelf.close()
    loop.call_soon_threadsafe(loop.stop)
    thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--peer", choices=("wic", "aioice"), default="wic")
    parser.add_argument("--resends", type=int, default=0, help="extra nominating checks per session (WIC peer)")
    parser.add_argument("--rto", type=float, default=0.05,
                        help="the WIC peer's first check timeout, s (RFC 8445 §14.3; longer under callgrind: no resend)")
    parser.add_argument("--hold", type=float, default=0.05, help="s from the pair selected to the close (the BYE)")
    parser.add_argument("--profile", action="store_true", help="count Python function calls (cProfile)")
    parser.add_argument("--top", type=int, default=25)
    options = parser.parse_args()
    sessions = run(options.sessions, options.peer, options.resends, options.profile, options.top, options.rto, options.hold)
    # task.react runs the reactor until the Deferred fires, and exits non-zero (traceback logged) if it
    # failed; the sessions start once the reactor runs (asyncio code needs its running loop).
    task.react(lambda _: deferLater(reactor, 0, defer.Deferred.fromCoroutine, sessions))

if __name__ == "__main__":
    main()
