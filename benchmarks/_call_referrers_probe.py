# Run inside a running epcscf through its SSH console (``fuzz.py --probe`` types
# ``exec(open(path).read())``): prints one line "CALL-REFERRERS {json}": the whole ``Call``
# objects alive after a full collection, where the call manager has them (live, in the
# history, compacted or not), and for those it does not account for, the chain of referrers
# up to a long-lived owner (a module, a class, the reactor).  Issue 14: whole calls were alive
# at +140 s after a burst with every gauge at its baseline.
import collections as _collections
import gc as _gc
import json as _json
import sys as _sys
import types as _types


__probe_file = _sys._getframe().f_code.co_filename


def _describe(thing, child):
    """One step of a chain: the referrer's type and, for a dict or an instance, where in it."""
    name = type(thing).__qualname__
    if isinstance(thing, dict):
        for key, value in thing.items():
            if value is child:
                return f"dict[{str(key)[:40]}]"
        return "dict"
    if isinstance(thing, (list, tuple, _collections.deque)):
        return f"{name}(len {len(thing)}: {[type(item).__qualname__ for item in list(thing)[:4]]})"
    if isinstance(thing, _types.FrameType):
        return f"frame {thing.f_code.co_name} {thing.f_code.co_filename.rsplit('/', 2)[-1]}:{thing.f_lineno}"
    if isinstance(thing, _types.FunctionType):
        return f"function {thing.__qualname__}"
    if isinstance(thing, _types.MethodType):
        return f"method {thing.__func__.__qualname__}"
    if isinstance(thing, _types.CellType):
        owners = [f.__qualname__ for f in _gc.get_referrers(thing) if isinstance(f, _types.FunctionType)]
        return f"cell of {owners}"
    slots = [slot for klass in type(thing).__mro__ for slot in getattr(klass, "__slots__", ())]
    for slot in slots:
        if getattr(thing, slot, None) is child:
            return f"{name}.{slot}"
    return name


def _chain(start, ignore, depth=14):
    """Referrers of ``start`` up to something long-lived: each step the first referrer not ours."""
    steps = []
    child = start
    seen = {id(start)}
    held = []  # the referrer lists made here, kept so that their ids are not reused
    for _ in range(depth):
        referrers = [r for r in _gc.get_referrers(child) if id(r) not in ignore and id(r) not in seen
                     and not (isinstance(r, _types.FrameType) and r.f_code.co_filename == __probe_file)
                     and "iterator" not in type(r).__name__]
        if not referrers:
            steps.append("(no more referrers)")
            break
        # prefer an instance's __dict__ owner, then anything else
        parent = referrers[0]
        steps.append(_describe(parent, child) + (" (also: " + ", ".join(_describe(r, child) for r in referrers[1:4]) + ")"
                                                  if len(referrers) > 1 else ""))
        if isinstance(parent, (_types.ModuleType, type)):
            break
        seen.add(id(parent))
        ignore.add(id(referrers))  # the list just made refers to ``parent`` too
        ignore.add(id(held))
        held.append(referrers)
        child = parent
    return steps


def _call_referrers(limit=12):
    from epcscf.pcscf.call_model import Call

    _gc.collect()
    calls = [o for o in _gc.get_objects() if type(o) is Call]
    manager = service.pcscf.calls  # noqa: F821 - the console's namespace
    live = {id(c) for c in manager.calls()} if manager else set()
    history = manager.history if manager else None
    in_history = set()
    if history is not None:
        in_history = {id(c) for h in (history._answered, history._unanswered) for c in h.values()}
    suspensions = getattr(manager, "suspensions", None) if manager else None
    late = {id(c) for _, held in (suspensions._late.values() if suspensions is not None else ()) for c in held}
    kinds = _collections.Counter()
    unaccounted = []
    for call in calls:
        where = ("live" if id(call) in live else "history" if id(call) in in_history
                 else "late window (call_suspension)" if id(call) in late else "elsewhere")
        dialog = call.dialog
        kinds[(where, str(call.state), bool(call.released_early),
               None if dialog is None else bool(dialog.confirmed), call.media is not None)] += 1
        if where == "elsewhere":  # what no documented retention accounts for
            unaccounted.append(call)
    sample = unaccounted[:limit]
    ignore = {id(calls), id(unaccounted), id(sample), id(_sys._getframe())}
    chains = _collections.Counter()
    for call in sample:
        chains[" <- ".join(_chain(call, ignore))] += 1
    del calls
    return {"Call objects": sum(kinds.values()),
            "by (where, state, released early, dialog confirmed, media)": [[list(k), n] for k, n in kinds.most_common()],
            "unaccounted": len(unaccounted), "chains": chains.most_common()}


_result = _call_referrers()
print("CALL-" + "REFERRERS " + _json.dumps(_result, default=str))


def _fan_out(limit=3):
    """Two levels of every referrer of a few unaccounted calls (frames included)."""
    from epcscf.pcscf.call_model import Call

    here = _sys._getframe()
    calls = [o for o in _gc.get_objects() if type(o) is Call and o.ended_at is not None and o.dialog is not None
             and o.dialog.confirmed and o.state.name == "TERMINATED"][:limit]
    out = []
    for call in calls:
        level = []
        for r in _gc.get_referrers(call):
            if r is calls or r is here:
                continue
            level.append([_describe(r, call), [_describe(rr, r) for rr in _gc.get_referrers(r) if rr is not here][:6],
                          repr(r)[:200] if isinstance(r, _types.CellType) else ""])
        out.append(level)
    return out


print("CALL-" + "FANOUT " + _json.dumps(_fan_out(), default=str))
