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
#: garbage in cycles at most), a middle one every 10 of those, a full one every 100 middle ones --
#: and only when a quarter of what the last full one kept is new (Python's own rule).
#: A full collection traverses every object not frozen (the registrations, the calls in progress,
#: the ended calls kept for operations, lingering transactions): at 400 calls/s with 2 workers it
#: took 115-155 ms of CPU in one pause, against 7-10 ms for a young one (docs/performance.md, "400
#: calls/s in every run").  With a factor of 10 it came every ~45 s of such traffic in each worker,
#: so in about one 10 s run in two; with 100, every ~7 minutes.  The factor of 10 was set while a
#: call, a closed connection and a bad message each left cycles that outlived a middle collection
#: (46 MiB of such garbage at the end of a 1,000,000-message burst with 100, 18 MiB with 10); they
#: no longer do (1,557 objects, 0.3 MiB, at the end of that burst: "Reference cycles at their source").
COLLECTOR_THRESHOLDS = (10_000, 10, 100)


def tune_collector(reactor: IReactorCore) -> None:
    """Set the thresholds now and freeze every object that exists once the reactor runs: the
    start-up objects (modules, config, listeners) are never collected again."""
    gc.set_threshold(*COLLECTOR_THRESHOLDS)
    reactor.callWhenRunning(gc.freeze)
