"""The wall clock, in the unit every Segflow time is kept in: milliseconds since the epoch."""

from __future__ import annotations

import time


def now_ms() -> int:
    """The wall-clock time now, in ms (UTC epoch)."""
    return time.time_ns() // 1_000_000
