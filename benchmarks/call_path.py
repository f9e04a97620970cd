"""Benchmark: one call's own path in process — the WIC's offer → the offer toward
the core → the core's answer → the WebRTC answer → full ICE with a WIC → close (what a BYE does to
the media).  The per-call CPU of ICE, SDP, DTLS start and media sockets (with ``--manager``, the
call manager's glue too), with none of the per-message SIP/WebSocket stack of
``benchmarks/calls.py`` around it, and repeatable.

Usage::

    .venv/bin/python benchmarks/call_path.py [--calls 200] [--manager] [--profile] [--top 25]

The eP-CSCF side is a node's ``CallMediaEngine`` (full ICE, sockets parked between calls as in a
node, ``park_sockets=True``) on the asyncio reactor.  The WIC side is the Python generator's
``IceSocket`` (``benchmarks/_py_calls.py``): a raw UDP socket that sends nominating checks and
answers the eP-CSCF's own, as the Node WIC of ``calls.py`` does; like it, it never answers DTLS
(the eP-CSCF's ClientHello and its retransmission timer are part of the cost).

``--manager`` drives each call through the call manager as well, as the proxy hands it the WIC's
INVITE, the core's 200, then the WIC's ACK and BYE (fakes for the proxy and transports below it):
dialog, timeline and offer/answer glue are then counted too.

The collector runs as in a node (``epcscf.memory.tune_collector``: its thresholds, the
start-up objects frozen); ``--python-gc`` keeps Python's defaults, as the seventh pass measured.

Calls run one after the other: ``--calls`` of warm-up (which leave parked sockets), a pause past
the shelf's quarantine, then ``--calls`` measured, so that every measured call takes parked
sockets, as on a busy node.  The WIC runs in a thread of its own (its own asyncio loop), so
what is measured is the eP-CSCF's thread alone.  Printed: CPU per measured call (``time.thread_time``), and with
``--profile`` the Python function calls per call (cProfile; the same for the same code whatever
the load, the deterministic figure) and the top functions by calls.  Run it inside
``unshare -n sh -c 'ip link set lo up && exec …'`` like the other benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import cProfile
import os
import pstats
import re
import sys
import threading
import time
from typing import Any

from twisted.internet import asyncioreactor

asyncioreactor.install(asyncio.new_event_loop())

from twisted.internet import defer, reactor  # noqa: E402
from twisted.internet.task import deferLater  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _cycle_probe import CycleCensus  # noqa: E402
from _py_calls import IceSocket, webrtc_offer  # noqa: E402

from epcscf.ice import IceAgentConfig, UdpPortPool  # noqa: E402
from epcscf.memory import tune_collector  # noqa: E402
from epcscf.media import MediaSessionConfig  # noqa: E402
from epcscf.pcscf.call_media import CallMediaEngine, CallMediaSettings  # noqa: E402
from epcscf.sip.message import Headers, Request  # noqa: E402
from epcscf.sip.proxy import Branch, Forward, ProxiedRequest  # noqa: E402
from epcscf.sip.proxy_rules import make_local_response  # noqa: E402

LOCAL = "127.0.0.1"
PORTS = (42000, 43999)
FINGERPRINT = "sha-256 " + ":".join(f"{b:02X}" for b in range(32))  # fixed: the same SDP every run
_ANSWER_ICE = re.compile(r"a=ice-ufrag:(\S+)\r\n.*a=ice-pwd:(\S+)\r\n", re.S)
_ANSWER_CANDIDATE = re.compile(r"a=candidate:\S+ 1 udp \d+ (\S+) (\d+) typ host")


def core_answer(port: int) -> bytes:
    return (f"v=0\r\no=core 1 1 IN IP4 {LOCAL}\r\ns=-\r\nc=IN IP4 {LOCAL}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0 126\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:126 telephone-event/8000\r\n"
            "a=sendrecv\r\n").encode()


class WicThread:
    """The WIC's STUN side on its own asyncio loop in its own thread: neither cProfile (per
    thread) nor ``time.thread_time`` of the eP-CSCF's thread counts it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="wic", daemon=True)
        self.thread.start()
        self.ice: IceSocket = self.run_here(self._bind())

    async def _bind(self) -> IceSocket:
        _, ice = await asyncio.get_running_loop().create_datagram_endpoint(IceSocket, local_addr=(LOCAL, 0))
        return ice

    def run_here(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def connect(self, host: str, port: int, ufrag: str, pwd: str) -> defer.Deferred:
        """Nominate, and have our own check answered (calls.py's "ICE completed", WIC side)."""
        async def connect() -> None:
            await self.ice.nominate((host, port), ufrag, pwd, 5.0)
            await asyncio.wait_for(self.ice.checked_by_peer.wait(), 5.0)

        future = asyncio.run_coroutine_threadsafe(connect(), self.loop)
        return defer.Deferred.fromFuture(asyncio.wrap_future(future, loop=reactor._asyncioEventloop))  # type: ignore[attr-defined]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


async def reset(wic: IceSocket) -> None:
    wic.reset()


async def one_call(engine: CallMediaEngine, wic: WicThread, serial: int) -> None:
    wic.run_here(reset(wic.ice))
    media = engine(None)
    await media.offer_from_wic(webrtc_offer(wic.ice, 4611731400430051336 + serial, FINGERPRINT))
    answer = media.answer_from_core(core_answer(9), "fork").decode()
    ufrag, pwd = _ANSWER_ICE.search(answer).groups()  # type: ignore[union-attr]
    host, port = _ANSWER_CANDIDATE.search(answer).groups()  # type: ignore[union-attr]
    await wic.connect(host, int(port), ufrag, pwd)
    await selected(media.streams[0].agent)
    await media.close()


class ManagedCalls:
    """``--manager``: the same call through the call manager, as the proxy hands it the WIC's
    INVITE, the core's 200, the WIC's ACK and BYE (fakes stand in for the proxy and transport
    below it, as in ``tests/test_calls_manager.py``): dialog, timeline, offer/answer glue too."""

    def __init__(self, engine: CallMediaEngine) -> None:
        from epcscf.pcscf.calls import CallManager, CallSettings
        from epcscf.pcscf.edge import EdgeAddresses
        from epcscf.sip.connection import Address
        from tests.support.fakes import FakeConnection

        self.addresses = EdgeAddresses(LOCAL, 5060, "udp", LOCAL, 443, "wss")
        self.manager = CallManager(reactor, self.addresses, engine, CallSettings(keep_ended=60))
        self.wic_flow = FakeConnection("WSS", Address(LOCAL, 50000), Address(LOCAL, 443), "wss-1")
        self.core = FakeConnection("UDP", Address(LOCAL, 5070), Address(LOCAL, 5060), "udp-1")

    def request(self, method: str, serial: int, cseq: str, body: bytes = b"", to_tag: str = "") -> Request:
        request = Request(method, "sip:bob@example.com")
        request.headers = Headers.from_pairs([
            ("Via", f"SIP/2.0/WSS abc.invalid;branch=z9hG4bK{serial}{method}"),
            ("From", f"<sip:alice@example.com>;tag=a{serial}"),
            ("To", f"<sip:bob@example.com>{to_tag}"),
            ("Call-ID", f"call-{serial}"),
            ("CSeq", cseq),
            ("Contact", "<sip:alice@abc.invalid;transport=ws;ob>"),
            ("Max-Forwards", "70"),
        ])
        if body:
            request.headers.add("Content-Type", "application/sdp")
            request.body = body
        return request

    def context(self, request: Request) -> ProxiedRequest:
        from tests.support.fakes import FakeServerTransaction

        return ProxiedRequest(request.copy(), self.wic_flow, FakeServerTransaction(request, self.wic_flow))

    async def call(self, wic: WicThread, serial: int) -> None:
        wic.run_here(reset(wic.ice))
        offer = webrtc_offer(wic.ice, 4611731400430051336 + serial, FINGERPRINT)
        context = self.context(self.request("INVITE", serial, "1 INVITE", offer))
        forward = Forward(context.request, None, [], self.addresses.core_sent_by)
        await defer.maybeDeferred(self.manager.originating_invite, context, "<sip:alice@example.com>", forward)
        context.branches.append(Branch(context.request, [], connection=self.core))
        ok = make_local_response(context.request, 200, to_tag=f"b{serial}")
        ok.headers.add("Contact", "<sip:bob@127.0.0.1:5070>")
        ok.headers.add("Record-Route", "<sip:127.0.0.1:5060;transport=udp;lr>, <sip:tok@127.0.0.1:443;transport=wss;lr>")
        ok.headers.add("Content-Type", "application/sdp")
        ok.body = core_answer(9)
        for branch in context.branches:
            branch.final = ok
        await defer.maybeDeferred(self.manager.response, context, ok)
        answer = ok.body.decode()
        ufrag, pwd = _ANSWER_ICE.search(answer).groups()  # type: ignore[union-attr]
        host, port = _ANSWER_CANDIDATE.search(answer).groups()  # type: ignore[union-attr]
        [call] = self.manager.find(f"call-{serial}")
        await wic.connect(host, int(port), ufrag, pwd)
        await selected(call.media.streams[0].agent)  # type: ignore[union-attr]
        for method, cseq in (("ACK", "1 ACK"), ("BYE", "2 BYE")):
            request = self.context(self.request(method, serial, cseq, to_tag=f";tag=b{serial}"))
            await defer.maybeDeferred(self.manager.in_dialog_request, request, Forward(request.request), True)
        if self.manager.find(f"call-{serial}") or call.state.value != "terminated":
            raise RuntimeError(f"call-{serial} did not end on the BYE ({call.state.value})")
        await self.manager.idle()


_LIBRARY_PREFIX = re.compile(r".*/(site-packages|lib/python3\.\d+|epcscf)/")


def _short(filename: str, line: int, name: str) -> str:
    return f"{_LIBRARY_PREFIX.sub('', filename)}:{line} {name}"


class Counting:
    """``--bytecodes`` / ``--objects``: deterministic counts of the measured calls, in this
    thread only (``sys.settrace`` is per thread, so the WIC's thread is not counted).

    Bytecodes: every opcode the interpreter runs, by function (its own, not its callees'); a
    proxy for the interpreter's share of instructions that is the same whatever the load.
    Objects: each Python-level ``__init__`` run, by the class of ``self`` (dataclasses included;
    objects built in C, as a tuple or a dict, are not counted)."""

    def __init__(self, bytecodes: bool, objects: bool) -> None:
        self.bytecodes = bytecodes
        self.objects = objects
        self.opcodes: collections.Counter[tuple[str, int, str]] = collections.Counter()
        self.built: collections.Counter[str] = collections.Counter()

    def _trace(self, frame: Any, event: str, arg: Any) -> Any:
        code = frame.f_code
        if event == "opcode":
            self.opcodes[code.co_filename, code.co_firstlineno, code.co_name] += 1
        elif event == "call":
            if self.objects and code.co_name == "__init__" and code.co_argcount:
                instance = frame.f_locals.get(code.co_varnames[0])
                if instance is not None:
                    kind = type(instance)
                    self.built[f"{kind.__module__}.{kind.__qualname__}"] += 1
            if self.bytecodes:
                frame.f_trace_opcodes = True
                frame.f_trace_lines = False
                return self._trace
        return self._trace if self.bytecodes else None

    def start(self) -> None:
        sys.settrace(self._trace)

    def stop(self) -> None:
        sys.settrace(None)

    def report(self, calls: int, top: int) -> None:
        if self.bytecodes:
            print(f"{sum(self.opcodes.values()) / calls:.0f} bytecodes per call")
            for (filename, line, name), count in self.opcodes.most_common(top):
                print(f"  {count / calls:7.1f}  {_short(filename, line, name)}")
        if self.objects:
            print(f"{sum(self.built.values()) / calls:.1f} objects built per call (Python __init__ runs)")
            for name, count in self.built.most_common(top):
                print(f"  {count / calls:7.2f}  {name}")


async def selected(agent: Any) -> None:
    """The WIC has our check's answer; the edge selects its pair on reading it (RFC 8445 §7.3.1.5).

    Waited for on the agent's own ``start()`` (which the call has already called: a second
    call only adds a waiter), not polled: a poll's timers and loop turns were counted as the
    call's, more of them the slower the host (under callgrind, many)."""
    if agent.selected_pair is None:
        await agent.start()  # errbacks after the agent's connect_timeout (5 s here)


async def run(calls: int, profile: bool, top: int, managed: bool, bytecodes: bool = False, objects: bool = False,
              python_gc: bool = False, cycles: bool = False) -> None:
    wic = WicThread()
    if not python_gc:
        tune_collector(reactor)  # the collector as a node runs it (thresholds, start-up objects frozen)
    settings = CallMediaSettings(
        ice=IceAgentConfig(bind_addresses=(LOCAL,), port_range=PORTS, mode="full", connect_timeout=5.0),
        media=MediaSessionConfig(core_address=LOCAL), park_sockets=True)
    engine = CallMediaEngine(reactor, settings, UdpPortPool(*PORTS))
    if managed:
        manager = ManagedCalls(engine)
        place = manager.call
    else:
        async def place(wic: WicThread, serial: int) -> None:
            await one_call(engine, wic, serial)
    for serial in range(calls):  # warm-up: imports, memos, and parked sockets for what follows
        await place(wic, serial)
    await deferLater(reactor, 1.2, lambda: None)  # past the shelf's quarantine
    if cycles:
        # Twisted buffers every log event until logging begins (a daemon begins it at start):
        # the buffered events would keep each call's ICE agent, and so the call, alive.
        from twisted.logger import globalLogBeginner

        globalLogBeginner.beginLoggingTo([lambda event: None], discardBuffer=True, redirectStandardIO=False)
    profiler = cProfile.Profile() if profile else None
    counter = Counting(bytecodes, objects) if bytecodes or objects else None
    census = CycleCensus(edges=True) if cycles else contextlib.nullcontext()
    started = time.thread_time()
    if profiler is not None:
        profiler.enable()
    if counter is not None:
        counter.start()
    with census:
        for serial in range(calls):
            await place(wic, calls + serial)
        if cycles and managed:
            manager.manager.history.clear()  # the ended calls kept for the console: their end is part of a call
    if counter is not None:
        counter.stop()
    if profiler is not None:
        profiler.disable()
    cpu = time.thread_time() - started
    if isinstance(census, CycleCensus):
        census.report(calls, "call")
    print(f"{calls} calls: {1000 * cpu / calls:.3f} ms CPU per call{' (under cProfile)' if profile else ''}; "
          f"loadavg {open('/proc/loadavg').read().split(' ', 3)[:3]}")
    if profiler is not None:
        stats = pstats.Stats(profiler)
        total = sum(entry[1] for entry in stats.stats.values())  # type: ignore[attr-defined]
        print(f"{total / calls:.0f} Python function calls per call")
        rows = sorted(stats.stats.items(), key=lambda item: -item[1][1])[:top]  # type: ignore[attr-defined]
        for (path, line, name), (_cc, ncalls, _tt, _ct, _callers) in rows:
            short = _LIBRARY_PREFIX.sub("", path)
            print(f"  {ncalls / calls:7.1f}  {short}:{line} {name}")
        if os.environ.get("CALL_PATH_PSTATS"):
            stats.dump_stats(os.environ["CALL_PATH_PSTATS"])
    if counter is not None:
        counter.report(calls, top)
    engine.close()
    wic.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--profile", action="store_true", help="count Python function calls (cProfile)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--bytecodes", action="store_true",
                        help="count the bytecodes the eP-CSCF's thread runs per call, by function (sys.settrace)")
    parser.add_argument("--objects", action="store_true",
                        help="count the objects built per call, by class (their __init__ runs)")
    parser.add_argument("--python-gc", action="store_true",
                        help="keep Python's default collector thresholds (the seventh pass's figures) instead of a node's")
    parser.add_argument("--manager", action="store_true",
                        help="drive each call through the call manager (INVITE, 200, ACK, BYE) as well")
    parser.add_argument("--cycles", action="store_true",
                        help="count what dies in reference cycles per measured call (benchmarks/_cycle_probe.py)")
    args = parser.parse_args()
    failure: list[BaseException] = []

    def done(result: object) -> None:
        if isinstance(result, Failure):
            failure.append(result.value)
            print(result.getTraceback(), file=sys.stderr)
        reactor.stop()

    calls = run(args.calls, args.profile, args.top, args.manager, args.bytecodes, args.objects, args.python_gc,
                args.cycles)
    reactor.callWhenRunning(reactor.callLater, 0, lambda: defer.Deferred.fromCoroutine(calls).addBoth(done))
    reactor.run()
    sys.exit(1 if failure else 0)


if __name__ == "__main__":
    main()
