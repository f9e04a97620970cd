"""What the cyclic collector frees, by type and by creation site, and what its work costs.

Two ways to use it:

* **In process, around N operations** (``call_path.py --cycles``, ``ws_register_inprocess.py
  --cycles``): ``with CycleCensus() as census: …`` disables the collector and sets
  ``gc.DEBUG_SAVEALL`` for the operations; on leaving, one collection hands every object that
  died in a reference cycle to ``gc.garbage`` instead of freeing it, and ``census.report(n)``
  prints them per operation by type, and -- when ``tracemalloc`` traces (``PYTHONTRACEMALLOC=8``)
  -- by the newest ``epcscf/`` (or else the newest) frame of their allocation.  Objects freed by
  reference counting never reach the collector and are not counted: they are what we want.
  ``CycleCensus(edges=True)`` also names the references inside the cycles (``cycle_edges``):
  breaking one per cycle is the fix.
* **Inside a running edge** (``fuzz.py --cycles`` types ``exec(open(this).read())`` into its
  console with ``CYCLE_PROBE = "start"``, later ``"read"``): "start" installs a ``gc.callbacks``
  watch (collections, objects collected, time in the collector) and, with ``CYCLE_SAMPLE``, a
  1-second sampler that runs a saving collection and tallies the garbage by type (this adds a
  full collection per second: use it for the types, not for the CPU figures); "read" prints one
  line ``CYCLE-PROBE {json}``.  ``CYCLE_TRACE = N`` starts ``tracemalloc`` with N frames then
  (from the start, it slows the edge's start-up past ``fuzz.py``'s 60 s).
"""

from __future__ import annotations

import collections
import gc
import json
import sys
import time
import tracemalloc
from typing import Any


class CollectorWatch:
    """``gc.callbacks``: collections per generation, objects they freed, CPU seconds inside them."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.collected = 0
        self.seconds = 0.0
        self._started = 0.0
        self.cpu_started = time.process_time()

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.thread_time()
            return
        self.seconds += time.thread_time() - self._started  # CPU: a loaded host preempts
        self.collections[info["generation"]] += 1
        self.collected += info["collected"]

    def install(self) -> "CollectorWatch":
        gc.callbacks.append(self)
        return self

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)

    def totals(self) -> dict[str, Any]:
        return {"collections": list(self.collections), "collected": self.collected,
                "gc_seconds": round(self.seconds, 4), "process_cpu": round(time.process_time() - self.cpu_started, 3)}


def _site(thing: object) -> str:
    trace = tracemalloc.get_object_traceback(thing)
    if trace is None:
        return "?"
    frames = list(trace)[::-1]  # a Traceback runs oldest → newest
    for frame in frames:
        if "/epcscf/" in frame.filename:
            return f"{frame.filename.split('/epcscf/')[-1]}:{frame.lineno}"
    newest = frames[0]
    return f"{newest.filename.rsplit('/', 2)[-1]}:{newest.lineno}"


def tally(garbage: list[object], by_type: collections.Counter, by_site: collections.Counter) -> None:
    for thing in garbage:
        name = type(thing).__qualname__
        by_type[name] += 1
        if tracemalloc.is_tracing():
            by_site[(name, _site(thing))] += 1


def saving_collection() -> list[object]:
    """One full collection that hands its garbage over instead of freeing it."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        garbage = list(gc.garbage)
        gc.garbage.clear()
    finally:
        gc.set_debug(0)
    return garbage


def _edge_name(source: object, target: object) -> str:
    """How ``source`` refers to ``target``: an attribute or key name where there is one."""
    names = getattr(source, "__dict__", None)
    if isinstance(names, dict):
        for name, value in names.items():
            if value is target:
                return f".{name}"
    for cls in type(source).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if getattr(source, name, None) is target:
                return f".{name}"
    if isinstance(source, dict):
        for key, value in source.items():
            if value is target:
                return f"[{str(key)[:20]}]"
    if isinstance(source, (list, tuple, set, frozenset)):
        return "[]"
    for name in ("__self__", "__func__", "cell_contents", "f_back", "tb_frame", "tb_next", "__closure__"):
        if getattr(source, name, None) is target:
            return f".{name}"
    return "->"


