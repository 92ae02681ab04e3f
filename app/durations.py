"""Durations as marketers and operators write them: ``500ms``, ``30s``, ``10m``, ``24h``."""

from __future__ import annotations

import re

_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d|w)\s*$")
# The longest: 100 years, so an instant plus a duration stays far inside 64-bit integers
# (event times go through JSON, Redis scores and durable_rules as such)
MOST_MS = 36_500 * _UNITS_MS["d"]


def parse_duration_ms(text: str | int) -> int:
    """Return the duration in milliseconds; an int is taken as milliseconds already.

    >>> parse_duration_ms("10m")
    600000
    >>> parse_duration_ms("30d") == 30 * 24 * 3600 * 1000
    True
    """
    if isinstance(text, bool):
        raise ValueError("a duration is a number with a unit such as 30s, 10m, 24h or 30d")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"a duration cannot be negative: {text}")
        ms = text
    else:
        match = _DURATION.match(text)
        if not match:
            raise ValueError(
                f"{text!r} is not a duration: write a whole number and a unit "
                "(ms, s, m, h, d, w), such as 30s, 10m, 24h or 30d"
            )
        ms = int(match.group(1)) * _UNITS_MS[match.group(2)]
    if ms > MOST_MS:
        raise ValueError(f"{text!r} is longer than the longest duration, 36500d (100 years)")
    return ms


def format_duration_ms(ms: int) -> str:
    """The shortest exact spelling of a duration: ``format_duration_ms(600000) == "10m"``."""
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNITS_MS[unit]
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"
