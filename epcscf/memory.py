"""How the daemon's cyclic garbage collector runs (shared by ``tap.py`` and worker processes).

Objects in reference cycles (an exception with its traceback and frames, a closed connection
with its protocol, an ended call with its parties) are freed only by a collection of their
generation.  The young generation is collected every ``threshold0`` net allocations of
container objects: what became garbage meanwhile stays allocated until then.  At 100,000 that
was 99,000 objects and 18.6 MiB of cyclic garbage at the end of a 1,550 messages/s fuzz burst
(24 MiB with the C buffers they held): memory the burst took from the system for nothing, and
pages the survivors of the burst then kept (docs/performance.md, "Fuzz burst peak: what it
was made of").  A young collection costs about the same per object whatever the threshold.
The 100–400 ms pauses that made the earlier setting were measured with Python's defaults
(700, 10, 10), where a full collection may come every 70,000 allocations; here it may come every
1,000,000, and the start-up objects are frozen out of it.
"""

from __future__ import annotations

import gc

from twisted.internet.interfaces import IReactorCore

#: young, middle and old generation: a young collection every 10,000 net allocations (~2 MiB of
#: garbage in cycles at most), a middle one every 10 of those, a full one every 10 middle ones --
#: and only when a quarter of what the last full one kept is new (Python's own rule), so its
#: cost stays in proportion.  What outlived a young and a middle collection (a call with its SDP
#: and ICE agent, a TCP connection) and then died waits for a full one: 46 MiB of such garbage
#: at the end of a 1,000,000-message burst with a factor of 100 there, 18 MiB with 10 (4 at 200,000).
COLLECTOR_THRESHOLDS = (10_000, 10, 10)


def tune_collector(reactor: IReactorCore) -> None:
    """Set the thresholds now and freeze every object that exists once the reactor runs: the
    start-up objects (modules, config, listeners) are never collected again."""
    gc.set_threshold(*COLLECTOR_THRESHOLDS)
    reactor.callWhenRunning(gc.freeze)
