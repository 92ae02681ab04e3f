"""The accept-to-membership summary: nearest-rank percentiles of the samples in the window."""

from __future__ import annotations

from app.ingest.status import DELAY_WINDOW_MS, delay_summary

NOW = 10_000_000


def test_percentiles_are_nearest_rank_over_the_window_only():
    inside = [f"{NOW - n}:{delay}".encode() for n, delay in enumerate(range(100, 0, -1))]
    outside = [f"{NOW - DELAY_WINDOW_MS}:99999", f"{NOW - DELAY_WINDOW_MS - 5}:88888"]
    found = delay_summary([*inside, *outside], now=NOW)
    assert (found.p50, found.p95, found.samples) == (50, 95, 100)
    assert found.window_s == DELAY_WINDOW_MS // 1000


def test_one_sample_is_every_percentile_and_none_is_none():
    assert (delay_summary(["5:-3"], now=6).p50, delay_summary(["5:-3"], now=6).p95) == (-3, -3)
    empty = delay_summary([], now=NOW)
    assert (empty.p50, empty.p95, empty.samples) == (None, None, 0)
