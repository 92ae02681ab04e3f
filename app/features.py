"""The feature vocabulary: what a feature is, as rules name it and profiles show it.

A feature is an aggregate of a customer's events (``Windowed``: count, sum, min, max, distinct
over a sliding window or the lifetime), the time since an event (``Since``), a last value
(``LastValue``) or the time since a sequence of events completed (``Sequence``); the built-ins
(RFM, the cart, the session, browsing depth, interaction rate, top category) are defined in
terms of them. Pure definitions, no state and no I/O: rules (``app.rules``) validate and compile
against them, the dataflow (``pipelines.features``) computes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence as Sequence_
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import orjson

from app.durations import format_duration_ms, parse_duration_ms

Aggregate = Literal["count", "sum", "min", "max", "distinct"]

DEFAULT_SESSION_GAP_MS = 30 * 60_000
DEFAULT_LATENESS_MS = 5 * 60_000

PAGE_EVENT = "Page Viewed"
SCREEN_EVENT = "Screen Viewed"


def event_name(event: Mapping[str, Any]) -> str | None:
    """The name a feature counts an event under: a track's event, or Page/Screen Viewed."""
    kind = event.get("type")
    if kind == "track":
        name = event.get("event")
        return name if isinstance(name, str) else None
    if kind == "page":
        return PAGE_EVENT
    if kind == "screen":
        return SCREEN_EVENT
    return None


@dataclass(frozen=True)
class Windowed:
    """An aggregate of one event over a sliding window, optionally filtered by properties.

    ``count`` needs no property; ``sum``, ``min`` and ``max`` read a numeric property;
    ``distinct`` counts distinct values of a property. ``window_ms`` None is the whole lifetime.
    """

    aggregate: Aggregate
    event: str
    window_ms: int | None
    prop: str | None = None
    where: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.aggregate != "count" and not self.prop:
            raise ValueError(f"{self.aggregate} of {self.event!r} needs a property")
        if self.window_ms is not None and self.window_ms <= 0:
            raise ValueError("a window must be longer than zero")

    @cached_property
    def name(self) -> str:
        target = self.event if self.prop is None else f"{self.event}.{self.prop}"
        parts = [target]
        if self.window_ms is not None:
            parts.append(format_duration_ms(self.window_ms))
        parts += [f"{key}={value}" for key, value in self.where]
        return f"{self.aggregate}({', '.join(parts)})"

    @cached_property
    def log_key(self) -> tuple[str, str | None, tuple[tuple[str, Any], ...]]:
        """Features with the same key read the same log."""
        return (self.event, self.prop, self.where)


@dataclass(frozen=True)
class Since:
    """Milliseconds since the last ``event`` (None before the first one)."""

    event: str

    @cached_property
    def name(self) -> str:
        return f"since({self.event})"


@dataclass(frozen=True)
class LastValue:
    """The ``prop`` of the last ``event``."""

    event: str
    prop: str

    @cached_property
    def name(self) -> str:
        return f"last({self.event}.{self.prop})"


@dataclass(frozen=True)
class Sequence:
    """Milliseconds since the newest completion of ``steps`` in order, the whole chain within
    ``within_ms`` (None before the first completion). With ``same``, every step of a chain has
    equal values of those properties ("viewed then added the same product_id in 10 min").

    A chain is one distinct event per step with times ``t1 <= t2 <= ... <= tk`` (events at the
    same instant apply together, so either order counts) and ``tk - within < t1``: the first
    step is "in the last ``within``" as of the last one. It completes at ``tk``. An event
    without one of the ``same`` properties takes part in no chain.
    """

    steps: tuple[str, ...]
    within_ms: int
    same: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.steps) < 2:
            raise ValueError("a sequence needs at least two steps")
        if self.within_ms <= 0:
            raise ValueError("a sequence's time limit must be longer than zero")

    @cached_property
    def name(self) -> str:
        same = f", same={'+'.join(self.same)}" if self.same else ""
        return f"sequence({' > '.join(self.steps)}, {format_duration_ms(self.within_ms)}{same})"


FeatureSpec = Windowed | Since | LastValue | Sequence
LogKey = tuple[str, str | None, tuple[tuple[str, Any], ...]]


def windowed(
    aggregate: Aggregate,
    event: str,
    within: str | int | None = None,
    *,
    prop: str | None = None,
    where: Mapping[str, Any] | None = None,
) -> Windowed:
    """``windowed("count", "Product Viewed", "10m")``: a spec from the words rules use."""
    window = None if within is None else parse_duration_ms(within)
    return Windowed(aggregate, event, window, prop, tuple(sorted((where or {}).items())))


