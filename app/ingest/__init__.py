"""The collector: Segment-compatible HTTP endpoints that validate, dedup and append events."""
