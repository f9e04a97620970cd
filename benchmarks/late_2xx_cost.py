"""In-process benchmark: what a late call's retransmitted 2xx and repeated ACK cost the proxy, no sockets.

Run: ``.venv/bin/python benchmarks/late_2xx_cost.py [--calls 2000] [--copies 3] [--tree DIR]``.

When the ACK of a call is late, the UAS retransmits its 200 to the INVITE (RFC 3261 §13.3.1.4:
after T1, 2·T1, 4·T1 …) and the UAC answers each copy with the same ACK again (§13.2.2.4); a
proxy forwards every copy of both statelessly (§16.7 step 1, §16.11).  At 400 calls/s a late edge
got about 2.2 copies of each 200 and 1.9 of each ACK per call (``docs/performance.md``, "400 calls/s:
the two modes").  Each call here: an INVITE from the UAC (UDP) → forwarded to the UAS → its 200
(with an SDP answer and Record-Route, as sipp's) → forwarded to the UAC → the ACK → forwarded; then
``--copies`` times the same 200 datagram from the UAS and the same ACK datagram from the UAC.  The
proxy is the real ``TransportManager`` → ``TransactionLayer`` → ``StatefulProxy`` with
``DefaultRoutingPolicy`` (``benchmarks/sip_proxy_inprocess.py``'s fake reactor and clock), wired
as a node wires it; the edge's own policy (a call lookup and the SDP answer put in again for each
2xx copy) is not in it, so the saving measured here is a lower bound of the edge's.

Printed: CPU µs (``time.process_time``) per call without copies and per copy pair (one 200 and
one ACK).  ``--tree DIR`` imports epcscf from another checkout (``/work/main``) for a paired
figure; for the deterministic one run both under ``valgrind --tool=callgrind`` with ``--copies 0``
and ``--copies 3`` and divide the difference of instructions by ``3 × calls``.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))


def _import_tree(tree: str) -> None:
    """epcscf from ``tree`` before anything imports it from this checkout."""
    sys.path.insert(0, tree)
    import epcscf  # noqa: F401

    if not os.path.abspath(epcscf.__file__).startswith(os.path.abspath(tree)):
        raise SystemExit(f"epcscf came from {epcscf.__file__}, not {tree}")


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--copies", type=int, default=3, help="copies of the 200 and of the ACK per call")
    parser.add_argument("--tree", default=os.path.dirname(HERE), help="the checkout whose epcscf is measured")
    return parser.parse_args()


OPTIONS = _parse()
_import_tree(OPTIONS.tree)
sys.path.insert(1, HERE)

import sip_proxy_inprocess as base  # noqa: E402

from epcscf.sip.proxy import ProxySettings, StatefulProxy  # noqa: E402
from epcscf.sip.proxy_policy import DefaultRoutingPolicy  # noqa: E402
from epcscf.sip.resolver import NextHopResolver  # noqa: E402
from epcscf.sip.transaction import TransactionLayer  # noqa: E402
from epcscf.sip.transaction_machine import TimerSettings  # noqa: E402
from epcscf.sip.transport import TransportManager  # noqa: E402

try:
    from epcscf.sip.replay import StatelessReplays  # noqa: E402
except ImportError:  # a tree without it (main before branch i-stable)
    StatelessReplays = None  # type: ignore[assignment,misc]

PROXY, UAC, UAS = base.PROXY, base.UAC, base.UAS
SDP = (
    "v=0\r\no=ims 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 6000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    "a=ptime:20\r\na=sendrecv\r\n"
)


def invite(i: int) -> bytes:
    return (
        f"INVITE sip:uas@127.0.0.1:{UAS[1]} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{UAC[1]};branch=z9hG4bK-late-{i};rport\r\n"
        f"From: <sip:wic@127.0.0.1>;tag=wic{i}\r\nTo: <sip:uas@127.0.0.1>\r\n"
        f"Call-ID: late-{i}@127.0.0.1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
        f"Contact: <sip:wic@127.0.0.1:{UAC[1]}>\r\nContent-Type: application/sdp\r\n"
        f"Content-Length: {len(SDP)}\r\n\r\n{SDP}"
    ).encode()


def ok(forwarded: bytes, i: int) -> bytes:
    """sipp's 200: the forwarded INVITE's Vias, Record-Route, Contact and an SDP answer."""
    head = forwarded.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")[1:]
    keep = [line for line in head if line.split(":", 1)[0].lower() in ("via", "from", "call-id", "cseq", "record-route")]
    to = next(line for line in head if line.lower().startswith("to:")) + f";tag=uas{i}"
    lines = ["SIP/2.0 200 OK", *keep, to, f"Contact: <sip:127.0.0.1:{UAS[1]};transport=UDP>",
             "Content-Type: application/sdp", f"Content-Length: {len(SDP)}", "", SDP]
    return "\r\n".join(lines).encode()


def ack(i: int) -> bytes:
    return (
        f"ACK sip:127.0.0.1:{UAS[1]};transport=UDP SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{UAC[1]};branch=z9hG4bK-late-ack-{i};rport\r\n"
        f"From: <sip:wic@127.0.0.1>;tag=wic{i}\r\nTo: <sip:uas@127.0.0.1>;tag=uas{i}\r\n"
        f"Call-ID: late-{i}@127.0.0.1\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def build() -> tuple[Any, Any, Any]:
    clock = base.HeapClock()
    reactor = base.FakeReactor(clock)
    holder: dict[str, Any] = {}
    transports = TransportManager(reactor, lambda m, c: holder["layer"].receive(m, c), clock=clock)
    replays = StatelessReplays(clock) if StatelessReplays is not None else None
    if replays is not None:
        transports.replays = replays  # as epcscf.pcscf.node wires it
    transports.listen(f"udp:{PROXY[0]}:{PROXY[1]}")
    resolver = NextHopResolver(None)
    policy = DefaultRoutingPolicy(transports, resolver, [f"sip:{UAS[0]}:{UAS[1]}"])
    proxy = StatefulProxy(clock, transports, resolver, policy, ProxySettings())
    if replays is not None:
        proxy.replays = replays
    layer = TransactionLayer(clock, proxy, lambda connection: TimerSettings())
    holder["layer"] = layer
    proxy.transactions = layer
    return clock, transports._udp[0], reactor.sockets[0]


def run(first: int, calls: int, copies: int, clock: Any, protocol: Any, socket: Any) -> tuple[float, float]:
    """(CPU s of the calls without their copies, CPU s of the copies); each call's copies come
    right after it (in a late edge, within seconds: inside the replays' window)."""
    calls_cpu = copies_cpu = 0.0
    cpu = time.process_time
    for i in range(first, first + calls):
        start = cpu()
        socket.sent.clear()
        protocol.datagramReceived(invite(i), UAC)
        forwarded = socket.sent.pop(UAS)
        answer = ok(forwarded, i)
        protocol.datagramReceived(answer, UAS)
        if not socket.sent.get(UAC, b"").startswith(b"SIP/2.0 200"):
            raise SystemExit(f"call {i}: no 200 toward the UAC")
        request = ack(i)
        protocol.datagramReceived(request, UAC)
        if not socket.sent.get(UAS, b"").startswith(b"ACK "):
            raise SystemExit(f"call {i}: the ACK was not forwarded")
        middle = cpu()
        for _ in range(copies):
            socket.sent.clear()
            protocol.datagramReceived(answer, UAS)
            protocol.datagramReceived(request, UAC)
            if not (socket.sent.get(UAC, b"").startswith(b"SIP/2.0 200") and socket.sent.get(UAS, b"").startswith(b"ACK ")):
                raise SystemExit("a copy was not forwarded")
        end = cpu()
        calls_cpu += middle - start
        copies_cpu += end - middle
        clock.advance(0.0025)  # 400 calls/s
    return calls_cpu, copies_cpu


def main() -> None:
    clock, protocol, socket = build()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)  # as an edge worker runs (epcscf.memory)
    run(10_000_000, 200, OPTIONS.copies, clock, protocol, socket)  # warm-up
    calls_cpu, copies_cpu = run(0, OPTIONS.calls, OPTIONS.copies, clock, protocol, socket)
    replays = "with epcscf.sip.replay" if StatelessReplays is not None else "without epcscf.sip.replay"
    per_pair = 1e6 * copies_cpu / (OPTIONS.calls * OPTIONS.copies) if OPTIONS.copies else float("nan")
    print(f"{OPTIONS.tree} ({replays}): {OPTIONS.calls} calls, {1e6 * calls_cpu / OPTIONS.calls:.1f} µs CPU each "
          f"(INVITE, 200, ACK); {OPTIONS.copies} copies of the 200 and of the ACK each: "
          f"{per_pair:.1f} µs CPU per copy pair; loadavg {' '.join(open('/proc/loadavg').read().split()[:3])}")


if __name__ == "__main__":
    main()
