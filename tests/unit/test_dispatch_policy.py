"""The dispatcher's decisions, one rule at a time."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from app.dispatch import policy

HOUR = 3_600_000


def at(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


@pytest.mark.parametrize(
    ("send", "traits", "expected"),
    [
        ({}, {"marketing_opt_out": True}, True),
        ({}, {"marketing_opt_out": "true"}, True),
        ({}, {"marketing_opt_out": False}, False),
        ({}, {}, False),
        ({"marketing": False}, {"marketing_opt_out": True}, False),  # a receipt, not marketing
    ],
)
def test_consent(send, traits, expected):
    assert policy.opted_out(send, traits) is expected


def test_the_holdout_is_the_same_customers_every_time_and_about_the_share_asked():
    customers = [f"c{n}" for n in range(20_000)]
    held = [c for c in customers if policy.held_out(c, "cart-abandoners", 10)]
    assert 0.09 < len(held) / len(customers) < 0.11
    assert held == [c for c in customers if policy.held_out(c, "cart-abandoners", 10)]
    other_rule = {c for c in customers if policy.held_out(c, "lapsed-customers", 10)}
    assert other_rule != set(held)  # each rule has its own group
    assert not any(policy.held_out(c, "x", 0) for c in customers[:100])
    assert all(policy.held_out(c, "x", 100) for c in customers[:100])


def test_a_send_is_fresh_for_its_max_age_from_the_transitions_instant():
    at_ = at("2026-10-03T12:00")
    assert policy.stale_after({"max_age": "6h"}, at_) == at_ + 6 * HOUR
    assert policy.stale_after({"max_age": None}, at_) == at_ + 24 * HOUR  # the default, 1d
    assert policy.stale_after({}, at_) == at_ + 24 * HOUR  # a trigger from before max_age


def test_a_frequency_cap_counts_over_its_period():
    assert policy.cap_window_ms({"at_most": {"times": 1, "per": "24h"}}) == 24 * HOUR
    assert policy.cap_window_ms({}) is None


@pytest.mark.parametrize(
    ("now", "zone", "until"),
    [
        ("2026-01-10T22:30", "UTC", "2026-01-11T08:00"),  # across midnight
        ("2026-01-10T07:59", "UTC", "2026-01-10T08:00"),
        ("2026-01-10T08:00", "UTC", None),
        ("2026-01-10T20:59", "UTC", None),
        # 21:30 in New York is 02:30 UTC the next day; quiet until 08:00 New York = 13:00 UTC
        ("2026-01-11T02:30", "America/New_York", "2026-01-11T13:00"),
        ("2026-01-10T22:30", "Not/AZone", "2026-01-11T08:00"),  # unknown zone: UTC
        # 22:00 EST on the night clocks go forward: 08:00 is EDT then, 12:00 UTC, not 13:00
        ("2026-03-08T03:00", "America/New_York", "2026-03-08T12:00"),
    ],
)
def test_quiet_hours_defer_to_their_end_in_the_customers_timezone(now, zone, until):
    send = {"quiet_hours": {"from": "21:00", "until": "08:00"}}
    found = policy.quiet_until(send, {"timezone": zone}, at(now))
    assert found == (None if until is None else at(until))


def test_quiet_hours_within_one_day():
    send = {"quiet_hours": {"from": "12:00", "until": "14:00"}}
    assert policy.quiet_until(send, {}, at("2026-01-10T13:00")) == at("2026-01-10T14:00")
    assert policy.quiet_until(send, {}, at("2026-01-10T14:00")) is None


def test_retries_back_off_with_jitter_and_honour_retry_after():
    rng = random.Random(7)
    waits = [policy.retry_delay_ms(n, None, rng) for n in range(1, 12)]
    for n, wait in enumerate(waits, start=1):
        ceiling = min(policy.BACKOFF_CAP_MS, policy.BACKOFF_BASE_MS * 2 ** (n - 1))
        assert ceiling // 2 <= wait <= ceiling
    assert policy.retry_delay_ms(3, 7_000, rng) == 7_000
    assert policy.retry_delay_ms(3, 10**9, rng) == policy.RETRY_AFTER_CAP_MS


@pytest.mark.parametrize(
    ("status", "again"),
    [(None, True), (500, True), (503, True), (429, True), (404, False), (400, False)],
)
def test_what_is_tried_again(status, again):
    assert policy.retryable(status) is again