def cycle_edges(garbage: list[object]) -> collections.Counter:
    """The references that close cycles among ``garbage``: edges inside its strongly connected
    components (Tarjan's, iterative), named ``Type.attribute -> Type``.  Breaking one edge of each
    cycle lets reference counting free the rest."""
    index_of = {id(thing): number for number, thing in enumerate(garbage)}
    edges = [[index_of[id(r)] for r in gc.get_referents(thing) if id(r) in index_of] for thing in garbage]
    order = [-1] * len(garbage)
    low = [0] * len(garbage)
    on_stack = [False] * len(garbage)
    stack: list[int] = []
    component = [-1] * len(garbage)
    counter = components = 0
    for root in range(len(garbage)):
        if order[root] >= 0:
            continue
        work = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                order[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack[node] = True
            if child < len(edges[node]):
                work.append((node, child + 1))
                nxt = edges[node][child]
                if order[nxt] < 0:
                    work.append((nxt, 0))
                elif on_stack[nxt]:
                    low[node] = min(low[node], order[nxt])
                continue
            if low[node] == order[node]:
                while True:
                    member = stack.pop()
                    on_stack[member] = False
                    component[member] = components
                    if member == node:
                        break
                components += 1
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    named: collections.Counter = collections.Counter()
    for source, targets in enumerate(edges):
        for target in targets:
            if component[source] == component[target]:
                named[f"{type(garbage[source]).__qualname__}{_edge_name(garbage[source], garbage[target])}"
                      f" -> {type(garbage[target]).__qualname__}"] += 1
    return named


class CycleCensus:
    """The objects that died in reference cycles between ``__enter__`` and ``__exit__``."""

    def __init__(self, edges: bool = False) -> None:
        self.by_type: collections.Counter = collections.Counter()
        self.by_site: collections.Counter = collections.Counter()
        #: with ``edges=True``: the references that close the cycles (``cycle_edges``)
        self.edges: collections.Counter | None = collections.Counter() if edges else None
        self.was_enabled = True

    def __enter__(self) -> "CycleCensus":
        self.was_enabled = gc.isenabled()
        gc.collect()
        gc.disable()
        return self

    def __exit__(self, *exc_info: object) -> None:
        garbage = saving_collection()
        tally(garbage, self.by_type, self.by_site)
        if self.edges is not None:
            self.edges.update(cycle_edges(garbage))
        del garbage
        gc.collect()  # now free them for real
        if self.was_enabled:
            gc.enable()

    def total(self) -> int:
        return sum(self.by_type.values())

    def report(self, operations: int, what: str, top: int = 20) -> None:
        print(f"cyclic garbage: {self.total()} objects over {operations} × {what} = "
              f"{self.total() / operations:.1f} per {what}")
        for name, count in self.by_type.most_common(top):
            print(f"  {count / operations:8.2f}  {name}")
        if self.by_site:
            print("  by allocation site (newest epcscf/ frame):")
            for (name, site), count in self.by_site.most_common(top):
                print(f"  {count / operations:8.2f}  {name:28s} {site}")
        if self.edges:
            print("  references inside the cycles (break one per cycle):")
            for edge, count in self.edges.most_common(2 * top):
                print(f"  {count / operations:8.2f}  {edge}")


# -- inside a running edge (typed into its console) ------------------------------------------------

def _console_start(sample: bool) -> None:
    from twisted.internet import reactor, task

    state: dict[str, Any] = {"watch": CollectorWatch().install(), "by_type": collections.Counter(),
                             "by_site": collections.Counter(), "samples": 0}
    if sample:
        def sample_once() -> None:
            garbage = saving_collection()
            tally(garbage, state["by_type"], state["by_site"])
            state["samples"] += 1
            del garbage[:]
            gc.collect()

        state["sampler"] = task.LoopingCall(sample_once)
        state["sampler"].clock = reactor
        state["sampler"].start(1.0, now=True)
    sys.modules["__cycle_probe_state__"] = state  # type: ignore[assignment]


def _console_read() -> None:
    state: Any = sys.modules.get("__cycle_probe_state__")
    if state is None:
        print("CYCLE-PROBE " + json.dumps({"error": "not started"}))
        return
    if "sampler" in state and state["sampler"].running:
        state["sampler"].stop()
        garbage = saving_collection()
        tally(garbage, state["by_type"], state["by_site"])
        del garbage[:]
        gc.collect()
    state["watch"].remove()
    if globals().get("CYCLE_TRACE_STOP", True) and tracemalloc.is_tracing():
        tracemalloc.stop()
    del sys.modules["__cycle_probe_state__"]
    result = state["watch"].totals()
    result["by type"] = state["by_type"].most_common(30)
    result["by site"] = [[name, site, count] for (name, site), count in state["by_site"].most_common(30)]
    print("CYCLE-PROBE " + json.dumps(result))


if "CYCLE_PROBE" in globals():
    if globals()["CYCLE_PROBE"] == "start":
        if globals().get("CYCLE_TRACE"):  # from now on only: tracing from the start slows the edge's start 3×
            tracemalloc.start(globals()["CYCLE_TRACE"])
        _console_start(bool(globals().get("CYCLE_SAMPLE", False)))
        print("CYCLE-PROBE " + json.dumps({"started": True}))
    else:
        _console_read()
