"""In-process benchmark: a REGISTER refresh through the whole edge, driven one step at a time.

Run (in a loopback-only namespace)::

    unshare -n sh -c 'ip link set lo up && exec .venv/bin/python benchmarks/ws_register_inprocess.py [refreshes] [--profile]'

The path is the one ``ws_register.py`` measures with real processes: a WIC's REGISTER in a
masked WebSocket frame → the edge (``PcscfNode``: flows, admission, registrations, proxy) →
UDP to the core → the core's 200 → the edge → a WebSocket frame back to the WIC.  The sockets
are real (the WebSocket and UDP ports of a started ``PcscfNode``, the WICs' TCP sockets, the
core's UDP socket) but nothing waits on a loop: each step calls the reader the reactor would
call (``doRead``) and reads what the edge wrote.  So every refresh runs the same code in the
same order, and ``valgrind --tool=callgrind`` counts the same instructions whatever the load:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python benchmarks/ws_register_inprocess.py 3000
    # instructions per refresh = (3000-run − 1000-run) / 2000

or, counting the measured refreshes only (start-up, warm-up and exit left out; one run)::

    valgrind --tool=callgrind --toggle-collect=sys_call_tracing --callgrind-out-file=/dev/null \
        .venv/bin/python benchmarks/ws_register_inprocess.py 2000
    # instructions per refresh = I refs / 2000

and with ``--edge-only`` the same counts the edge's own steps (its reads of the WebSocket and
UDP sockets and all they lead to, its queued writes, its timers) without the harness's WICs,
masking and registrar.

The core answers as ``benchmarks/sipp/registrar.xml`` does (the request's Vias on one line,
From, To with a tag, Call-ID, CSeq, Path, Contact with expires, Service-Route).  Timers go to a
heap clock advanced by the simulated rate (``--rate``), so that the transactions' timers are
armed, cancelled and fired as under that load.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import secrets
import socket
import sys
import tempfile
import time
from typing import Any

from twisted.internet import asyncioreactor

asyncioreactor.install()

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))

import heapq  # noqa: E402

from _cycle_probe import CycleCensus  # noqa: E402
from sip_proxy_inprocess import HeapClock, _Call  # noqa: E402
from twisted.internet import reactor as real_reactor  # noqa: E402

from epcscf import config as config_module  # noqa: E402
from epcscf.pcscf.node import PcscfNode  # noqa: E402

DOMAIN = "ims.localdomain"


class _LazyCall(_Call):
    """A heap clock's call whose ``reset`` only moves its time, as Twisted's ``DelayedCall``
    does (the reactor re-sorts a moved call when its old time comes): a registration's
    expiry is reset by every refresh, and the clock must not cost more than a reactor."""

    __slots__ = ()

    def reset(self, seconds: float) -> None:
        self.time = self.clock.now + seconds


class LazyHeapClock(HeapClock):
    def callLater(self, delay: float, function: Any, *args: Any, **kw: Any) -> _LazyCall:  # noqa: N802
        call = super().callLater(delay, function, *args, **kw)
        call.__class__ = _LazyCall  # the same slots: only ``reset`` differs
        return call  # type: ignore[return-value]

    def advance(self, seconds: float) -> None:
        self.now += seconds
        heap = self._heap
        while heap and heap[0][0] <= self.now:
            when, _, call = heapq.heappop(heap)
            if not call.active():
                continue
            if call.time > when:  # reset to later meanwhile: back in at its new time
                self._seq += 1
                heapq.heappush(heap, (call.time, self._seq, call))
                continue
            call.called = True
            call.function(*call.args)


class BenchReactor:
    """The real reactor for sockets, a heap clock for time (nothing runs the loop)."""

    def __init__(self, clock: LazyHeapClock) -> None:
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        return getattr(real_reactor, name)

    def seconds(self) -> float:
        return self._clock.seconds()

    def callLater(self, *args: Any, **kw: Any) -> Any:  # noqa: N802
        return self._clock.callLater(*args, **kw)


def masked_frame(payload: bytes) -> bytes:
    """One final masked text frame (RFC 6455 §5.2, §5.3), payload < 64 KiB."""
    mask = secrets.token_bytes(4)
    length = len(payload)
    head = bytes((0x81, 0x80 | length)) if length < 126 else bytes((0x81, 0x80 | 126)) + length.to_bytes(2, "big")
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (length // 4 + 1))[:length], "big")).to_bytes(length, "big")
    return head + mask + masked


def frame_payload(data: bytes) -> bytes:
    """The payload of one unmasked server frame."""
    length = data[1] & 0x7F
    if length == 126:
        return data[4 : 4 + int.from_bytes(data[2:4], "big")]
    return data[2 : 2 + length]


class Wic:
    """One WIC: a real TCP socket to the edge's WebSocket port and its edge-side transport."""

    def __init__(self, index: int) -> None:
        self.user = f"user{index:04d}"
        self.host = f"{secrets.token_hex(4)}.invalid"
        self.instance = f"<urn:uuid:{secrets.token_hex(4)}-0000-4000-8000-{secrets.token_hex(6)}>"
        self.call_id = secrets.token_hex(10)
        self.tag = secrets.token_hex(4)
        self.cseq = 0
        self.socket: socket.socket | None = None
        self.transport: Any = None

    def register(self) -> bytes:
        self.cseq += 1
        aor = f"sip:{self.user}@{DOMAIN}"
        return (
            f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
            f"Via: SIP/2.0/WS {self.host};branch=z9hG4bK{secrets.token_hex(8)}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <{aor}>;tag={self.tag}\r\n"
            f"To: <{aor}>\r\n"
            f"Call-ID: {self.call_id}\r\n"
            f"CSeq: {self.cseq} REGISTER\r\n"
            f'Contact: <sip:{self.user}@{self.host};transport=ws;ob>;reg-id=1;+sip.instance="{self.instance}";expires=600\r\n'
            "Supported: path, outbound, gruu\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()


_LONG_NAMES = {b"v": b"via", b"f": b"from", b"t": b"to", b"i": b"call-id", b"m": b"contact"}
_ECHOED = frozenset((b"via", b"from", b"to", b"call-id", b"cseq", b"path", b"contact"))


def registrar_answer(request: bytes, number: int) -> bytes:
    """What ``benchmarks/sipp/registrar.xml`` sends for ``request`` (its ``[last_…:]`` fields:
    the first line of each, every Via value on one line)."""
    vias: list[bytes] = []
    fields: dict[bytes, bytes] = {}
    for line in request[: request.index(b"\r\n\r\n")].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        name = _LONG_NAMES.get(name, name)
        if name == b"via":
            vias.append(value.strip())
        elif name in _ECHOED and name not in fields:
            fields[name] = value.strip()
    return (
        b"SIP/2.0 200 OK\r\nVia: " + b", ".join(vias) + b"\r\n"
        b"From: " + fields[b"from"] + b"\r\n"
        b"To: " + fields[b"to"] + b";tag=4242SIPpTag01" + str(number).encode() + b"\r\n"
        b"Call-ID: " + fields[b"call-id"] + b"\r\n"
        b"CSeq: " + fields[b"cseq"] + b"\r\n"
        b"Path: " + fields[b"path"] + b"\r\n"
        b"Contact: " + fields[b"contact"] + b";expires=600\r\n"
        b"Service-Route: <sip:orig@127.0.0.1:5060;lr>\r\n"
        b"Content-Length: 0\r\n\r\n"
    )


class Bench:
    def __init__(self, users: int, rate: float) -> None:
        self.clock = LazyHeapClock()
        self.step = 1.0 / rate
        self.core = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.core.bind(("127.0.0.1", 0))
        self.core.settimeout(5)
        self.directory = tempfile.mkdtemp(prefix="ws-register-inprocess-")
        ini = os.path.join(self.directory, "edge.ini")
        with open(ini, "w") as handle:
            handle.write(
                f"[service]\nstate_dir = {self.directory}/var\n"
                "[sip]\nlisten = udp:127.0.0.1:0\n"
                "[ws]\nlisten = ws:127.0.0.1:0\nallow_missing_origin = true\n"
                f"[core]\nmode = external\nnext_hop = sip:127.0.0.1:{self.core.getsockname()[1]};transport=udp\ndomain = {DOMAIN}\n"
                "[media]\nport_range = 41000-41999\n[manhole]\nenabled = false\n[log]\nlevel = warn\n"
                "[overload]\nenabled = false\n"
            )
        self.node = PcscfNode(config_module.load([ini]), reactor=BenchReactor(self.clock))
        self.node.startService()
        self.udp_port = self.node.transports._udp[0].transport
        self.edge_udp = ("127.0.0.1", self.udp_port.getHost().port)
        self.ws_port = self.node._ws_ports[0]
        self.protocols: list[Any] = []
        factory = self.node.ws_factory
        build = factory.buildProtocol

        def remember(address: Any) -> Any:
            protocol = build(address)
            self.protocols.append(protocol)
            return protocol

        factory.buildProtocol = remember  # type: ignore[method-assign]
        self.wics = [self.connect(Wic(i + 1)) for i in range(users)]
        self.answered = 0

    def connect(self, wic: Wic) -> Wic:
        client = socket.create_connection(("127.0.0.1", self.ws_port.getHost().port))
        client.settimeout(5)
        self.ws_port.doRead()  # accept
        wic.socket, wic.transport = client, self.protocols[-1].transport
        key = secrets.token_bytes(16).hex()[:22] + "=="
        client.sendall(
            (
                "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\r\n"
            ).encode()
        )
        wic.transport.doRead()
        self.flush(wic)
        head = client.recv(4096)
        if not head.startswith(b"HTTP/1.1 101"):
            raise SystemExit(f"no WebSocket upgrade: {head!r}")
        return wic

    @staticmethod
    def flush(wic: Wic) -> None:
        """Twisted's queued writes (the handshake; a backlog): what the reactor's doWrite would send."""
        while wic.transport.dataBuffer[wic.transport.offset :] or wic.transport._tempDataBuffer:
            wic.transport.doWrite()

    def refresh(self, wic: Wic) -> None:
        assert wic.socket is not None
        edge = self.edge_step
        wic.socket.sendall(masked_frame(wic.register()))
        edge(wic.transport.doRead, ())
        forwarded, _ = self.core.recvfrom(65536)
        self.answered += 1
        self.core.sendto(registrar_answer(forwarded, self.answered), self.edge_udp)
        edge(self.udp_port.doRead, ())
        edge(self.flush, (wic,))
        answer = frame_payload(wic.socket.recv(65536))
        if not answer.startswith(b"SIP/2.0 200"):
            raise SystemExit(f"{wic.user}: {answer[:80]!r}")
        edge(self.clock.advance, (self.step,))

    @staticmethod
    def _call(function: Any, args: tuple[Any, ...]) -> None:
        function(*args)

    #: how the edge's steps of a refresh are called: ``--edge-only`` makes it ``sys.call_tracing``
    #: (see ``main``), so that callgrind counts the edge's work without the WICs' and the core's
    edge_step = _call

    def run(self, count: int) -> float:
        wics = self.wics
        start = time.process_time()
        for i in range(count):
            self.refresh(wics[i % len(wics)])
        return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("count", nargs="?", type=int, default=5000)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--rate", type=float, default=2000.0, help="simulated arrival rate (clock step)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the run")
    parser.add_argument("--edge-only", action="store_true",
                        help="call only the edge's steps through sys.call_tracing (callgrind: the edge without the harness)")
    parser.add_argument("--cycles", action="store_true",
                        help="count what dies in reference cycles per refresh (benchmarks/_cycle_probe.py)")
    args = parser.parse_args()
    bench = Bench(args.users, args.rate)
    if os.environ.get("BENCH_GC", "tuned") == "tuned":  # as the edge process runs (epcscf.memory)
        gc.freeze()
        gc.set_threshold(100_000, 50, 100)
    bench.run(len(bench.wics) * 4)  # the registrations, then refreshes: warm (memos, flows, bindings)
    if os.environ.get("EDGE_SAMPLES"):
        real_reactor.running = True  # benchmarks/cpu_sampler samples while "the reactor runs"
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        elapsed = bench.run(args.count)
        profiler.disable()
        pstats.Stats(profiler).sort_stats(os.environ.get("BENCH_SORT", "tottime")).print_stats(int(os.environ.get("BENCH_LINES", "40")))
    elif args.cycles:
        with CycleCensus() as census:
            elapsed = bench.run(args.count)
        census.report(args.count, "refresh")
    else:
        # Through ``sys.call_tracing`` (a plain call when nothing traces): a C function that runs
        # nothing else, for callgrind's ``--toggle-collect=sys_call_tracing`` to count exactly
        # the measured refreshes.
        if args.edge_only:  # each of the edge's steps through it instead: the edge alone
            bench.edge_step = sys.call_tracing  # type: ignore[method-assign]
            elapsed = bench.run(args.count)
        else:
            elapsed = sys.call_tracing(bench.run, (args.count,))
    print(f"{args.count} REGISTER refreshes through the edge in {elapsed:.2f} s CPU: {elapsed / args.count * 1e6:.1f} µs each "
          f"(the WICs' and the core's side included)")


if __name__ == "__main__":
    main()
