"""A CPU-time sampler for the eP-CSCF under a benchmark, in py-spy's collapsed-stack format.

Put this folder on PYTHONPATH and name an output file in ``EDGE_SAMPLES``; the benchmarks hand
their environment to the ``twistd`` they start, so the edge (not the core: a ``…core.ini``
config) samples itself::

    EDGE_SAMPLES=/tmp/edge.samples PYTHONPATH=benchmarks/cpu_sampler \\
        unshare -n sh -c 'ip link set lo up && exec .venv/bin/python benchmarks/calls.py --separate-core ...'
    .venv/bin/python benchmarks/spy_subsystems.py /tmp/edge.samples
    .venv/bin/python benchmarks/spy_top.py /tmp/edge.samples

Why not py-spy: on this shared host ``py-spy record --nonblocking`` kept a tenth to a third of
its samples (the others failed to read a consistent stack while the process ran, so the kept
ones lean to the idle moments), and without ``--nonblocking`` it stopped the edge for each sample.  Here
``ITIMER_PROF`` raises SIGPROF after each millisecond of the process's own CPU time (user and
system), so samples fall in proportion to CPU spent, whatever else runs on the host; the
handler runs at the next bytecode boundary, so time in a C call or a syscall is counted to the
Python frame that made it (inclusive shares are right; a long C call's self time lands on its
caller).  Signals arriving while one is pending merge, so counts are a sample, not a total.
Sampling starts when the reactor runs (not the start-up's imports), or ``EDGE_SAMPLES_DELAY``
seconds after start if later; the file is rewritten every 100 samples.  With
``EDGE_SAMPLES_ON_SIGNAL=1`` it samples nothing until the process gets SIGUSR2, and each SIGUSR2
starts afresh (the counts so far dropped): a benchmark signals the edge when the part it measures
begins (``benchmarks/overload.py`` does, at each 2×S run), so registrations and ramp-up stay out.
"""

from __future__ import annotations

import os
import sys

_OUT = os.environ.get("EDGE_SAMPLES")
_IS_EDGE = any(arg.endswith("twistd") for arg in sys.argv) and not any(arg.endswith("core.ini") for arg in sys.argv)

if _OUT and _IS_EDGE:
    import collections
    import signal
    import time
    from types import FrameType

    _counts: collections.Counter[str] = collections.Counter()
    _started = time.monotonic()
    _delay = float(os.environ.get("EDGE_SAMPLES_DELAY", "0"))
    _state = {"samples": 0, "writing": False, "armed": not os.environ.get("EDGE_SAMPLES_ON_SIGNAL")}

    def _write() -> None:
        with open(_OUT + ".tmp", "w") as handle:
            for stack, count in _counts.items():
                handle.write(f"{stack} {count}\n")
        os.replace(_OUT + ".tmp", _OUT)

    def _sample(signum: int, frame: FrameType | None) -> None:
        if _state["writing"] or not _state["armed"] or time.monotonic() - _started < _delay:
            return
        reactor = sys.modules.get("twisted.internet.reactor")
        if reactor is None or not getattr(reactor, "running", False):
            return  # start-up (imports, configuration) is not what a benchmark measures
        stack = []
        while frame is not None:
            code = frame.f_code
            stack.append(f"{code.co_qualname} ({code.co_filename}:{frame.f_lineno})")
            frame = frame.f_back
        _counts[";".join(reversed(stack))] += 1
        _state["samples"] += 1
        if _state["samples"] % 100 == 0:
            _state["writing"] = True
            try:
                _write()
            except OSError:
                pass
            finally:
                _state["writing"] = False

    def _restart(signum: int, frame: FrameType | None) -> None:
        _counts.clear()
        _state["samples"], _state["armed"] = 0, True

    if not _state["armed"]:
        signal.signal(signal.SIGUSR2, _restart)
    signal.signal(signal.SIGPROF, _sample)
    signal.setitimer(signal.ITIMER_PROF, 0.001, 0.001)
