"""Micro-benchmark: bytes and objects one ended call costs while ``[calls] history`` keeps it.

Usage::

    .venv/bin/python benchmarks/ended_call_memory.py [--count 5000]

A ``CallManager`` on a ``task.Clock`` with the unit tests' fake media and proxy sets up
``--count`` originating calls (the WIC's offer, the core's 200 with SDP, media statistics of two
streams), releases each, and looks at the history once (the console does: that is when an ended
call is compacted).  What tracemalloc still sees after a ``gc.collect()``, over the same
process before the first call, is what the history holds; half the calls are answered (kept
``history`` seconds), half refused with a 486 (kept ``history_unanswered``).  Deterministic,
no sockets.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tracemalloc
from typing import Any

# EPCSCF_TREE: measure another checkout's code with this script (e.g. main, for a before/after)
TOP = os.environ.get("EPCSCF_TREE") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TOP)

from twisted.internet import defer, task  # noqa: E402

from epcscf.pcscf.calls import CallManager, CallSettings  # noqa: E402
from epcscf.sip.proxy import Branch, Forward, ProxiedRequest  # noqa: E402
from tests.support.fakes import FakeConnection, FakeServerTransaction  # noqa: E402
from tests.test_calls_manager import (  # noqa: E402
    ADDRESSES, CORE_SDP, ELEMENT_ADDRESS, PEER_ADDRESS, WIC_OFFER, FakeMedia, FakeProxy, invite, response_to,
)

STREAMS = {
    0: {"ice": "connected", "media": {"dtls_state": "connected", "wic_to_core": {"packets": 500, "bytes": 80000},
                                     "core_to_wic": {"packets": 498, "bytes": 79680}}},
}


class MediaWithTraffic(FakeMedia):
    def stats(self) -> dict:
        return {index: {"ice": stream["ice"], "media": dict(stream["media"])} for index, stream in STREAMS.items()}


def measure(count: int, status: int) -> tuple[float, float, str]:
    """Bytes and gc-tracked objects per ended call the history keeps, and its type."""
    clock = task.Clock()
    manager = CallManager(clock, ADDRESSES, lambda call: MediaWithTraffic([]), CallSettings(keep_ended=3600, keep_unanswered=3600), FakeProxy())
    wic = FakeConnection("WSS", PEER_ADDRESS, ELEMENT_ADDRESS, "wss-1")
    core = FakeConnection("UDP", PEER_ADDRESS, ELEMENT_ADDRESS, "udp-1")
    gc.collect()
    before, objects = tracemalloc.get_traced_memory()[0], len(gc.get_objects())
    for number in range(count):
        request = invite(True, WIC_OFFER)
        request.headers.set("Call-ID", f"call-{number}-{status}@bench.invalid")
        context = ProxiedRequest(request.copy(), wic, FakeServerTransaction(request, wic))
        forward = Forward(context.request, None, [], ADDRESSES.core_sent_by)
        manager.originating_invite(context, "<sip:alice@example.com>", forward)
        context.branches.append(Branch(context.request, [], connection=core))
        final = response_to(context.request, status, CORE_SDP if status < 300 else b"")
        for branch in context.branches:
            branch.final = final
        defer.maybeDeferred(manager.response, context, final)
        if status < 300:
            clock.advance(0.1)
            manager.release(request.headers.get("Call-ID") or "")
        del context, forward, request, final
        manager.ended_calls()  # the console looks: the history compacts what ended since
    wic.clear()
    core.clear()
    manager.proxy.transactions.sent.clear()  # type: ignore[union-attr]
    manager.proxy.responded.clear()  # type: ignore[union-attr]
    kept = manager.ended_calls()
    gc.collect()
    assert not manager.calls(), "a call did not end"
    per_call = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    per_call_objects = (len(gc.get_objects()) - objects) / len(kept)
    return per_call, per_call_objects, f"{len(kept)} kept, {type(kept[0]).__name__}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=5000)
    options = parser.parse_args(argv)
    tracemalloc.start(1)
    print(f"ended calls kept in the history ({options.count} each, tracemalloc):")
    for label, status in (("answered (200 with SDP, then released)", 200), ("refused (486)", 486)):
        per, objects, what = measure(options.count, status)
        print(f"  {label:40} {per:7.0f} bytes, {objects:5.1f} gc-tracked objects each ({what})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
