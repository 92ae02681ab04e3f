"""Reading customer profiles (the dataflow's sinks write them)."""

from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aioredis
from pydantic import BaseModel

from app.clock import now_ms
from app.features import profile_features
from app.profiles.keys import CLUSTER_PREFIX, profile_key, recent_events_key

RECENT_EVENTS_SHOWN = 20


class ProfileEvent(BaseModel):
    type: str
    event: str | None
    timestamp: int
    properties: dict[str, Any]


class CustomerProfile(BaseModel):
    customer_id: str
    traits: dict[str, Any]
    features: dict[str, Any]
    segments: list[str]
    cluster: str | None  # the cluster's id (null before the first fit, or density noise)
    outlier: bool = False  # far from every cluster (the README's "Clusters" says how far)
    first_seen: int | None
    last_seen: int | None
    events: list[ProfileEvent]  # newest first


async def get_profile(
    client: aioredis.Redis, customer_id: str, *, now: int | None = None
) -> CustomerProfile | None:
    """The customer's profile with its features as of ``now`` (default: the clock's now;
    ``app.features.features_as_of``)."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(profile_key(customer_id))
    pipe.zrevrange(recent_events_key(customer_id), 0, RECENT_EVENTS_SHOWN - 1)
    fields, recent = await pipe.execute()
    if not fields:
        return None
    features = profile_features(fields, now_ms() if now is None else now)
    # the sink keeps the cluster among the segments, as the pseudo-segment ``cluster:<id>``
    memberships: list[str] = orjson.loads(fields.get(b"segments", b"[]"))
    clusters = [name for name in memberships if name.startswith(CLUSTER_PREFIX)]
    return CustomerProfile(
        customer_id=customer_id,
        traits=orjson.loads(fields[b"traits"]),
        features=features,
        segments=[name for name in memberships if not name.startswith(CLUSTER_PREFIX)],
        cluster=clusters[0][len(CLUSTER_PREFIX) :] if clusters else None,
        outlier=fields.get(b"outlier") in (b"1", b"true"),
        first_seen=features.get("first_seen"),
        last_seen=features.get("last_seen"),
        events=[ProfileEvent.model_validate(orjson.loads(item)) for item in recent],
    )
