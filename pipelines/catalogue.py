"""What the dataflow computes: the built-ins shown on every profile, and what the active rules
read (``app.rules`` derives that from each rule)."""

from __future__ import annotations

from pipelines.features import DEFAULT_LATENESS_MS, Catalogue, FeatureSpec

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
    """The profile's built-ins and what the active rules read."""
    return Catalogue.of(
        *PROFILE_BUILTINS,
        *rule_features,
        allowed_lateness_ms=allowed_lateness_ms,
    )