# The built-ins of DESIGN.md (RFM, browsing depth, session duration, interaction rate, top
# category) in terms of the windowed features they read.
ORDER = "Order Completed"
BUILTIN_INPUTS: dict[str, tuple[FeatureSpec, ...]] = {
    "rfm_recency_ms": (Since(ORDER),),
    "rfm_frequency_30d": (windowed("count", ORDER, "30d"),),
    "rfm_frequency_90d": (windowed("count", ORDER, "90d"),),
    "rfm_monetary_30d": (windowed("sum", ORDER, "30d", prop="revenue"),),
    "rfm_monetary_90d": (windowed("sum", ORDER, "90d", prop="revenue"),),
    "interaction_rate_30d": (
        windowed("count", "Product Viewed", "30d"),
        windowed("count", "Product Added", "30d"),
    ),
    "top_category_30d": (),
    "cart_value": (),
    "cart_items": (),
    "session_events": (),
    "session_duration_ms": (),
    "session_pages": (),
    "session_products_viewed": (),
    "browsing_depth": (),
    "last_session_duration_ms": (),
    "last_session_products_viewed": (),
    "recent_visit_duration_ms": (),
    "recent_visit_products_viewed": (),
    "first_seen": (),
    "last_seen": (),
    "events_total": (),
}


# The last session that has ended (not the current one): they change only as a session ends.
LAST_SESSION_BUILTINS = frozenset({"last_session_duration_ms", "last_session_products_viewed"})
# The most of the latest visit (so far, while it goes on) and the one before it: they change
# only at an event (a visit's values grow; a new visit's first event makes the one before it
# the last ended), never as time passes, so no deadline of theirs is ever evaluated; the
# cluster columns read them.
RECENT_VISIT_BUILTINS = frozenset({"recent_visit_duration_ms", "recent_visit_products_viewed"})
# Built-ins that change only at an event although their group has deadlines (for the others
# in it): a watch on them watches no deadline (``pipelines.features.Watch``).
EVENT_DRIVEN_BUILTINS = RECENT_VISIT_BUILTINS
SESSION_BUILTINS = (
    frozenset(
        {
            "session_events",
            "session_duration_ms",
            "session_pages",
            "session_products_viewed",
            "browsing_depth",
        }
    )
    | LAST_SESSION_BUILTINS
    | RECENT_VISIT_BUILTINS
)


# The built-ins every profile shows, whatever the rules read.
PROFILE_BUILTINS = (
    "cart_value",
    "cart_items",
    "first_seen",
    "last_seen",
    "events_total",
    "session_events",
    "session_duration_ms",
    "session_pages",
    "browsing_depth",
    "last_session_duration_ms",
    "last_session_products_viewed",
    "recent_visit_duration_ms",
    "recent_visit_products_viewed",
    "rfm_recency_ms",
    "rfm_frequency_30d",
    "rfm_frequency_90d",
    "rfm_monetary_30d",
    "rfm_monetary_90d",
    "interaction_rate_30d",
    "top_category_30d",
)
TOP_CATEGORY_WINDOW_MS = 30 * 86_400_000


# --- what a reader sees --------------------------------------------------------------------------

# Built-ins that are a time since an event, as ``Since`` and ``Sequence`` values are.
TIME_GROWING_BUILTINS = frozenset({"rfm_recency_ms"})


def grows_with_clock(name: str) -> bool:
    """Whether the feature ``name`` is a time since something: with no event it grows 1 ms per
    ms, so a record holds it as of its instant and a reader adds the time passed since."""
    return name.startswith(("since(", "sequence(")) or name in TIME_GROWING_BUILTINS


# One future value change a profile record carries: (instant, feature, value from then on).
FeatureChange = tuple[int, str, Any]


def features_as_of(
    features: Mapping[str, Any], at: int | None, changes: Sequence_[FeatureChange], now: int
) -> dict[str, Any]:
    """A profile record's features at ``now``: its ``features`` are as of ``at`` (the
    customer's last evaluation), its ``changes`` the values windows and sessions take after it
    until the dataflow's next evaluation of the customer, in time order. The changes up to
    ``now`` apply, and times since grow by ``now - at``. Every reader of profile features
    (the profile API, explanations, previews, the admin UI, cluster refits) reads them through
    this one function, so they all see the same values."""
    values = dict(features)
    if at is None or now <= at:
        return values
    for instant, name, value in changes:
        if instant > now:
            break
        values[name] = value
    elapsed = now - at
    for name, value in values.items():
        if (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and grows_with_clock(name)
        ):
            values[name] = value + elapsed
    return values


def profile_features(fields: Mapping[bytes, bytes], now: int) -> dict[str, Any]:
    """``features_as_of`` a profile record as Redis holds it (the hash the sink writes)."""
    features = orjson.loads(fields.get(b"features", b"{}"))
    at = int(fields[b"at"]) if b"at" in fields else None
    changes = orjson.loads(fields.get(b"changes", b"[]"))
    return features_as_of(features, at, changes, now)
