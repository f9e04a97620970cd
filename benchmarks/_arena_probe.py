# Run inside a running epcscf through its SSH console (``benchmarks/fuzz.py --probe``): which live
# objects sit in the memory a burst added.  Every object is found (``gc.get_objects()`` and,
# for objects the collector does not track -- str, bytes, int, float --, the referents of those)
# and bucketed by ``id(obj) >> 20`` (pymalloc arenas are 1 MiB) and ``id(obj) >> 14`` (its pools
# are 16 KiB).  ``ARENA_BASELINE`` (set before the exec) records the buckets in use then; later
# runs print one line "ARENA-FIGURES {json}": the objects in buckets that only exist since then,
# by type and, when tracemalloc traces, by allocation site (the newest frames under epcscf/) --
# the survivors that keep the burst's arenas from going back.  It also lists the modules first
# imported since the baseline: their code objects and classes land in the burst's arenas.  And it
# charges those objects to their owners (``_owner_roots``: transactions, ended calls, registrations,
# subscriptions, memos, delayed calls ...), with the arenas each owner holds alone and the arenas
# by the set of owners in them: what giving up one owner's records would give back.
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


def _owner_roots():
    """The long-lived holders of burst-time state, by name: each the objects a walk starts from.
    Read from the console's namespace (``pcscf``, ``core``); a missing one is left out."""
    node = globals().get("pcscf")
    core = globals().get("core")
    roots = {}

    def add(name, *things):
        found = [thing for thing in things if thing is not None]
        if found:
            roots.setdefault(name, []).extend(found)

    for label, layer in (("edge", getattr(node, "transactions", None)), ("core", getattr(core, "transactions", None))):
        if layer is None:
            continue
        add(f"{label}: server transactions", getattr(layer, "_servers", None), getattr(layer, "_rfc2543_servers", None),
            getattr(layer, "_by_merge_key", None))
        add(f"{label}: client transactions", getattr(layer, "_clients", None))
        add(f"{label}: stateless responses", getattr(layer, "stateless", None))
    add("edge: stateless 2xx/ACK replays (64*T1)", getattr(node, "replays", None))
    calls = getattr(node, "calls", None)
    add("edge: ended-call history", getattr(calls, "history", None))
    add("edge: calls released, late window", getattr(calls, "suspensions", None))
    add("edge: live calls", getattr(calls, "_calls", None), getattr(calls, "calls", None) if not callable(getattr(calls, "calls", None)) else None)
    add("edge: registrations", getattr(node, "registrations", None), getattr(node, "registration_end", None),
        getattr(node, "wic_subscriptions", None), getattr(node, "reg_events", None))
    add("edge: flows", getattr(node, "flows", None))
    add("edge: rate limiters", getattr(node, "flow_limiter", None), getattr(node, "source_limiter", None),
        getattr(node, "auth_failures", None), getattr(node, "refused_over_rate", None))
    add("edge: transports", getattr(node, "transports", None))
    add("core: location (registrations)", getattr(core, "location", None), getattr(core, "registrar", None))
    add("core: reg-event subscriptions", getattr(core, "notifier", None))
    add("core: transports", getattr(core, "transports", None))
    try:
        from epcscf.sip import params as _params
        add("text memos", *[getattr(clear, "__self__", None) for clear in _params._MEMOS])
    except Exception:
        pass
    try:
        from twisted.internet import reactor as _reactor
        add("reactor delayed calls", *_reactor.getDelayedCalls())
    except Exception:
        pass
    return roots


def _owners(found, old_arenas):
    """Which owner reaches each object of the new arenas, walking referents through objects of
    the new arenas only (an object allocated before the burst, a module or a class ends a walk,
    so an owner is not charged with the whole node through a back reference).  Owners are walked
    in the order of ``_owner_roots`` and an object goes to the first that reaches it (a
    transaction's timer entry to the transaction, not to the reactor's delayed calls).  Per
    owner: the objects, the arenas they are in, and the arenas in which every new object is that
    owner's -- those its going would give back (pymalloc frees an arena only when empty)."""
    import types as _types

    stop = (type, _types.ModuleType, _types.FunctionType, _types.CodeType)
    # An owner made at start keeps its burst-time entries in containers also made at start (its
    # dicts): those are walked through whatever their age; an older instance is not (it leads
    # back to the node).
    containers = (dict, list, tuple, set, frozenset, _collections.deque, _collections.OrderedDict)
    claimed = {}  # id -> owner name (the first owner that reaches it)
    reached_by = _collections.defaultdict(set)
    for name, starts in _owner_roots().items():
        seen = set()
        todo = list(starts)
        for start in starts:
            seen.add(id(start))
        while todo:
            thing = todo.pop()
            for child in _gc.get_referents(thing):
                key = id(child)
                if (key in seen or key in claimed or key not in found or isinstance(child, stop)
                        or ((key >> 20) in old_arenas and type(child) not in containers)):
                    continue
                seen.add(key)
                todo.append(child)
        for key in seen:
            if key in found and (key >> 20) not in old_arenas and key not in claimed:
                reached_by[name].add(key)
                claimed[key] = name
    owner_of_arena = _collections.defaultdict(set)
    for key in found:
        arena = key >> 20
        if arena in old_arenas:
            continue
        owner_of_arena[arena].add(claimed.get(key, "(none of these)"))
    rows = []
    for name in sorted(reached_by, key=lambda owner: -len(reached_by[owner])):
        keys = reached_by[name]
        arenas_of = {key >> 20 for key in keys}
        alone = sum(1 for arena in arenas_of if owner_of_arena[arena] == {name})
        top = _collections.Counter(type(found[key]).__name__ for key in keys).most_common(6)
        rows.append([name, len(keys), len(arenas_of), alone, " ".join(f"{t}:{c}" for t, c in top)])
    unowned = [key for key in found if (key >> 20) not in old_arenas and key not in claimed]
    unowned_arenas = {key >> 20 for key in unowned}
    rows.append(["(reached by none of these)", len(unowned), len(unowned_arenas),
                 sum(1 for arena in unowned_arenas if owner_of_arena[arena] == {"(none of these)"}),
                 " ".join(f"{t}:{c}" for t, c in _collections.Counter(type(found[key]).__name__ for key in unowned).most_common(8))])
    if _tracemalloc.is_tracing():
        # Who made what no owner reaches (the console session running this probe is among them).
        sites = _collections.defaultdict(_collections.Counter)
        for key in unowned:
            sites[_site(found[key])][type(found[key]).__name__] += 1
        top = sorted(sites.items(), key=lambda item: -sum(item[1].values()))[:30]
        rows.append(["(unreached, by site)", [[site, sum(names.values()), dict(names.most_common(4))] for site, names in top]])
    # Which owners share each arena: the arenas a set of owners would give back by going together.
    together = _collections.Counter(" + ".join(sorted(names)) for names in owner_of_arena.values())
    rows.append(["(arenas by the owners in them)", together.most_common(25)])
    return rows


def _owner_figures():
    found = _arena_objects()
    arenas = getattr(_sys, "epcscf_arena_baseline", (set(), set()))[0]
    if not arenas:
        return []
    return _owners(found, arenas)


if globals().get("ARENA_BASELINE"):
    print("ARENA-" + "FIGURES " + _json.dumps(_arena_figures()))
else:
    _figures = _arena_figures()
    _figures["owners (objects, arenas, arenas held by it alone, types)"] = _owner_figures()
    print("ARENA-" + "FIGURES " + _json.dumps(_figures))
