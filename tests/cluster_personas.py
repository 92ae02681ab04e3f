"""Customers of known behavioural personas, as the profile features the dataflow computes, for
the clustering tests and ``bench/clustering.py``.

Each persona draws its built-ins from its own ranges (money log-uniform); the personas are far
apart in the columns the cluster models read, so a good model recovers them. ``drift`` moves a
share of the customers to another persona; ``features_of(..., grown=g)`` draws a persona whose
behaviour has grown (money, orders, pages, minutes and carts times ``g``: the population
drifts while each persona stays itself); ``outliers`` are customers far beyond every persona
in several columns at once.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

DAY_MS = 86_400_000
MINUTE_MS = 60_000

Range = tuple[float, float] | None

# persona: built-in ranges (None: the customer has none, e.g. never ordered)
PERSONAS: dict[str, dict[str, Any]] = {
    "big_spenders": {
        "recency_days": (1, 12), "orders": (4, 12), "revenue": (400, 2_000),
        "depth": (2, 6), "minutes": (3, 12), "rate": (0.2, 0.5), "cart": None,
        "category": "electronics",
    },
    "browsers": {
        "recency_days": None, "orders": None, "revenue": None,
        "depth": (14, 40), "minutes": (25, 70), "rate": (0.0, 0.05), "cart": None,
        "category": "fashion",
    },
    "cart_holders": {
        "recency_days": None, "orders": None, "revenue": None,
        "depth": (3, 8), "minutes": (4, 14), "rate": (0.7, 1.5), "cart": (80, 400),
        "category": "home",
    },
    "lapsed": {
        "recency_days": (150, 300), "orders": None, "revenue": None,
        "depth": None, "minutes": None, "rate": None, "cart": None,
        "category": None,
    },
}  # fmt: skip


@dataclass
class Customer:
    id: str
    persona: str
    features: dict[str, Any]


def _uniform(rng: random.Random, bounds: Range, *, log: bool = False) -> float | None:
    if bounds is None:
        return None
    low, high = bounds
    if log:
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    return rng.uniform(low, high)


def _grown(bounds: Range, by: float) -> Range:
    return None if bounds is None else (bounds[0] * by, bounds[1] * by)


def features_of(persona: str, rng: random.Random, *, grown: float = 1.0) -> dict[str, Any]:
    """A customer of ``persona`` as the profile's built-in features (``grown``: the module
    docstring)."""
    spec: Mapping[str, Any] = PERSONAS[persona]
    recency = _uniform(rng, spec["recency_days"])
    orders = _uniform(rng, _grown(spec["orders"], grown))
    revenue = _uniform(rng, _grown(spec["revenue"], grown), log=True)
    depth = _uniform(rng, _grown(spec["depth"], grown))
    minutes = _uniform(rng, _grown(spec["minutes"], grown))
    rate = _uniform(rng, spec["rate"])
    cart = _uniform(rng, _grown(spec["cart"], grown), log=True)
    return {
        "rfm_recency_ms": None if recency is None else int(recency * DAY_MS),
        "rfm_frequency_30d": 0 if orders is None else round(orders / 3),
        "rfm_frequency_90d": 0 if orders is None else round(orders),
        "rfm_monetary_30d": None if revenue is None else round(revenue / 3, 2),
        "rfm_monetary_90d": None if revenue is None else round(revenue, 2),
        "recent_visit_products_viewed": 0 if depth is None else round(depth),
        "recent_visit_duration_ms": 0 if minutes is None else int(minutes * MINUTE_MS),
        "interaction_rate_30d": None if rate is None else round(rate, 4),
        "cart_value": 0 if cart is None else round(cart, 2),
        "cart_items": 0 if cart is None else max(1, round(cart / 60)),
        "top_category_30d": spec["category"],
        "events_total": rng.randint(1, 500),
    }


def population(
    count: int, *, seed: int = 0, personas: tuple[str, ...] = tuple(PERSONAS)
) -> list[Customer]:
    """``count`` customers, the personas in turn."""
    rng = random.Random(seed)
    return [
        Customer(f"p{i}", persona, features_of(persona, rng))
        for i, persona in enumerate(personas[i % len(personas)] for i in range(count))
    ]


def drift(
    customers: list[Customer], share: float, *, seed: int = 1
) -> tuple[list[Customer], set[str]]:
    """The population with ``share`` of its customers moved to another persona (new features);
    the ids of those who changed."""
    rng = random.Random(seed)
    moved = set(rng.sample([c.id for c in customers], int(len(customers) * share)))
    out = []
    for customer in customers:
        if customer.id in moved:
            other = rng.choice([p for p in PERSONAS if p != customer.persona])
            out.append(Customer(customer.id, other, features_of(other, rng)))
        else:
            out.append(customer)
    return out, moved


def outliers(count: int, *, seed: int = 2) -> list[Customer]:
    """Customers far beyond every persona, each in its own way: three columns of an ordinary
    customer pushed to extremes no persona reaches (a hundred orders, a thousand pages, ...)."""
    rng = random.Random(seed)
    extremes: dict[str, Callable[[], float]] = {
        "rfm_frequency_90d": lambda: rng.randint(100, 1_000),
        "rfm_monetary_90d": lambda: round(rng.uniform(50_000, 500_000), 2),
        "recent_visit_products_viewed": lambda: rng.randint(300, 3_000),
        "recent_visit_duration_ms": lambda: int(rng.uniform(600, 3_000) * MINUTE_MS),
        "cart_value": lambda: round(rng.uniform(20_000, 200_000), 2),
        "cart_items": lambda: rng.randint(100, 1_000),
    }
    found = []
    for i in range(count):
        features = features_of(rng.choice(list(PERSONAS)), rng)
        for name in rng.sample(list(extremes), 3):
            features[name] = extremes[name]()
        found.append(Customer(f"x{i}", "outlier", features))
    return found
