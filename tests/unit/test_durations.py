"""Durations as people write them in settings and rules: ``500ms``, ``30s``, ``10m``, ``24h``."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.durations import MOST_MS, format_duration_ms, parse_duration_ms

# Written out from the calendar, largest first.
UNIT_MS = {
    "w": 7 * 24 * 60 * 60 * 1000,
    "d": 24 * 60 * 60 * 1000,
    "h": 60 * 60 * 1000,
    "m": 60 * 1000,
    "s": 1000,
    "ms": 1,
}


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("500ms", 500),
        ("30s", 30_000),
        ("10m", 600_000),
        ("24h", 86_400_000),
        ("30d", 2_592_000_000),
        ("2w", 1_209_600_000),
        ("0s", 0),
        (" 15 m ", 900_000),
        (0, 0),
        (1500, 1500),
    ],
)
def test_parse(text: str | int, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0ms"),
        (1, "1ms"),
        (1500, "1500ms"),
        (90_000, "90s"),
        (600_000, "10m"),
        (5_400_000, "90m"),
        (86_400_000, "1d"),
        (8 * 86_400_000, "8d"),
        (604_800_000, "1w"),
        (1_209_600_000, "2w"),
    ],
)
def test_format_picks_the_largest_exact_unit(ms: int, text: str) -> None:
    assert format_duration_ms(ms) == text


@settings(max_examples=300)
@given(st.integers(min_value=0, max_value=MOST_MS))
def test_format_then_parse_gives_the_same_duration(ms: int) -> None:
    text = format_duration_ms(ms)

    assert parse_duration_ms(text) == ms
    number, unit = text.rstrip("mshdw"), text[len(text.rstrip("mshdw")) :]
    assert unit in UNIT_MS
    assert int(number) * UNIT_MS[unit] == ms
    larger = list(UNIT_MS)[: list(UNIT_MS).index(unit)]
    if ms:  # no larger unit would have spelled it exactly
        assert all(ms % UNIT_MS[bigger] for bigger in larger)


@settings(max_examples=300)
@given(st.data(), st.sampled_from(list(UNIT_MS)))
def test_parse_multiplies_the_number_by_its_unit(data: st.DataObject, unit: str) -> None:
    number = data.draw(st.integers(min_value=0, max_value=MOST_MS // UNIT_MS[unit]))
    assert parse_duration_ms(f"{number}{unit}") == number * UNIT_MS[unit]


@pytest.mark.parametrize("text", ["36501d", "99999999999999999999d", MOST_MS + 1, "5300w"])
def test_a_duration_past_100_years_is_refused(text: str | int) -> None:
    # an instant plus a duration must stay a 64-bit integer (JSON, Redis scores, the engine)
    assert parse_duration_ms("36500d") == MOST_MS
    with pytest.raises(ValueError, match=r"longer than the longest duration, 36500d"):
        parse_duration_ms(text)


@pytest.mark.parametrize(
    "bad",
    ["-5s", "10", "", "ms", "10y", "10 mins", "1.5h", "10M", "5s 3m", "ten s", "s10"],
)
def test_text_that_is_not_a_duration_is_refused_with_a_hint(bad: str) -> None:
    with pytest.raises(ValueError, match=r"not a duration.*30s") as caught:
        parse_duration_ms(bad)

    assert repr(bad) in str(caught.value)


def test_a_negative_number_of_milliseconds_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be negative: -1"):
        parse_duration_ms(-1)


@pytest.mark.parametrize("flag", [True, False])
def test_a_boolean_is_not_a_duration(flag: Any) -> None:
    # bool is an int in Python; `window: yes` in YAML must not become 1 ms.
    with pytest.raises(ValueError, match="unit"):
        parse_duration_ms(flag)
