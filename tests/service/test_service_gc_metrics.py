"""``Metrics.watch_gc``: the collector's pauses, by generation, for as long as the watch is installed."""

from __future__ import annotations

import gc

from gateway.service.metrics import Metrics


def count(metrics: Metrics, generation: str) -> float:
    value = metrics.registry.get_sample_value("duisgw_gc_pause_seconds_count", {"generation": generation})
    return 0.0 if value is None else value


def test_gc_pauses_are_observed_by_generation_until_the_watch_is_removed() -> None:
    metrics = Metrics()
    unwatch = metrics.watch_gc()
    try:
        gc.collect(0)
        gc.collect(2)
        assert count(metrics, "0") >= 1 and count(metrics, "2") >= 1
        total = metrics.registry.get_sample_value("duisgw_gc_pause_seconds_sum", {"generation": "2"})
        assert total is not None and 0 < total < 5
    finally:
        unwatch()
    before = count(metrics, "2")
    gc.collect(2)
    assert count(metrics, "2") == before
    unwatch()  # removing twice is harmless


def test_the_frozen_object_count_is_read_at_scrape_time() -> None:
    metrics = Metrics()
    assert metrics.registry.get_sample_value("duisgw_gc_frozen_objects") == gc.get_freeze_count()
