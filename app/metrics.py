"""Prometheus metrics. Under ``segflow up`` every process writes to files in
``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` adds them up across the API's worker processes."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

EVENTS_ACCEPTED = Counter("segflow_events_accepted", "Events stored in the event streams.")
EVENTS_DUPLICATE = Counter(
    "segflow_events_duplicate", "Events acknowledged but not stored again (messageId seen)."
)
EVENTS_FAILED = Counter(
    "segflow_events_failed", "Messages kept in the failed-events store instead of the streams."
)
REQUEST_LATENCY = Histogram(
    "segflow_collector_request_seconds",
    "Collector request latency, from body read to answer.",
    ["endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)

DELIVERIES = Counter(
    "segflow_webhook_attempts",
    "Webhook delivery attempts by outcome: the HTTP status class, or 'error' (no answer).",
    ["outcome"],
)
DELIVERY_LATENCY = Histogram(
    "segflow_webhook_seconds",
    "Webhook request latency, from sending to the receiver's answer.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def record_delivery(status: int | None, latency_ms: float) -> None:
    DELIVERIES.labels("error" if status is None else f"{status // 100}xx").inc()
    DELIVERY_LATENCY.observe(latency_ms / 1000)


def render() -> tuple[bytes, str]:
    """The exposition text of this process, or of all processes in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
