"""What the dispatcher decides before it sends, as pure functions of a trigger, the customer and
the time: freshness, consent, holdout, frequency cap, quiet hours, and when to try again.

All times are wall-clock milliseconds. Nothing here does I/O, so each rule is tested alone.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from app.durations import parse_duration_ms

OPT_OUT_TRAIT = "marketing_opt_out"
TIMEZONE_TRAIT = "timezone"
MAX_ATTEMPTS = 8
BACKOFF_BASE_MS = 1_000
BACKOFF_CAP_MS = 15 * 60_000
RETRY_AFTER_CAP_MS = 60 * 60_000
# A send's max_age when its rule gives none: a reminder of a day-old transition is still
# welcome after an outage overnight; one of last month's (a replay of history) never is.
DEFAULT_MAX_AGE = "1d"


def opted_out(send: Mapping[str, Any], traits: Mapping[str, Any]) -> bool:
    """A marketing send to a customer whose ``marketing_opt_out`` trait is true (or "true")."""
    if not send.get("marketing", True):
        return False
    value = traits.get(OPT_OUT_TRAIT)
    return value is True or (isinstance(value, str) and value.strip().lower() in ("true", "yes"))


def held_out(customer_id: str, rule_id: str, percent: float) -> bool:
    """Deterministic: the same customer is in or out of a rule's holdout every time, and about
    ``percent`` of customers are (a hash of customer and rule, not a random draw)."""
    if percent <= 0:
        return False
    digest = hashlib.sha256(f"{rule_id}\x00{customer_id}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64 * 100
    return position < percent


def cap_window_ms(send: Mapping[str, Any]) -> int | None:
    """The stretch of time ``at_most`` counts sends over (its check is atomic, in Redis:
    ``DeliveryStore.reserve_send``)."""
    cap = send.get("at_most")
    return _duration_ms(cap["per"]) if cap else None


def settle_ms(send: Mapping[str, Any]) -> int:
    """How long a trigger waits before its first attempt (a late event may retract it)."""
    settle = send.get("settle")
    return _duration_ms(settle) if settle else 0


def stale_after(send: Mapping[str, Any], at: int) -> int:
    """The last wall-clock instant at which a trigger of a transition at ``at`` (event time) is
    fresh enough to send: ``at`` plus the send's ``max_age`` (``DEFAULT_MAX_AGE`` without
    one). Measured from the transition's instant, not from when it was read, so a replay of
    old history is as stale as its events are old."""
    return at + _duration_ms(send.get("max_age") or DEFAULT_MAX_AGE)


def quiet_until(send: Mapping[str, Any], traits: Mapping[str, Any], now: int) -> int | None:
    """When quiet hours (in the customer's timezone) end, if ``now`` is inside them."""
    quiet = send.get("quiet_hours")
    if not quiet:
        return None
    zone = _zone(traits.get(TIMEZONE_TRAIT))
    local = datetime.fromtimestamp(now / 1000, tz=UTC).astimezone(zone)
    start = _minutes(quiet["from"])
    end = _minutes(quiet["until"])
    minute = local.hour * 60 + local.minute
    inside = start <= minute < end if start < end else minute >= start or minute < end
    if not inside:
        return None
    ends = local.replace(hour=end // 60, minute=end % 60, second=0, microsecond=0)
    if ends <= local:
        ends += timedelta(days=1)  # wall-clock arithmetic: the zone gives that day's offset
    return int(ends.timestamp() * 1000)


def retry_delay_ms(attempt: int, asked: int | None, rng: random.Random) -> int:
    """The wait before attempt ``attempt + 1``: what the server asked (Retry-After, in ms) when
    it did, else exponential backoff with jitter (about 1 s, 2 s, 4 s ... capped)."""
    if asked is not None:
        return min(asked, RETRY_AFTER_CAP_MS)
    ceiling: int = min(BACKOFF_CAP_MS, BACKOFF_BASE_MS << max(0, attempt - 1))
    return ceiling // 2 + rng.randrange(ceiling // 2 + 1)


def retryable(status: int | None) -> bool:
    """A timeout or connection failure (None), a 5xx or a 429 is tried again."""
    return status is None or status == 429 or status >= 500


def _zone(name: Any) -> ZoneInfo:
    if isinstance(name, str) and name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return ZoneInfo("UTC")


def _minutes(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


def _duration_ms(value: Any) -> int:
    return value if isinstance(value, int) else int(parse_duration_ms(value))
