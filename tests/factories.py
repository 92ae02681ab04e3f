"""Builders for Segment-spec messages and for reading back what the collector stored."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import orjson
import redis

from app.events import Event
from app.streams import (
    CONTROL_TYPES,
    EVENT_FIELD,
    PROGRESS_KEY,
    lane_markers,
    partition_of,
    stream_key,
)

if TYPE_CHECKING:
    from app.clustering.model import ClusterModel

_ids = itertools.count(1)

# What XRANGE answers on a client without decode_responses: (id, fields) pairs of bytes. redis-py
# types it more loosely: str or bytes, and None that XRANGE never answers.
StreamEntries = list[tuple[bytes, dict[bytes, bytes]]]


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


def iso(ms: int) -> str:
    """An instant in ms as the ISO-8601 text SDKs send."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


def track_at(user: str, event: str, at: int, **properties: Any) -> dict[str, Any]:
    """A track message at ``at`` (ms) whose messageId follows from what it says, so sending it
    again is a duplicate."""
    return {
        "type": "track",
        "userId": user,
        "event": event,
        "timestamp": iso(at),
        "properties": properties,
        "messageId": f"{user}-{event}-{at}",
    }


def stored_events(client: redis.Redis, partitions: int = 4) -> list[Event]:
    """Every event in every partition's stream (not the control entries: replays' progress,
    erasures, identity merges)."""
    events = []
    for partition in range(partitions):
        for _id, fields in cast(StreamEntries, client.xrange(stream_key(partition))):
            entry = orjson.loads(fields[EVENT_FIELD.encode()])
            if entry["type"] not in CONTROL_TYPES:
                events.append(Event.model_validate(entry))
    return events


SHOP_EVENTS = [
    "Product Viewed",
    "Product Viewed",
    "Product Added",
    "Checkout Started",
    "Order Completed",
    "Product Removed",
]


def stored_event(
    *,
    message_id: str,
    customer: str,
    name: str,
    at: int,
    properties: dict[str, Any],
    source: str = "tests",
) -> dict[str, Any]:
    """A track event as the collector stores it (``app.events.Event``'s fields)."""
    return {
        "message_id": message_id,
        "type": "track",
        "customer_id": customer,
        "user_id": customer,
        "anonymous_id": None,
        "previous_id": None,
        "group_id": None,
        "event": name,
        "timestamp": at,
        "received_at": at,
        "properties": properties,
        "traits": {},
        "context": {},
        "source": source,
    }


def shop_events(
    count: int, *, customers: int, now: int, seed: int, spacing_ms: int = 1
) -> list[dict[str, Any]]:
    """``count`` shop events of random customers, in time order, the last one at ``now``."""
    rng = random.Random(seed)
    return [
        stored_event(
            message_id=f"m{n}",
            customer=f"c{rng.randrange(customers)}",
            name=rng.choice(SHOP_EVENTS),
            at=now - (count - 1 - n) * spacing_ms,
            properties={"product_id": f"p{n % 11}", "price": 10.0, "revenue": 25.0, "quantity": 1},
        )
        for n in range(count)
    ]


def append_events(client: redis.Redis, events: list[dict[str, Any]], partitions: int) -> None:
    """XADD stored events to their partitions, as the collector would have."""
    pipe = client.pipeline(transaction=False)
    for n, event in enumerate(events, start=1):
        partition = partition_of(event["customer_id"], partitions)
        pipe.xadd(stream_key(partition), {EVENT_FIELD: orjson.dumps(event)})
        if n % 1000 == 0:
            pipe.execute()
    pipe.execute()


def append_replay(
    client: redis.Redis,
    events: list[dict[str, Any]],
    partitions: int,
    *,
    lane: str = "replay-test",
    batch: int = 500,
) -> None:
    """XADD stored events (in event-time order) as ``segflow replay`` would: in ``lane``, each
    batch followed by the lane's progress, then its end."""
    seq = 0
    for start in range(0, len(events), batch):
        chunk = [{**event, "replay": lane} for event in events[start : start + batch]]
        seq += 1
        markers = lane_markers(lane, chunk[-1]["timestamp"], partitions=partitions, seq=seq)
        _append_with(client, chunk, markers, partitions)
    end = lane_markers(lane, 0, partitions=partitions, seq=seq + 1, end=True)
    _append_with(client, [], end, partitions)


def _append_with(
    client: redis.Redis,
    events: list[dict[str, Any]],
    markers: list[tuple[str, bytes]],
    partitions: int,
) -> None:
    pipe = client.pipeline(transaction=False)
    for event in events:
        partition = partition_of(event["customer_id"], partitions)
        pipe.xadd(stream_key(partition), {EVENT_FIELD: orjson.dumps(event)})
    for stream, entry in markers:
        pipe.xadd(stream, {EVENT_FIELD: entry})
    pipe.execute()


def processed_entries(client: redis.Redis) -> int:
    """Stream entries the dataflow has applied, summed over its shards (as /api/status does)."""
    return sum(orjson.loads(value)[0] for value in client.hvals(PROGRESS_KEY))


class PublishedModel:
    """What a ``ModelWatcher`` hands a shard: here always ``model``."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def current(self) -> Any:
        return self.model


def recency_model(version: int, *days: float) -> ClusterModel:
    """A k-means model by hand: one cluster per entry of ``days``, centred that many days after
    a customer's last order (logged, unscaled) and alike in every other column, so a
    customer's cluster depends on their recency alone; nobody is an outlier."""
    import math

    from app.clustering.columns import NUMERIC
    from app.clustering.model import ClusterModel

    width = len(NUMERIC)
    return ClusterModel.from_shown(
        {
            "version": version,
            "fitted_at": 0,
            "algorithm": "kmeans",
            "params": {"n_clusters": len(days)},
            "prep": {"means": [0.0] * width, "scales": [1.0] * width, "categories": []},
            "kind": "centroids",
            "clusters": [
                {
                    "id": f"c{i}",
                    "name": f"About {day:g} days on",
                    "size": 1,
                    "center": [math.log1p(day), *([0.0] * (width - 1))],
                }
                for i, day in enumerate(days)
            ],
            "assign": {"limits": [1e9] * len(days)},
        }
    )
