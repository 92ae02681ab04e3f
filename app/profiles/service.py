"""Reading customer profiles (the dataflow's sinks write them)."""

from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aioredis
from pydantic import BaseModel

from app.profiles.keys import profile_key, recent_events_key

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
    cluster: str | None
    first_seen: int | None
    last_seen: int | None
    events: list[ProfileEvent]  # newest first


async def get_profile(client: aioredis.Redis, customer_id: str) -> CustomerProfile | None:
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(profile_key(customer_id))
    pipe.zrevrange(recent_events_key(customer_id), 0, RECENT_EVENTS_SHOWN - 1)
    fields, recent = await pipe.execute()
    if not fields:
        return None
    features = orjson.loads(fields[b"features"])
    return CustomerProfile(
        customer_id=customer_id,
        traits=orjson.loads(fields[b"traits"]),
        features=features,
        segments=orjson.loads(fields.get(b"segments", b"[]")),
        cluster=None,  # and clusters with the clustering stage
        first_seen=features.get("first_seen"),
        last_seen=features.get("last_seen"),
        events=[ProfileEvent.model_validate(orjson.loads(item)) for item in recent],
    )
