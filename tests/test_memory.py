"""The daemon's collector settings (``epcscf.memory``): cyclic garbage does not pile up."""

from __future__ import annotations

import gc
import weakref
from typing import Callable

from twisted.trial import unittest

from epcscf.memory import COLLECTOR_THRESHOLDS, tune_collector


class FakeReactor:
    def __init__(self) -> None:
        self.when_running: list[Callable[[], None]] = []

    def callWhenRunning(self, function: Callable[[], None]) -> None:  # noqa: N802 - Twisted's name
        self.when_running.append(function)


class Cycle:
    """Garbage only the collector frees: an object that refers to itself."""

    def __init__(self) -> None:
        self.me = self


class CollectorTests(unittest.TestCase):
    def setUp(self) -> None:
        saved = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *saved)
        self.addCleanup(gc.unfreeze)
        gc.collect()

    def test_start_up_objects_are_frozen_once_the_reactor_runs(self) -> None:
        reactor = FakeReactor()
        tune_collector(reactor)  # type: ignore[arg-type]
        self.assertEqual(gc.get_threshold(), COLLECTOR_THRESHOLDS)
        self.assertEqual(gc.get_freeze_count(), 0)
        [freeze] = reactor.when_running
        freeze()
        self.assertGreater(gc.get_freeze_count(), 0)

    def test_a_dropped_cycle_is_freed_within_the_young_threshold_of_allocations(self) -> None:
        tune_collector(FakeReactor())  # type: ignore[arg-type]
        held = weakref.ref(Cycle())  # garbage from here on, but no reference count reaches zero
        kept = []
        for _ in range(2 * COLLECTOR_THRESHOLDS[0]):  # a burst's allocations (containers that live on)
            kept.append([])
            if held() is None:
                break
        self.assertIsNone(held())
        self.assertLess(len(kept), 100_000)  # the old threshold let ~99,000 such objects pile up

    def test_long_lived_objects_do_not_bring_a_full_collection_within_fifty_middle_ones(self) -> None:
        # A full collection is one pause over every object not frozen (115-155 ms at 400 calls/s,
        # the slowest pause of the edge): sustained traffic must not bring one every few seconds.
        tune_collector(FakeReactor())  # type: ignore[arg-type]
        full: list[int] = []

        def on_collection(phase: str, info: dict[str, int]) -> None:
            if phase == "stop" and info["generation"] == 2:
                full.append(info["collected"])

        gc.callbacks.append(on_collection)
        self.addCleanup(gc.callbacks.remove, on_collection)
        young, middle = COLLECTOR_THRESHOLDS[:2]
        kept = []  # what outlives its collections, as a call's lingering state does
        for _ in range(50 * middle):
            batch = [[] for _ in range(young + 1)]  # one young collection each
            kept.extend(batch[: young // 10])
        self.assertEqual(full, [])
