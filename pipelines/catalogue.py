"""The features computed before rules ask for their own: those of the shipped rules
(DESIGN.md, "Shipped rules") and the built-ins shown on every profile."""

from __future__ import annotations

from pipelines.features import (
    DEFAULT_LATENESS_MS,
    Catalogue,
    FeatureSpec,
    Since,
    windowed,
)

SHIPPED_RULE_FEATURES: tuple[FeatureSpec, ...] = (
    windowed("count", "Product Viewed", "10m"),  # browsing-enthusiasts
    windowed("count", "Order Completed", "10m"),
    Since("Product Added"),  # cart-abandoners
    windowed("count", "Order Completed"),  # lapsed-customers
    windowed("count", "Order Completed", "30d"),
    windowed("count", "Checkout Started", "24h"),  # high-intent-buyers
    windowed("count", "Order Completed", "24h"),
    windowed("count", "Order Completed", "90d"),  # loyal-customers
)
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
    "rfm_recency_ms",
    "rfm_frequency_30d",
    "rfm_frequency_90d",
    "rfm_monetary_30d",
    "rfm_monetary_90d",
    "interaction_rate_30d",
    "top_category_30d",
)


def default_catalogue(
    allowed_lateness_ms: int = DEFAULT_LATENESS_MS,
    rule_features: tuple[FeatureSpec | str, ...] = (),
) -> Catalogue:
    """The shipped rules' features, the profile's built-ins and what the active rules read."""
    return Catalogue.of(
        *SHIPPED_RULE_FEATURES,
        *PROFILE_BUILTINS,
        *rule_features,
        allowed_lateness_ms=allowed_lateness_ms,
    )
