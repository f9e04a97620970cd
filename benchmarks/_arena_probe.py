# Run inside a running epcscf through its SSH console (``benchmarks/fuzz.py --probe``): which live
# objects sit in the memory a burst added.  Every object is found (``gc.get_objects()`` and,
# for objects the collector does not track -- str, bytes, int, float --, the referents of those)
# and bucketed by ``id(obj) >> 20`` (pymalloc arenas are 1 MiB) and ``id(obj) >> 14`` (its pools
# are 16 KiB).  ``ARENA_BASELINE`` (set before the exec) records the buckets in use then; later
# runs print one line "ARENA-FIGURES {json}": the objects in buckets that only exist since then,
# by type and, when tracemalloc traces, by allocation site (the newest frames under epcscf/) --
# the survivors that keep the burst's arenas from going back.  It also lists the modules first
# imported since the baseline: their code objects and classes land in the burst's arenas.
import collections as _collections
import gc as _gc
import json as _json
import sys as _sys
import tracemalloc as _tracemalloc


def _arena_objects():
    _gc.collect()
    tracked = _gc.get_objects()
    found = {id(thing): thing for thing in tracked}
    for thing in _gc.get_referents(*tracked):
        found.setdefault(id(thing), thing)
    del tracked
    return found


def _site(thing):
    trace = _tracemalloc.get_object_traceback(thing) if _tracemalloc.is_tracing() else None
    if trace is None:
        return "?"
    frames = [frame for frame in trace if "/epcscf/" in frame.filename and "/benchmarks/" not in frame.filename]
    chosen = frames[:3] or list(trace)[:2]
    return " < ".join(f"{frame.filename.rsplit('/epcscf/', 1)[-1]}:{frame.lineno}" for frame in chosen)


def _arena_figures():
    found = _arena_objects()
    if globals().get("ARENA_BASELINE"):
        _sys.epcscf_arena_baseline = ({key >> 20 for key in found}, {key >> 14 for key in found})
        _sys.epcscf_modules_baseline = frozenset(_sys.modules)
        return {"objects": len(found), "arenas": len(_sys.epcscf_arena_baseline[0]),
                "pools": len(_sys.epcscf_arena_baseline[1])}
    arenas, pools = getattr(_sys, "epcscf_arena_baseline", (set(), set()))
    by_type = _collections.Counter()
    bytes_by_type = _collections.Counter()
    arenas_by_type = _collections.defaultdict(set)
    by_site = _collections.Counter()
    arenas_by_site = _collections.defaultdict(set)
    new_arenas = _collections.Counter()
    new_pools = set()
    #: arena → types of the objects in it: an arena with a handful of survivors is held by them alone
    types_in_arena = _collections.defaultdict(_collections.Counter)
    for key, thing in found.items():
        arena = key >> 20
        if arena in arenas:
            continue
        name = type(thing).__name__
        if isinstance(thing, str) and len(thing) < 40:
            name = "str<40"
        by_type[name] += 1
        bytes_by_type[name] += _sys.getsizeof(thing, 0)
        arenas_by_type[name].add(arena)
        new_arenas[arena] += 1
        new_pools.add(key >> 14)
        types_in_arena[arena][name] += 1
        site = _site(thing)
        by_site[site] += 1
        arenas_by_site[site].add(arena)
    sparse = _collections.Counter()
    sparse_arenas = 0
    for arena, names in types_in_arena.items():
        if sum(names.values()) <= 50:
            sparse_arenas += 1
            for name in names:
                sparse[name] += 1
    return {
        "modules imported since": sorted(set(_sys.modules) - getattr(_sys, "epcscf_modules_baseline", set(_sys.modules))),
        "arenas with at most 50 objects": sparse_arenas,
        "types pinning those (arenas each)": sparse.most_common(30),
        "new arenas": len(new_arenas),
        "new pools": len(new_pools),
        "objects in new arenas": sum(new_arenas.values()),
        "objects per new arena (fewest 10)": sorted(new_arenas.values())[:10],
        "types": [(name, count, bytes_by_type[name], len(arenas_by_type[name])) for name, count in by_type.most_common(40)],
        "types by arenas": sorted(((name, len(spread), by_type[name]) for name, spread in arenas_by_type.items()),
                                  key=lambda row: -row[1])[:25],
        "sites": sorted(((site, count, len(arenas_by_site[site])) for site, count in by_site.items()),
                        key=lambda row: -row[2])[:40],
    }


print("ARENA-" + "FIGURES " + _json.dumps(_arena_figures()))
