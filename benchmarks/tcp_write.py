"""Benchmark: process CPU per loopback TCP round trip, Twisted's queued ``write`` vs ``write_now``.

Usage: ``.venv/bin/python benchmarks/tcp_write.py [--round-trips 20000]``

One process, asyncio reactor (as epcscf runs), one TCP connection on 127.0.0.1: the client
sends 600 octets (a SIP message's size), the server echoes them, 20,000 times, each side
writing with the method under test.  Each method runs in its own child process, twice,
alternating; the figure is ``time.process_time()`` per round trip (two writes, two reads),
so other load on the host changes it little.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def run_one(mode: str, round_trips: int) -> None:
    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet import defer, endpoints, protocol, reactor

    from epcscf.sip.tcp_write import write_now

    send = (lambda transport, data: transport.write(data)) if mode == "twisted" else write_now
    payload = b"x" * 600

    class Echo(protocol.Protocol):
        def dataReceived(self, data: bytes) -> None:  # noqa: N802
            send(self.transport, data)

    class Pinger(protocol.Protocol):
        count = 0

        def connectionMade(self) -> None:  # noqa: N802
            self.started = time.process_time()
            send(self.transport, payload)

        def dataReceived(self, data: bytes) -> None:  # noqa: N802
            self.count += 1
            if self.count >= round_trips:
                cpu = time.process_time() - self.started
                print(f"  {mode:8s} {cpu / round_trips * 1e6:6.1f} us CPU per round trip ({round_trips})")
                reactor.stop()
                return
            send(self.transport, payload)

    async def start() -> None:
        factory = protocol.Factory.forProtocol(Echo)
        port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        client = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        await endpoints.connectProtocol(client, Pinger())

    reactor.callWhenRunning(lambda: defer.ensureDeferred(start()))
    reactor.run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=20000)
    parser.add_argument("--child", choices=("twisted", "now"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_one(args.child, args.round_trips)
        return
    with open("/proc/loadavg") as f:
        print(f"TCP write on loopback, 600-octet ping-pong; loadavg {f.read().split()[:3]}")
    for mode in ("twisted", "now", "twisted", "now"):
        subprocess.run([sys.executable, __file__, "--child", mode, "--round-trips", str(args.round_trips)], check=True)


if __name__ == "__main__":
    main()
