"""Micro-benchmark: bytes one lingering server transaction costs (RFC 6026 Accepted, RFC 3261 Completed).

Usage::

    .venv/bin/python benchmarks/transaction_memory.py [--count 10000]

A ``TransactionLayer`` on a ``task.Clock`` receives ``--count`` WebRTC INVITEs (a Chrome-like
offer, parsed from bytes as the transports do) and answers each with 100 and a 200 carrying an
SDP answer (→ Accepted, Timer L running), then as many BYEs answered 200 (→ non-INVITE
Completed, Timer J) and INVITEs answered 486 (→ INVITE Completed, Timer H).  The transaction
user keeps nothing, so what tracemalloc still sees after a ``gc.collect()`` is what the
transactions hold while they absorb retransmissions.  Figures are per transaction, baseline
is the same process before the first message; loopback-free, single-threaded, deterministic.
"""

from __future__ import annotations

import argparse
import gc
import os
import secrets
import sys
import time
import tracemalloc
from typing import Any

# EPCSCF_TREE: measure another checkout's code with this script (e.g. main, for a before/after)
TOP = os.environ.get("EPCSCF_TREE") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TOP)

from twisted.internet.task import Clock  # noqa: E402

from epcscf.sip.connection import Address  # noqa: E402
from epcscf.sip.message import Request, Response, make_response  # noqa: E402
from epcscf.sip.parser import parse_message  # noqa: E402
from epcscf.sip.transaction import ServerTransaction, TimerSettings, TransactionLayer  # noqa: E402

OFFER = "\r\n".join([
    "v=0", "o=- 4611731400430051336 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0",
    "a=msid-semantic: WMS stream", "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
    "c=IN IP4 0.0.0.0", "a=rtcp:9 IN IP4 0.0.0.0",
    "a=candidate:1467250027 1 udp 2122260223 192.168.1.10 46243 typ host generation 0",
    "a=candidate:435653019 1 tcp 1518280447 192.168.1.10 9 typ host tcptype active generation 0",
    "a=ice-ufrag:Oyef", "a=ice-pwd:7pZ0TwcgGMgSXUOTaHU2KmxL", "a=ice-options:trickle",
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32), "a=setup:actpass", "a=mid:0",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level", "a=sendrecv", "a=msid:stream track",
    "a=rtcp-mux", "a=rtpmap:111 opus/48000/2", "a=rtcp-fb:111 transport-cc", "a=fmtp:111 minptime=10;useinbandfec=1",
    "a=rtpmap:63 red/48000/2", "a=rtpmap:9 G722/8000", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:13 CN/8000", "a=rtpmap:110 telephone-event/48000", "a=rtpmap:126 telephone-event/8000",
    "a=ssrc:3735928559 cname:abcdefghijklmnop", "a=ssrc:3735928559 msid:stream track",
]) + "\r\n"
ANSWER = OFFER.replace("actpass", "passive").replace("Oyef", "zzzz")


class Connection:
    """A flow that sends nowhere (what the transaction layer needs)."""

    connected = True

    def __init__(self, reliable: bool) -> None:
        self.reliable = reliable
        self.transport = "WS" if reliable else "UDP"

    local = Address("127.0.0.1", 8080)
    remote = Address("127.0.0.1", 50000)
    id = "ws-bench-1"

    def send_message(self, message: Any) -> None:
        pass


class User:
    """The transaction user: answers at once, keeps nothing."""

    def __init__(self, status: int, body: bytes = b"") -> None:
        self.status, self.body = status, body

    def request_received(self, request: Request, transaction: ServerTransaction) -> None:
        if request.method == "INVITE":
            transaction.respond(make_response(request, 100))
        response = make_response(request, self.status, to_tag=secrets.token_hex(4))
        if self.body:
            response.headers.add("Content-Type", "application/sdp")
            response.headers.add("Contact", "<sip:edge@127.0.0.1:8080;transport=ws>")
            response.body = self.body
            response.headers.set("Content-Length", str(len(self.body)))
        transaction.respond(response)

    def ack_received(self, request: Request, connection: Any) -> None:
        pass

    def stray_response_received(self, response: Response, connection: Any) -> None:
        pass


def request_bytes(method: str, body: str = "") -> bytes:
    host = f"{secrets.token_hex(4)}.invalid"
    lines = [
        f"{method} sip:bob@ims.localdomain SIP/2.0", f"Via: SIP/2.0/WSS {host};branch=z9hG4bK{secrets.token_hex(8)}",
        "Max-Forwards: 70", f"From: <sip:alice@ims.localdomain>;tag={secrets.token_hex(4)}",
        "To: <sip:bob@ims.localdomain>", f"Call-ID: {secrets.token_hex(10)}", f"CSeq: 1 {method}",
        f"Contact: <sip:alice@{host};transport=ws;ob>", "Allow: INVITE,ACK,CANCEL,BYE,UPDATE,MESSAGE,OPTIONS,REFER,INFO",
        "Supported: path,gruu,outbound", "User-Agent: JsSIP 3.10.0",
    ]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def measure(count: int, method: str, status: int, offer: str, answer: bytes, reliable: bool) -> tuple[float, int, str]:
    """Bytes per transaction still traced once ``count`` of them linger, and their state."""
    clock = Clock()
    connection = Connection(reliable)
    # One settings object for every transaction, as the node has (a new one per transaction
    # counted ~110 B that the edge does not spend).
    settings = TimerSettings(t1=2.0, t2=16.0, t4=17.0)
    layer = TransactionLayer(clock, User(status, answer), lambda _: settings)
    raw = [request_bytes(method, offer) for _ in range(count)]
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    for data in raw:
        layer.receive(parse_message(data), connection)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    live = layer.transactions()
    state = live[0].state.value if live else "-"
    per = (after - before) / count
    layer.close()
    return per, len(live), state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=10000)
    options = parser.parse_args(argv)
    tracemalloc.start(1)
    started, cpu = time.perf_counter(), time.process_time()
    print(f"server transactions lingering after their final response ({options.count} each, tracemalloc):")
    for label, method, status, offer, answer, reliable in (
        ("INVITE 200 with SDP over WS (Accepted, L)", "INVITE", 200, OFFER, ANSWER.encode(), True),
        ("INVITE 486 over WS (Completed, Timer H)", "INVITE", 486, OFFER, b"", True),
        ("BYE 200 over UDP (Completed, Timer J)", "BYE", 200, "", b"", False),
    ):
        per, live, state = measure(options.count, method, status, offer, answer, reliable)
        print(f"  {label:42} {per:8.0f} bytes each ({live} live, state {state})")
    print(f"  (generator CPU {time.process_time() - cpu:.1f} s, {time.perf_counter() - started:.1f} s wall; "
          "offer/answer bodies are ~1.3 KB each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
