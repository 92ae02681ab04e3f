"""Anomaly flags on a segment's size history: a robust z-score of each change against the
median and MAD of the changes before it, with a floor so that flat or large segments are not
flagged for their ordinary moves."""

from __future__ import annotations

import random

from app.profiles.history import MIN_BASELINE, MINUTE_MS, Sample, flag_anomalies


def series(sizes: list[int]) -> list[Sample]:
    return [Sample(n * MINUTE_MS, size) for n, size in enumerate(sizes)]


def flagged(sizes: list[int]) -> list[int]:
    """The indexes of the samples flagged."""
    return [n for n, sample in enumerate(flag_anomalies(series(sizes))) if sample.anomaly]


def noisy(start: int, steps: int, seed: int = 3) -> list[int]:
    rng = random.Random(seed)
    sizes = [start]
    for _ in range(steps):
        sizes.append(sizes[-1] + rng.choice((-2, -1, 0, 1, 1, 2, 3)))
    return sizes


def test_a_jump_and_a_drop_stand_out_from_ordinary_noise():
    sizes = noisy(200, 40)
    sizes.append(sizes[-1] + 60)  # a rule change let many in at once
    sizes += noisy(sizes[-1], 20, seed=4)[1:]
    sizes.append(sizes[-1] - 70)  # and out again
    assert flagged(sizes) == [41, 62]


def test_ordinary_noise_alone_is_never_flagged():
    assert flagged(noisy(500, 300, seed=11)) == []


def test_a_flat_segment_is_not_flagged_for_one_customer_more_but_is_for_ten():
    assert flagged([100] * 30 + [101]) == []
    assert flagged([100] * 30 + [110]) == [30]


def test_a_large_segment_is_judged_against_its_own_scale():
    rng = random.Random(5)
    sizes = [100_000]
    for _ in range(40):
        sizes.append(sizes[-1] + rng.randint(-300, 300))
    assert flagged([*sizes, sizes[-1] + 400]) == []  # within its usual moves
    assert flagged([*sizes, sizes[-1] + 6_000]) == [41]


def test_nothing_is_flagged_before_there_is_a_baseline():
    sizes = [10] * (MIN_BASELINE + 1) + [1_000]  # MIN_BASELINE changes before the jump
    assert flagged(sizes) == [MIN_BASELINE + 1]
    assert flagged(sizes[1:]) == []  # one change fewer: too little to judge by


def test_one_spike_does_not_hide_the_next():
    sizes = noisy(300, 30)
    sizes.append(sizes[-1] + 80)
    sizes += noisy(sizes[-1], 5, seed=8)[1:]
    sizes.append(sizes[-1] + 80)
    assert flagged(sizes) == [31, 37]
