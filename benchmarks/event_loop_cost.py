"""Benchmark: what the event loop itself costs per readable socket and per timer, on each loop.

Usage::

    .venv/bin/python benchmarks/event_loop_cost.py [--reactor edge|twisted] [--loop asyncio|uvloop]
                                                  [--round-trips 20000] [--timers 20000]

One process, the reactor named (the edge's ``EdgeReactor`` or Twisted's stock asyncio reactor) on
the loop named (uvloop: ``pip install uvloop`` into .venv; ``benchmarks/_uvloop_reactor.py``): two UDP
ports on 127.0.0.1 play ping-pong (each datagram one readable event, one ``doRead``, one
``write``), then a chain of ``callLater(0)`` timers.  Printed: CPU microseconds per round trip
and per timer, with ``/proc/loadavg``.  The edge's own code is not involved, so the differences
are the reactor's and the loop's share of every event the edge handles.

Deterministic form (instruction counts, whatever the host's load): run it under callgrind at
two sizes and divide the difference::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python benchmarks/event_loop_cost.py \\
        --reactor twisted --loop asyncio --round-trips 2000 --timers 1
    # … and --round-trips 12000 --timers 1: (I_12000 − I_2000) / 10000 per round trip;
    # --round-trips 1 --timers 2000 / 12000 the same per timer
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--round-trips", type=int, default=20000)
    parser.add_argument("--timers", type=int, default=20000)
    parser.add_argument("--reactor", choices=("edge", "twisted"), default="edge",
                        help="edge: epcscf.event_loop.EdgeReactor (no log context per I/O event); twisted: AsyncioSelectorReactor")
    options = parser.parse_args()

    from _uvloop_reactor import install_uvloop_reactor, loop_description
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    from epcscf.event_loop import EdgeReactor

    reactor_class = EdgeReactor if options.reactor == "edge" else AsyncioSelectorReactor
    if options.loop == "uvloop":
        install_uvloop_reactor(reactor_class)
    else:
        from twisted.internet.main import installReactor

        installReactor(reactor_class())
    from twisted.internet import reactor
    from twisted.internet.protocol import DatagramProtocol

    figures: dict[str, float] = {}

    class Pong(DatagramProtocol):
        def datagramReceived(self, data: bytes, address: tuple[str, int]) -> None:  # noqa: N802
            self.transport.write(data, address)

    class Ping(DatagramProtocol):
        remaining = options.round_trips

        def __init__(self, peer: tuple[str, int]) -> None:
            self.peer = peer

        def start(self) -> None:
            self.started = cpu_seconds()
            self.transport.write(b"x" * 200, self.peer)

        def datagramReceived(self, data: bytes, address: tuple[str, int]) -> None:  # noqa: N802
            self.remaining -= 1
            if self.remaining > 0:
                self.transport.write(data, self.peer)
                return
            figures["round trip"] = (cpu_seconds() - self.started) / options.round_trips
            start_timers()

    def start_timers() -> None:
        started = cpu_seconds()
        left = [options.timers]

        def tick() -> None:
            left[0] -= 1
            if left[0] > 0:
                reactor.callLater(0, tick)
                return
            figures["timer"] = (cpu_seconds() - started) / options.timers
            reactor.stop()

        reactor.callLater(0, tick)

    pong_port = reactor.listenUDP(0, Pong(), interface="127.0.0.1")
    ping = Ping(("127.0.0.1", pong_port.getHost().port))
    reactor.listenUDP(0, ping, interface="127.0.0.1")
    reactor.callWhenRunning(ping.start)
    reactor.run()
    with open("/proc/loadavg") as loadavg:
        load = " ".join(loadavg.read().split()[:3])
    print(
        f"{type(reactor).__name__} on {loop_description(reactor)}: {figures['round trip'] * 1e6:.1f} µs CPU per UDP round trip (2 readable events), "
        f"{figures['timer'] * 1e6:.1f} µs per callLater(0); loadavg {load}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
