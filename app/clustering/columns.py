"""The feature matrix: which profile features a cluster model reads and how they are prepared.

Columns (every one a built-in every profile carries, so no rule has to ask for it):

==================  =====================================  ==================================
column              from                                   prepared as
==================  =====================================  ==================================
recency_days        ``rfm_recency_ms`` / 1 day             missing (never ordered) -> 365,
                                                           capped at 365, log1p
frequency_90d       ``rfm_frequency_90d``                  log1p
monetary_90d        ``rfm_monetary_90d``                   missing -> 0, log1p
browsing_depth      ``recent_visit_products_viewed``       log1p
session_minutes     ``recent_visit_duration_ms`` / 1 min   log1p
interaction_rate    ``interaction_rate_30d`` (adds/views)  missing (no views) -> 0, capped 5
cart_value          ``cart_value``                         log1p
cart_items          ``cart_items``                         log1p
top_category        ``top_category_30d``                   one-hot of the most common
                                                           categories (others, none: zeros),
                                                           each weighted 0.5
==================  =====================================  ==================================

The two visit columns read the most of the latest visit (so far, while it goes on) and the one
before it. The current session's values grow at every event and fall to zero at its end, which
moved customers between clusters at every visit's start and end; the last ended session's
change as a visit ends, with no event, so the dataflow had to evaluate every visit's end for
the model alone. The most of the latest two changes only at an event, never falls to zero, and
is not reset by a new visit's first event: a customer moves as they browse, not 30 minutes
after they left.

Counts, money and durations are heavy-tailed (a few customers buy a hundred times more than
the median), so they are log-transformed before scaling; every numeric column is then
standardised (mean 0, unit variance), so no unit dominates a distance. The one-hot columns are
weighted down so a category counts for less than a behaviour. Fitting uses a scikit-learn
``Pipeline``/``ColumnTransformer``; the live assignment (``Preparation.row``) replays the
fitted parameters in plain Python, and the tests hold the two equal.

What a profile brings to the columns is ``INPUTS``: the numeric columns' sources and the top
category, in that order (``inputs``). The dataflow compares them between a customer's
snapshots to assign again only what changed (``model.Assignment``), and the sink sends them to
the stream clusterer (``stream``) in that order.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.features import grows_with_clock

DAY_MS = 86_400_000
RECENCY_CAP_DAYS = 365.0
RATE_CAP = 5.0
CATEGORY_WEIGHT = 0.5
MOST_CATEGORIES = 8


@dataclass(frozen=True)
class Column:
    name: str
    source: str  # the profile feature
    divide: float = 1.0  # into the column's unit
    missing: float = 0.0  # the value of a customer who has none
    cap: float | None = None
    log: bool = True


NUMERIC: tuple[Column, ...] = (
    Column("recency_days", "rfm_recency_ms", DAY_MS, RECENCY_CAP_DAYS, RECENCY_CAP_DAYS),
    Column("frequency_90d", "rfm_frequency_90d"),
    Column("monetary_90d", "rfm_monetary_90d"),
    Column("browsing_depth", "recent_visit_products_viewed"),
    Column("session_minutes", "recent_visit_duration_ms", 60_000.0),
    Column("interaction_rate", "interaction_rate_30d", cap=RATE_CAP, log=False),
    Column("cart_value", "cart_value"),
    Column("cart_items", "cart_items"),
)
CATEGORY_SOURCE = "top_category_30d"
NUMERIC_NAMES = tuple(column.name for column in NUMERIC)
INPUTS: tuple[str, ...] = (*(column.source for column in NUMERIC), CATEGORY_SOURCE)


_INPUTS_OF = operator.itemgetter(*INPUTS)
# the inputs that change only at an event or a window's exit: all but recency, which grows
# with the clock (``pipelines.segmentation.FeatureShard._next_move`` walks the others)
_STEADY_OF = operator.itemgetter(*(name for name in INPUTS if not grows_with_clock(name)))


def inputs(features: Mapping[str, Any]) -> tuple[Any, ...]:
    """What the columns read of a profile's features (``INPUTS``), as they are (None where
    one is absent)."""
    try:
        found: tuple[Any, ...] = _INPUTS_OF(features)  # every profile carries them: fast
    except KeyError:
        return tuple(map(features.get, INPUTS))
    return found


def steady_inputs(features: Mapping[str, Any]) -> tuple[Any, ...]:
    """``inputs`` but those that grow with the clock (recency): a customer's change only at
    their events and their windows' exits. Every profile carries them."""
    found: tuple[Any, ...] = _STEADY_OF(features)
    return found


