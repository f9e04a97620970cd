"""Inclusive share per subsystem of a collapsed-stack profile (``benchmarks/cpu_sampler``, py-spy raw).

Usage: ``.venv/bin/python benchmarks/spy_subsystems.py FILE [FILE ...]``

A sample counts toward a subsystem when any frame of its stack belongs to it, so the rows overlap
(the parser runs inside "WebSocket in", the proxy inside the transaction layer) and do not add up
to 100 %: each row answers "how much would go if this subsystem cost nothing".  Idle samples (the
event loop in ``epoll``) are left out, as in ``benchmarks/spy_top.py``.  With several files, one
column each (for a before/after table from the same sitting).
"""

from __future__ import annotations

import argparse
from collections import Counter

from spy_top import read_stacks

#: (row, substrings of ``frame_key`` that place a frame in it); first match per frame wins.
SUBSYSTEMS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("SIP parsing", ("epcscf/sip/parser.py", "epcscf/sip/headers.py:parse_", "epcscf/sip/uri.py:parse")),
    ("WebSocket in (framing, Autobahn)", ("epcscf/ws/autobahn_shim.py:LeanAutobahnProtocol._read", "epcscf/ws/frames.py",
                                          "autobahn/websocket/protocol.py:WebSocketProtocol.processData")),
    ("sends (WS frame out, TCP/UDP write)", ("epcscf/sip/tcp_write.py", "autobahn_shim.py:LeanAutobahnProtocol.send",
                                             "twisted/internet/udp.py:Port.write", "selector_events.py:_SelectorDatagramTransport.sendto",
                                             "transport_udp.py:UdpConnection.send_bytes")),  # its own sendto since issue 16's fifth pass
    ("transaction layer", ("epcscf/sip/transaction",)),
    ("proxy core", ("epcscf/sip/proxy.py", "epcscf/sip/proxy_rules.py")),
    ("P-CSCF policy (edge, guard, admission, registrations)", ("epcscf/pcscf/edge", "epcscf/pcscf/guard.py",  # edge.py, edge_collaborators.py
                                                                "epcscf/pcscf/admission.py", "epcscf/pcscf/registration.py",
                                                                "epcscf/pcscf/flows.py", "epcscf/pcscf/identity.py")),
    ("calls (state, dialogs, SDP rewrite glue)", ("epcscf/pcscf/call", "epcscf/pcscf/dialogs.py", "epcscf/pcscf/offer_answer.py")),
    ("SDP model and transforms", ("epcscf/sdp/",)),
    ("ICE (aioice, epcscf/ice)", ("aioice/", "epcscf/ice/")),
    ("DTLS / certificates", ("epcscf/media/dtls.py", "epcscf/media/certificate.py", "OpenSSL/")),
    ("media sockets and sessions", ("epcscf/media/relay.py", "epcscf/media/session.py", "epcscf/media/demux.py",
                                    "epcscf/media/bundle.py", "epcscf/ice/ports.py")),
    ("logging", ("twisted/logger/", "twisted/python/log.py:msg", "epcscf/logging.py")),
    ("metrics (prometheus-client)", ("prometheus_client/",)),
    ("timers (callLater, timer queues)", ("epcscf/sip/timers.py", "twisted/internet/base.py:ReactorBase.callLater",
                                          "twisted/internet/base.py:DelayedCall", "asyncio/base_events.py:BaseEventLoop.call_later",
                                          "asyncio/base_events.py:BaseEventLoop.call_at")),
    ("Deferred machinery (self time)", ()),
    ("asyncio tasks/futures (self time)", ()),
)

#: Self-time rows: the frame on top of the stack is in one of these files.
SELF_ROWS = {
    "Deferred machinery (self time)": ("twisted/internet/defer.py",),
    "asyncio tasks/futures (self time)": ("asyncio/tasks.py", "asyncio/futures.py", "asyncio/events.py"),
}


def shares(path: str) -> tuple[int, Counter[str]]:
    """(busy samples, samples per row) of one collapsed-stack file."""
    rows: Counter[str] = Counter()
    total = 0
    for frames, count in read_stacks(path):
        if not frames:
            continue  # idle
        total += count
        hit = {row for row, markers in SUBSYSTEMS for frame in frames if markers and any(m in frame for m in markers)}
        hit |= {row for row, markers in SELF_ROWS.items() if any(m in frames[-1] for m in markers)}
        for row in hit:
            rows[row] += count
    return total, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+")
    options = parser.parse_args()
    columns = [shares(path) for path in options.files]
    print("| subsystem (inclusive) | " + " | ".join(f"{path} ({total} samples)" for path, (total, _) in zip(options.files, columns)) + " |")
    print("|---|" + "---|" * len(columns))
    for row, _ in SUBSYSTEMS:
        cells = [f"{100 * rows[row] / total:.1f} %" if total else "—" for total, rows in columns]
        print(f"| {row} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
