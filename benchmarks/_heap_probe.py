# Run inside a running epcscf through its SSH console (``benchmarks/fuzz.py --probe``): prints
# one line "HEAP-FIGURES {json}": pymalloc's arenas (``sys._debugmallocstats``, written to C
# stderr, so fd 2 is pointed at a file meanwhile) and glibc's heap (``mallinfo2``), to tell live
# Python objects from memory the allocators keep.  ``HEAP_FORGET`` (set before the exec) first
# forgets the ended calls kept for the console and empties every lru_cache memo, then collects:
# what they alone hold.
import ctypes as _ctypes
import gc as _gc
import json as _json
import os as _os
import re as _re
import sys as _sys
import tempfile as _tempfile


def _heap_figures():
    if globals().get("HEAP_FORGET"):
        manager = service.pcscf.calls  # noqa: F821 - the console's namespace
        if manager is not None:
            manager.history.clear()
        # and every memo (functools.lru_cache): entries refreshed during a burst are scattered
        # over the arenas the burst filled
        import functools as _functools

        for thing in _gc.get_objects():
            if isinstance(thing, _functools._lru_cache_wrapper):
                thing.cache_clear()
    if not globals().get("HEAP_AS_IS"):
        _gc.collect()
    figures = {}
    with _tempfile.TemporaryFile() as out:
        saved = _os.dup(2)
        try:
            _os.dup2(out.fileno(), 2)
            _sys._debugmallocstats()
        finally:
            _os.dup2(saved, 2)
            _os.close(saved)
        out.seek(0)
        text = out.read().decode(errors="replace")
    for key, pattern in (("arenas", r"# arenas allocated current\s*=\s*([\d,]+)"),
                         ("arenas highwater", r"# arenas highwater mark\s*=\s*([\d,]+)"),
                         ("pymalloc free bytes", r"# bytes in available blocks\s*=\s*([\d,]+)"),
                         ("pymalloc used bytes", r"# bytes in allocated blocks\s*=\s*([\d,]+)"),
                         ("pymalloc empty pools", r"# empty pools\s*=\s*([\d,]+)")):
        found = _re.search(pattern, text)
        figures[key] = int(found.group(1).replace(",", "")) if found else None
    # Under tracemalloc: traced now and the highest since the last reading (a transient peak
    # between two readings shows here, not in what is live at either).
    import tracemalloc as _tracemalloc

    if _tracemalloc.is_tracing():
        figures["traced"], figures["traced peak"] = _tracemalloc.get_traced_memory()
        _tracemalloc.reset_peak()
    # What the kernel counts (anonymous pages, file pages, swap): /proc/self/smaps_rollup.
    try:
        with open("/proc/self/smaps_rollup") as _rollup:
            for _line in _rollup:
                _parts = _line.split()
                if len(_parts) == 3 and _parts[2] == "kB" and _parts[0].rstrip(":") in (
                        "Rss", "Anonymous", "Private_Dirty", "Shared_Clean", "Private_Clean", "Swap"):
                    figures["smaps " + _parts[0].rstrip(":")] = int(_parts[1]) * 1024
    except OSError:
        pass
    try:
        class _Mallinfo2(_ctypes.Structure):
            _fields_ = [(name, _ctypes.c_size_t) for name in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
        libc = _ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _Mallinfo2
        info = libc.mallinfo2()
        figures.update({"glibc heap": info.arena, "glibc mmapped": info.hblkhd, "glibc in use": info.uordblks,
                        "glibc free": info.fordblks})
        if globals().get("HEAP_TRIM"):
            libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return figures


print("HEAP-" + "FIGURES " + _json.dumps(_heap_figures()))
