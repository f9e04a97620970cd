"""Shared hypothesis settings: bounded and deterministic, so that the property modules run in
seconds in ``bin/test`` and the same examples on every run (CI reproduces what a laptop saw)."""

from __future__ import annotations

import os
from typing import Any, Callable

from hypothesis import HealthCheck, settings

#: a deeper, random search on demand: EPCSCF_PROPERTY_EXAMPLES=5000 bin/test tests.test_sip_properties
DEEP_EXAMPLES = int(os.environ.get("EPCSCF_PROPERTY_EXAMPLES", "0") or 0)

#: every property test runs under these (derandomize: examples come from a fixed seed per test)
BOUNDED = settings(
    max_examples=DEEP_EXAMPLES or 100,
    derandomize=not DEEP_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def raises_only(call: Callable[[], Any], *allowed: type[BaseException]) -> Any:
    """``call()``'s result; an exception other than ``allowed`` fails the property (re-raised
    with the allowed list in the message, so the minimal example says what escaped)."""
    try:
        return call()
    except allowed:
        return None
    except Exception as error:
        raise AssertionError(f"{type(error).__name__} escaped (only {[a.__name__ for a in allowed]} may): {error!r}") from error
