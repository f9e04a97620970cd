"""Run the edge's ``twistd`` on uvloop, for paired runs against the standard library's loop.

The product runs Twisted's asyncio reactor on the stdlib selector loop (docs/performance.md,
"Event loop: uvloop under the asyncio reactor", for why uvloop stayed out).  To measure it again,
``pip install uvloop`` into .venv, put this folder on PYTHONPATH and name the loop::

    EDGE_EVENT_LOOP=uvloop PYTHONPATH=benchmarks/uvloop_edge \\
        unshare -n sh -c 'ip link set lo up && exec .venv/bin/python benchmarks/ws_register.py --users 200 --seconds 8'

The benchmarks hand their environment to every ``twistd`` they start (the edge and a separate
core), so each of those installs ``AsyncioSelectorReactor`` on a uvloop loop before ``epcscf.tap``
looks for a reactor; other Python processes are left alone.  (It replaces
``benchmarks/cpu_sampler``'s sitecustomize: one of the two per run.)
"""

from __future__ import annotations

import os
import sys

if os.environ.get("EDGE_EVENT_LOOP") == "uvloop" and any(arg.endswith("twistd") for arg in sys.argv):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from _uvloop_reactor import install_uvloop_reactor

    install_uvloop_reactor()
