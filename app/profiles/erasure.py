"""GDPR erasure: everything Segflow holds about one customer, everywhere.

1. An ``erase`` entry goes into the customer's stream partition, behind their events: the
   dataflow drops the customer's state and deadlines when it reads it, and its sink deletes the
   profile. A dataflow that restarts from an older snapshot reads the entry again, so the
   customer stays erased.
2. The customer's events are deleted from every partition and from failed events.
3. The profile keys are deleted now, so the API stops showing them at once.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import redis.asyncio as aioredis
from pydantic import BaseModel

from app.profiles.keys import members_key, profile_key, recent_events_key, transitions_key
from app.streams import (
    ERASE,
    EVENT_FIELD,
    FAILED_EVENTS_KEY,
    partition_of,
    stats_key,
    stream_key,
)

SCAN_CHUNK = 1_000
# the fields that name a customer: an event's ids, and an identity merge's two sides
ID_FIELDS = ("customer_id", "user_id", "anonymous_id", "previous_id", "into", "from")


class ErasureReport(BaseModel):
    customer_id: str
    events_deleted: int
    failed_events_deleted: int
    profile_deleted: bool


def erase_entry(customer_id: str, now: int) -> dict[str, Any]:
    return {
        "type": ERASE,
        "customer_id": customer_id,
        "message_id": f"erase-{uuid.uuid4()}",
        "timestamp": now,
        "received_at": now,
        "source": "erasure",
    }


async def erase_customer(
    client: aioredis.Redis, customer_id: str, *, partitions: int, now: int
) -> ErasureReport | None:
    """Erase ``customer_id``; None when Segflow holds nothing about them."""
    deleted = 0
    for partition in range(partitions):
        deleted += await _delete_matching(
            client, stream_key(partition), lambda fields: _names_customer(fields, customer_id)
        )
    needle = orjson.dumps(customer_id)
    failed = await _delete_matching(
        client, FAILED_EVENTS_KEY, lambda fields: needle in fields.get(b"raw", b"")
    )
    segments = orjson.loads(await client.hget(profile_key(customer_id), "segments") or b"[]")
    pipe = client.pipeline(transaction=False)  # the segments' sets are in other slots
    pipe.delete(
        profile_key(customer_id), recent_events_key(customer_id), transitions_key(customer_id)
    )
    for segment in segments:
        pipe.srem(members_key(segment), customer_id)
    removed = (await pipe.execute())[0]
    if not (deleted or failed or removed):
        return None
    partition = partition_of(customer_id, partitions)
    pipe = client.pipeline(transaction=True)  # both keys carry the partition's hash tag
    pipe.xadd(stream_key(partition), {EVENT_FIELD: orjson.dumps(erase_entry(customer_id, now))})
    pipe.hincrby(stats_key(partition), "accepted", 1)
    await pipe.execute()
    return ErasureReport(
        customer_id=customer_id,
        events_deleted=deleted,
        failed_events_deleted=failed,
        profile_deleted=bool(removed),
    )


def _names_customer(fields: dict[bytes, bytes], customer_id: str) -> bool:
    event = orjson.loads(fields[EVENT_FIELD.encode()])
    if event.get("type") == ERASE:
        return False  # the erasure record itself stays: it keeps the customer erased
    return any(event.get(name) == customer_id for name in ID_FIELDS)


async def _delete_matching(client: aioredis.Redis, key: str, matches: Any) -> int:
    deleted, start = 0, "-"
    while True:
        rows: Any = await client.xrange(key, min=start, max="+", count=SCAN_CHUNK)
        if not rows:
            return deleted
        doomed = [entry_id for entry_id, fields in rows if matches(fields)]
        if doomed:
            deleted += await client.xdel(key, *doomed)
        if len(rows) < SCAN_CHUNK:
            return deleted
        start = "(" + rows[-1][0].decode()
