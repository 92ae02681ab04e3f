"""Builders for Segment-spec messages and for reading back what the collector stored."""

from __future__ import annotations

import itertools
from typing import Any

import redis

from app.events import Event
from app.streams import EVENT_FIELD, stream_key

_ids = itertools.count(1)


def track(user: str = "u1", event: str = "Product Viewed", **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "track",
        "userId": user,
        "event": event,
        "messageId": f"m-{next(_ids)}",
        "timestamp": "2026-11-20T10:00:00.000Z",
        "properties": {"product_id": "p1", "price": 19.5},
    }
    message.update(extra)
    return message


def stored_events(client: redis.Redis, partitions: int = 4) -> list[Event]:
    """Every event in every partition's stream."""
    events = []
    for partition in range(partitions):
        for _id, fields in client.xrange(stream_key(partition)):  # type: ignore[union-attr]
            events.append(Event.from_json(fields[EVENT_FIELD.encode()]))
    return events
