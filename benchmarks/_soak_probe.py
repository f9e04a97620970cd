# Run inside a running epcscf through its SSH console (benchmarks/soak.py types
# ``exec(open(path).read())``): prints one line "SOAK-COUNTS {json}" with the live counts of
# everything a call or flow holds, after a full garbage collection.  Objects are counted by
# class through ``gc`` so that a count also catches objects no table refers to any more
# (the leak a table-based gauge cannot see).  ``SOAK_SNAPSHOT`` (set by the caller before the
# exec) names a file for a tracemalloc snapshot when tracemalloc is tracing.
import asyncio as _asyncio
import collections as _collections
import gc as _gc
import json as _json
import os as _os
import tracemalloc as _tracemalloc

from twisted.internet import reactor as _reactor


def _cyclic_garbage():
    """What the first full collection frees: objects in reference cycles that nothing reaches
    any more, by type (count, bytes as ``sys.getsizeof`` counts them).  They stay allocated
    until a collection of their generation; with the daemon's thresholds (``tap.py``) the
    oldest generation is collected rarely, so during a burst they add to the peak."""
    import sys as _sys

    _gc.set_debug(_gc.DEBUG_SAVEALL)
    try:
        _gc.collect()
        garbage = list(_gc.garbage)
        _gc.garbage.clear()
    finally:
        _gc.set_debug(0)
    by_type = _collections.Counter()
    size_by_type = _collections.Counter()
    for thing in garbage:
        name = type(thing).__name__
        by_type[name] += 1
        size_by_type[name] += _sys.getsizeof(thing, 0)
    # the untracked str/bytes only those cycles refer to go with them
    referred = {id(thing): thing for thing in _gc.get_referents(*garbage) if not _gc.is_tracked(thing)}
    referred_bytes = sum(_sys.getsizeof(thing, 0) for thing in referred.values())
    del garbage
    return {"objects": sum(by_type.values()), "bytes": sum(size_by_type.values()) + referred_bytes,
            "by type": [(name, count, size_by_type[name]) for name, count in by_type.most_common(25)]}


def _soak_counts():
    garbage = _cyclic_garbage() if globals().get("SOAK_GARBAGE") else None
    _gc.collect()
    classes = _collections.Counter(type(o).__name__ for o in _gc.get_objects())
    pcscf = service.pcscf  # noqa: F821 - the console's namespace
    manager = pcscf.calls
    ports = [o for o in _gc.get_objects() if type(o).__name__ == "UdpPortPool"]
    counts = {
        "sip transactions (edge)": len(pcscf.transactions.transactions()),
        "sip transactions (objects)": classes["ServerTransaction"] + classes["ClientTransaction"],
        "proxied requests": classes["ProxiedRequest"],
        "calls live": len(manager.calls()) if manager else 0,
        "calls ended kept": len(manager.ended_calls()) if manager else 0,
        "Call objects": classes["Call"],
        "dialogs": classes["Dialog"],
        "call media": classes["CallMedia"],
        "ICE agents": classes["IceAgent"],
        "aioice connections": classes["_AgentConnection"],
        "DTLS sessions": classes["DtlsEndpoint"],
        "media sessions": classes["MediaSession"],
        "media ports in use": sum(pool.used_count for pool in ports),
        "ws connections": len(pcscf.ws_factory.connections) if pcscf.ws_factory is not None else 0,
        "flows": len(pcscf.flows),
        # Autobahn batches the WebSocket ping timers of the flows into buckets: how many depends
        # on when each flow (re)connected (at most one per flow), so they are counted apart.
        "delayed calls": sum(1 for call in _reactor.getDelayedCalls()
                             if getattr(call.func, "__qualname__", "") != "_BatchedTimer._notify_bucket"),
        "delayed calls (ws pings)": sum(1 for call in _reactor.getDelayedCalls()
                                        if getattr(call.func, "__qualname__", "") == "_BatchedTimer._notify_bucket"),
        "asyncio tasks": len(_asyncio.all_tasks(_asyncio.get_event_loop())),
        "fds": len(_os.listdir("/proc/self/fd")),
        "gc objects": len(_gc.get_objects()),
    }
    # What the figures are made of, for the report's "grew" lines: objects by class and
    # delayed calls by the function they will run.
    counts["detail"] = {
        "objects": dict(classes.most_common(400)),
        "delayed": dict(_collections.Counter(
            getattr(call.func, "__qualname__", type(call.func).__name__) for call in _reactor.getDelayedCalls())),
    }
    if garbage is not None:
        counts["cyclic garbage"] = garbage
    snapshot = globals().get("SOAK_SNAPSHOT")
    if snapshot and _tracemalloc.is_tracing():
        _tracemalloc.take_snapshot().dump(snapshot)
    return counts


print("SOAK-" + "COUNTS " + _json.dumps(_soak_counts()))