def measured(column: Column, features: Mapping[str, Any]) -> float:
    """The column's value in its own unit (capped), NaN where the customer has none."""
    value = features.get(column.source)
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    number = max(float(value) / column.divide, 0.0)
    return min(number, column.cap) if column.cap is not None else number


def raw_value(column: Column, features: Mapping[str, Any]) -> float:
    """The column's value in its own unit, missing values filled, before log and scaling."""
    number = measured(column, features)
    return column.missing if math.isnan(number) else number


def raw_row(features: Mapping[str, Any]) -> list[float]:
    return [raw_value(column, features) for column in NUMERIC]


def category(features: Mapping[str, Any]) -> str:
    value = features.get(CATEGORY_SOURCE)
    return value if isinstance(value, str) else ""


def logged(column: Column, value: float) -> float:
    return math.log1p(value) if column.log else value


def scaled(step: tuple[float, float, float | None, bool, float, float], value: Any) -> float:
    """One numeric column's scaled value (``Preparation.plan``'s ``step`` for it) of its
    source's ``value``: measured, filled, logged and standardised as the fitted pipeline does."""
    divide, missing, cap, log, mean, scale = step
    if value is None or value.__class__ is bool or not isinstance(value, int | float):
        number = missing
    else:
        number = float(value) / divide
        if number != number:  # NaN: none
            number = missing
        else:
            if number < 0.0:
                number = 0.0
            if cap is not None and number > cap:
                number = cap
    if log:
        number = math.log1p(number)
    return (number - mean) / scale


@dataclass(frozen=True)
class Preparation:
    """The fitted preparation: per numeric column its mean and scale after the log, and the
    categories given a column of their own. JSON-safe (``shown``/``from_shown``)."""

    means: tuple[float, ...]
    scales: tuple[float, ...]
    categories: tuple[str, ...]
    # per numeric column, what ``scaled`` needs: (divide, missing, cap, log, mean, scale)
    plan: tuple[tuple[float, float, float | None, bool, float, float], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        plan = tuple(
            (c.divide, c.missing, c.cap, c.log, mean, scale)
            for c, mean, scale in zip(NUMERIC, self.means, self.scales, strict=False)
        )
        object.__setattr__(self, "plan", plan)

    @property
    def width(self) -> int:
        return len(NUMERIC) + len(self.categories)

    @property
    def names(self) -> tuple[str, ...]:
        return NUMERIC_NAMES + tuple(f"category={name}" for name in self.categories)

    def row(self, features: Mapping[str, Any]) -> list[float]:
        """A profile's features as the model's scaled vector."""
        return self.row_of(inputs(features))

    def row_of(self, given: Sequence[Any]) -> list[float]:
        """The scaled vector of a profile's ``inputs``."""
        out = self.numeric_row(given)
        top = given[-1]
        out.extend(CATEGORY_WEIGHT if top == name else 0.0 for name in self.categories)
        return out

    def numeric_row(self, given: Sequence[Any]) -> list[float]:
        """The numeric columns' scaled values of a profile's ``inputs`` (the live path: the
        same arithmetic as ``measured``, ``raw_value``, ``logged`` and the scaling, inlined)."""
        return [scaled(step, value) for step, value in zip(self.plan, given, strict=False)]

    def original(self, scaled: Sequence[float]) -> dict[str, float]:
        """A scaled point (a centroid) back in the columns' own units; a category column is the
        share of the cluster whose top category it is."""
        found: dict[str, float] = {}
        for i, (column, mean, scale) in enumerate(
            zip(NUMERIC, self.means, self.scales, strict=True)
        ):
            value = scaled[i] * scale + mean
            found[column.name] = round(math.expm1(value) if column.log else value, 4)
        for j, name in enumerate(self.categories):
            share = scaled[len(NUMERIC) + j] / CATEGORY_WEIGHT
            found[f"category={name}"] = round(min(max(share, 0.0), 1.0), 4)
        return found

    def shown(self) -> dict[str, Any]:
        return {
            "means": list(self.means),
            "scales": list(self.scales),
            "categories": list(self.categories),
        }

    @classmethod
    def from_shown(cls, shown: Mapping[str, Any]) -> Preparation:
        return cls(
            tuple(float(x) for x in shown["means"]),
            tuple(float(x) for x in shown["scales"]),
            tuple(str(x) for x in shown["categories"]),
        )
