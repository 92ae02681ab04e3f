"""GDPR erasure: everything Segflow holds about one customer, everywhere.

1. An ``erase`` entry goes into the customer's stream partition, behind their events: the
   dataflow drops the customer's state and deadlines when it reads it, and its sink deletes the
   profile. A dataflow that restarts from an older snapshot reads the entry again, so the
   customer stays erased.
2. The customer's events are deleted from every partition and from failed events.
3. The profile keys are deleted now, so the API stops showing them at once.

An anonymous id merged into the customer (``identify`` with both ids, ``alias``) is theirs too:
its events, its profile and the dataflow's note that it was merged are erased the same way.
(Ids linked through another anonymous id, a chain of merges, are followed one step.)
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import redis.asyncio as aioredis
from pydantic import BaseModel

from app.profiles.keys import (
    corrections_key,
    members_key,
    profile_key,
    recent_events_key,
    transitions_key,
)
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
    linked: set[str] = set()  # anonymous ids merged into the customer
    deleted = await _delete_naming(client, {customer_id}, partitions, linked)
    linked.discard(customer_id)
    if linked:
        deleted += await _delete_naming(client, linked, partitions, set())
    failed = 0
    removed = 0
    for erased in (customer_id, *sorted(linked)):
        needle = orjson.dumps(erased)
        failed += await _delete_matching(
            client, FAILED_EVENTS_KEY, lambda fields, n=needle: n in fields.get(b"raw", b"")
        )
        segments = orjson.loads(await client.hget(profile_key(erased), "segments") or b"[]")
        pipe = client.pipeline(transaction=False)  # the segments' sets are in other slots
        pipe.delete(
            profile_key(erased),
            recent_events_key(erased),
            transitions_key(erased),
            corrections_key(erased),
        )
        for segment in segments:
            pipe.srem(members_key(segment), erased)
        removed += (await pipe.execute())[0]
    if not (deleted or failed or removed):
        return None
    for erased in (customer_id, *sorted(linked)):
        partition = partition_of(erased, partitions)
        pipe = client.pipeline(transaction=True)  # both keys carry the partition's hash tag
        pipe.xadd(stream_key(partition), {EVENT_FIELD: orjson.dumps(erase_entry(erased, now))})
        pipe.hincrby(stats_key(partition), "accepted", 1)
        await pipe.execute()
    return ErasureReport(
        customer_id=customer_id,
        events_deleted=deleted,
        failed_events_deleted=failed,
        profile_deleted=bool(removed),
    )


async def _delete_naming(
    client: aioredis.Redis, ids: set[str], partitions: int, linked: set[str]
) -> int:
    """Delete the stream entries naming any of ``ids``; add the other ids they name (merged
    identities) to ``linked``."""

    def names(fields: dict[bytes, bytes]) -> bool:
        event = orjson.loads(fields[EVENT_FIELD.encode()])
        if event.get("type") == ERASE:
            return False  # the erasure record itself stays: it keeps the customer erased
        named = {event.get(name) for name in ID_FIELDS} - {None}
        if named & ids:
            linked.update(str(other) for other in named)
            return True
        return False

    deleted = 0
    for partition in range(partitions):
        deleted += await _delete_matching(client, stream_key(partition), names)
    return deleted


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
