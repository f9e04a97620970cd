"""In-process benchmark: proxied MESSAGE transactions/s on one core, no sockets.

Run: ``.venv/bin/python benchmarks/sip_proxy_inprocess.py [transactions] [--profile]``.

Each transaction is a MESSAGE datagram (the one ``tests/sipp/uac_message.xml`` sends) fed
to the proxy's ``UdpTransport.datagramReceived``; it goes through the real
``TransportManager`` → ``TransactionLayer`` → ``StatefulProxy`` (``DefaultRoutingPolicy``,
numeric static next hop); the forwarded MESSAGE the proxy writes is answered with a 200
(what ``uas_message.xml`` sends), fed back the same way, and the 200 the proxy writes
upstream completes the transaction.  Rates are per CPU second of this process.  The clock is a heap of timers advanced by the
simulated rate (``--rate``, 2,000/s) so that Timers E/F/J/K are armed, cancelled and fire
as they would under that load.  Much less sensitive to machine load than the sipp run.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import heapq
import os
import pstats
import re
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from epcscf.sip.proxy import ProxySettings, StatefulProxy  # noqa: E402
from epcscf.sip.proxy_policy import DefaultRoutingPolicy  # noqa: E402
from epcscf.sip.resolver import NextHopResolver  # noqa: E402
from epcscf.sip.transaction import TransactionLayer  # noqa: E402
from epcscf.sip.transaction_machine import TimerSettings  # noqa: E402
from epcscf.sip.transport import TransportManager  # noqa: E402

# Five-digit ports, as sipp's (the parser's fast paths must cover them).
PROXY = ("127.0.0.1", 15060)
UAC = ("127.0.0.1", 15070)
UAS = ("127.0.0.1", 15080)


class _Call:
    __slots__ = ("time", "function", "args", "cancelled", "called", "clock")

    def __init__(self, clock: "HeapClock", when: float, function: Callable[..., Any], args: tuple) -> None:
        self.clock, self.time, self.function, self.args = clock, when, function, args
        self.cancelled = self.called = False

    def getTime(self) -> float:
        return self.time

    def active(self) -> bool:
        return not (self.cancelled or self.called)

    def cancel(self) -> None:
        self.cancelled = True

    def reset(self, seconds: float) -> None:
        self.cancelled = True
        replacement = self.clock.callLater(seconds, self.function, *self.args)
        self.time, self.cancelled = replacement.time, False
        replacement.cancelled = True  # keep this object as the live handle
        self.clock.callLater(seconds, self._fire_if_live)

    def _fire_if_live(self) -> None:
        if self.active():
            self.called = True
            self.function(*self.args)


class HeapClock:
    """IReactorTime with a heap (O(log n) per timer, like asyncio's)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, _Call]] = []
        self._seq = 0

    def seconds(self) -> float:
        return self.now

    def callLater(self, delay: float, function: Callable[..., Any], *args: Any, **kw: Any) -> _Call:
        call = _Call(self, self.now + delay, function, args)
        self._seq += 1
        heapq.heappush(self._heap, (call.time, self._seq, call))
        return call

    def advance(self, seconds: float) -> None:
        self.now += seconds
        heap = self._heap
        while heap and heap[0][0] <= self.now:
            _, _, call = heapq.heappop(heap)
            if call.active():
                call.called = True
                call.function(*call.args)

    def getDelayedCalls(self) -> list[_Call]:
        return [c for _, _, c in self._heap if c.active()]


class _Host:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port


class FakeUdpSocket:
    """The Twisted UDP transport the protocol writes to: remembers the last datagram per peer."""

    def __init__(self, address: tuple[str, int]) -> None:
        self._address = address
        self.sent: dict[tuple[str, int], bytes] = {}

    def getHost(self) -> _Host:
        return _Host(*self._address)

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent[addr] = data


class FakeReactor:
    def __init__(self, clock: HeapClock) -> None:
        self.clock = clock
        self.sockets: list[FakeUdpSocket] = []

    def seconds(self) -> float:
        return self.clock.seconds()

    def callLater(self, *args: Any, **kw: Any) -> _Call:
        return self.clock.callLater(*args, **kw)

    def listenUDP(self, port: int, protocol: Any, interface: str = "") -> Any:
        socket = FakeUdpSocket((interface, port))
        self.sockets.append(socket)
        protocol.makeConnection(socket)
        return socket


def message(i: int) -> bytes:
    body = "hello\r\n"
    return (
        f"MESSAGE sip:bench@127.0.0.1:15060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:15070;branch=z9hG4bK-4242-{i}-0;rport\r\n"
        f"From: <sip:sipp@127.0.0.1:15070>;tag=4242SIPpTag00{i}\r\n"
        f"To: <sip:bench@127.0.0.1:15060>\r\n"
        f"Call-ID: {i}-4242@127.0.0.1\r\n"
        f"CSeq: 1 MESSAGE\r\n"
        f"Max-Forwards: 70\r\n"
        f"Content-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


_HEADER_RE = re.compile(rb"^(Via|From|To|Call-ID|CSeq): [^\r\n]*\r\n", re.M | re.I)


def answer(forwarded: bytes, i: int) -> bytes:
    """What sipp's uas_message.xml sends: the request's Via values joined on one line (as
    sipp's ``[last_Via:]`` does), From, To with a tag, Call-ID and CSeq."""
    vias: list[bytes] = []
    lines = []
    for match in _HEADER_RE.finditer(forwarded):
        line = match.group(0)
        name = line[: line.index(b":")].lower()
        if name == b"via":
            vias.append(line[line.index(b":") + 2 : -2])
            continue
        if name == b"to":
            line = line[:-2] + f";tag=4242SIPpTag01{i}\r\n".encode()
        lines.append(line)
    return b"SIP/2.0 200 OK\r\nVia: " + b", ".join(vias) + b"\r\n" + b"".join(lines) + b"Content-Length: 0\r\n\r\n"


def build() -> tuple[HeapClock, Any]:
    clock = HeapClock()
    reactor = FakeReactor(clock)
    holder: dict[str, Any] = {}
    transports = TransportManager(reactor, lambda m, c: holder["layer"].receive(m, c), clock=clock)
    transports.listen(f"udp:{PROXY[0]}:{PROXY[1]}")
    resolver = NextHopResolver(None)  # numeric next hop: never asks DNS
    policy = DefaultRoutingPolicy(transports, resolver, [f"sip:{UAS[0]}:{UAS[1]}"])
    proxy = StatefulProxy(clock, transports, resolver, policy, ProxySettings())
    layer = TransactionLayer(clock, proxy, lambda connection: TimerSettings())
    holder["layer"] = layer
    proxy.transactions = layer
    protocol = transports._udp[0]
    return clock, (protocol, reactor.sockets[0], layer, proxy)


def run(count: int, rate: float, requests: list[bytes], clock: HeapClock, parts: Any) -> float:
    protocol, socket, layer, proxy = parts
    step = 1.0 / rate
    # CPU time of this process: what other processes on a shared machine do not change.
    start = time.process_time()
    for i in range(count):
        socket.sent.clear()
        protocol.datagramReceived(requests[i], UAC)
        forwarded = socket.sent.pop(UAS)
        protocol.datagramReceived(answer(forwarded, i), UAS)
        if not socket.sent.get(UAC, b"").startswith(b"SIP/2.0 200"):
            raise SystemExit(f"transaction {i}: no 200 upstream")
        clock.advance(step)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("count", nargs="?", type=int, default=20000)
    parser.add_argument("--rate", type=float, default=2000.0, help="simulated arrival rate (clock step)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the run")
    args = parser.parse_args()
    clock, parts = build()
    # The same collector settings as benchmarks/sip_proxy.py's proxy process (BENCH_GC).
    gc_mode = os.environ.get("BENCH_GC", "tuned")
    if gc_mode == "off":
        gc.disable()
    elif gc_mode == "tuned":
        gc.freeze()
        gc.set_threshold(100_000, 50, 100)
    requests = [message(i) for i in range(args.count + 1000)]
    run(1000, args.rate, requests[args.count:], clock, parts)  # warm up (different Call-IDs)
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        elapsed = run(args.count, args.rate, requests, clock, parts)
        profiler.disable()
        pstats.Stats(profiler).sort_stats(os.environ.get("BENCH_SORT", "tottime")).print_stats(int(os.environ.get("BENCH_LINES", "35")))
    else:
        elapsed = run(args.count, args.rate, requests, clock, parts)
    # answer() (the fake UAS) is timed too; report it so the proxy's own share is clear.
    forwarded = message(0)
    t0 = time.process_time()
    for i in range(2000):
        answer(forwarded, i)
    uas_cost = (time.process_time() - t0) / 2000
    per_tx = elapsed / args.count - uas_cost
    print(f"{args.count} proxied MESSAGE transactions in {elapsed:.2f} s CPU: {args.count / elapsed:,.0f} tx/s "
          f"({1 / per_tx:,.0f} tx/s without the fake UAS); live transactions {len(layer_of(parts).transactions())}")


def layer_of(parts: Any) -> Any:
    return parts[2]


if __name__ == "__main__":
    main()
