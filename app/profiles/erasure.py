"""GDPR erasure: everything Segflow holds about one customer, everywhere.

At once (``erase_customer``, the API's ``DELETE /api/customers/{id}``):

1. The customer's events are deleted from every partition, and their failed events (those whose
   message names them in an identity field: ``userId``, ``anonymousId``, ``previousId``, or the
   stored event's ids for a late one; never a property or an event name that happens to equal
   the id).
2. The profile keys, segment memberships and the segments' moves naming them are deleted, so
   the API stops showing them.
3. What the caller erases elsewhere (``forget_elsewhere``: the dispatcher's triggers and
   deliveries) goes too.
4. An ``erase`` entry goes into the customer's stream partition, behind their events: the
   dataflow drops the customer's state and deadlines when it reads it, and its sink deletes the
   profile again (events it was processing meanwhile may have written it back). A dataflow
   that restarts from an older snapshot reads the entry again, so the customer stays erased.
5. Redis is asked to rewrite its append-only file (``rewrite_aof``), which still holds the
   commands that wrote the customer's data.

Later, once the dataflow's recovery snapshots no longer hold the customer, the dataflow
finishes the erasure (``pipelines.erasure``): the ``erase`` entry itself goes, any segment move
still naming the customer (``moves.sweep``), the recovery store is compacted, and the
append-only file is rewritten again.

An anonymous id merged into the customer (``identify`` with both ids, ``alias``) is theirs too:
its events, its profile and the dataflow's note that it was merged are erased the same way.
(Ids linked through another anonymous id, a chain of merges, are followed one step.)
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
import redis.asyncio as aioredis

from app.profiles import moves
from app.profiles.keys import (
    CLUSTER_MOVES_KEY,
    corrections_key,
    members_key,
    profile_key,
    recent_events_key,
    transitions_key,
)
from app.profiles.service import CustomerProfile, get_profile
from app.redis_client import rewrite_aof
from app.streams import (
    ERASE,
    EVENT_FIELD,
    FAILED_EVENTS_KEY,
    PROGRESS_KEY,
    entry_order,
    partition_of,
    stats_key,
    stream_key,
)

SCAN_CHUNK = 1_000
# the fields that name a customer: an event's ids, and an identity merge's two sides
ID_FIELDS = ("customer_id", "user_id", "anonymous_id", "previous_id", "into", "from")
# the fields of a failed event's message that name its customer: a Segment message's ids as
# the collector or a replay stored it, and a stored event's ids (a late event's)
IDENTITY_FIELDS = (
    "userId",
    "anonymousId",
    "previousId",
    "customer_id",
    "user_id",
    "anonymous_id",
    "previous_id",
)

# What else to erase for the customer and their linked ids (the dispatcher's records): how
# many records it deleted.
ForgetElsewhere = Callable[[aioredis.Redis, set[str]], Awaitable[dict[str, int]]]


class ErasureReport(CustomerProfile):
    """The profile as it was when erased (empty when there was none), and what went."""

    events_deleted: int
    failed_events_deleted: int
    profile_deleted: bool
    deliveries_deleted: int = 0
    triggers_deleted: int = 0
    aof_rewrite: str = "off"  # see ``app.redis_client.rewrite_aof``


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
    client: aioredis.Redis,
    customer_id: str,
    *,
    partitions: int,
    now: int,
    forget_elsewhere: ForgetElsewhere | None = None,
) -> ErasureReport | None:
    """Erase ``customer_id``; None when Segflow holds nothing about them."""
    profile = await get_profile(client, customer_id)
    linked: set[str] = set()  # anonymous ids merged into the customer
    gone: dict[int, list[bytes]] = {}  # the entries deleted, by partition
    deleted = await delete_naming(client, {customer_id}, partitions, linked, gone=gone)
    linked.discard(customer_id)
    if linked:
        deleted += await delete_naming(client, linked, partitions, set(), gone=gone)
    await _uncount_unread(client, gone)
    everyone = {customer_id, *linked}
    failed = await delete_failed_events(client, everyone)
    removed = 0
    for erased in sorted(everyone):
        removed += await _delete_profile(client, erased)
    elsewhere = await forget_elsewhere(client, everyone) if forget_elsewhere else {}
    if not (deleted or failed or removed or any(elsewhere.values())):
        return None
    for erased in sorted(everyone):
        partition = partition_of(erased, partitions)
        pipe = client.pipeline(transaction=True)  # both keys carry the partition's hash tag
        pipe.xadd(stream_key(partition), {EVENT_FIELD: orjson.dumps(erase_entry(erased, now))})
        pipe.hincrby(stats_key(partition), "accepted", 1)
        await pipe.execute()
    shown = profile or CustomerProfile(
        customer_id=customer_id,
        traits={},
        features={},
        segments=[],
        cluster=None,
        first_seen=None,
        last_seen=None,
        events=[],
    )
    return ErasureReport(
        **shown.model_dump(),
        events_deleted=deleted,
        failed_events_deleted=failed,
        profile_deleted=bool(removed),
        deliveries_deleted=elsewhere.get("deliveries", 0),
        triggers_deleted=elsewhere.get("triggers", 0),
        aof_rewrite=await rewrite_aof(client),
    )


async def _delete_profile(client: aioredis.Redis, customer_id: str) -> int:
    """The profile's keys, the customer's place in their segments (their cluster's members too:
    it is among them, ``cluster:<id>``), the segments' moves their transitions list names
    (``moves.sweep`` finds the rest later) and their last move between clusters (the
    clusters' turnover): how many keys went."""
    pipe = client.pipeline(transaction=False)
    pipe.hget(profile_key(customer_id), "segments")
    pipe.zrange(transitions_key(customer_id), 0, -1)
    found, listed = await pipe.execute()
    segments = orjson.loads(found or b"[]")
    await moves.forget_listed(client, customer_id, listed)
    pipe = client.pipeline(transaction=False)  # the segments' sets are in other slots
    pipe.delete(
        profile_key(customer_id),
        recent_events_key(customer_id),
        transitions_key(customer_id),
        corrections_key(customer_id),
    )
    for segment in segments:
        pipe.srem(members_key(segment), customer_id)
    pipe.zrem(CLUSTER_MOVES_KEY, customer_id)
    deleted: int = (await pipe.execute())[0]
    return deleted


async def delete_naming(
    client: aioredis.Redis,
    ids: set[str],
    partitions: int,
    linked: set[str],
    *,
    upto: str = "+",
    erase_entries: bool = False,
    gone: dict[int, list[bytes]] | None = None,
) -> int:
    """Delete the stream entries naming any of ``ids`` (up to the entry id ``upto``; the
    ``erase`` entries too with ``erase_entries``); add the other ids they name (merged
    identities) to ``linked``, and the ids of the entries deleted to ``gone`` (by partition)."""

    def names(fields: dict[bytes, bytes]) -> bool:
        event = orjson.loads(fields[EVENT_FIELD.encode()])
        if event.get("type") == ERASE and not erase_entries:
            return False  # the erasure record stays until the dataflow has passed it
        named = {event.get(name) for name in ID_FIELDS} - {None}
        if named & ids:
            linked.update(str(other) for other in named)
            return True
        return False

    deleted = 0
    for partition in range(partitions):
        found = None if gone is None else gone.setdefault(partition, [])
        deleted += await _delete_matching(client, stream_key(partition), names, upto, found)
    return deleted


async def _uncount_unread(client: aioredis.Redis, gone: dict[int, list[bytes]]) -> None:
    """The entries deleted that the dataflow had not applied yet (past the last entry it
    reported, ``PROGRESS_KEY``) will never be: they are taken off the partition's accepted
    count, so its ``lag`` returns to 0. (An entry the flow read but had not yet reported is
    counted both ways: the lag then shows one less, never one more for ever.)"""
    if not any(gone.values()):
        return
    applied: dict[int, tuple[int, int]] = {}
    for value in await client.hvals(PROGRESS_KEY):
        progress = orjson.loads(value)
        if len(progress) >= 4 and progress[3] is not None:
            at = entry_order(progress[3])
            applied[progress[2]] = max(applied.get(progress[2], (-1, -1)), at)
    pipe = client.pipeline(transaction=False)
    for partition, entries in gone.items():
        last = applied.get(partition, (-1, -1))
        unread = sum(entry_order(entry) > last for entry in entries)
        if unread:
            pipe.hincrby(stats_key(partition), "accepted", -unread)
    await pipe.execute()


async def delete_failed_events(client: aioredis.Redis, ids: set[str], *, upto: str = "+") -> int:
    """Delete the failed events whose message names one of ``ids`` in an identity field."""
    patterns = [_identity_pattern(customer_id) for customer_id in ids]

    def matches(fields: dict[bytes, bytes]) -> bool:
        return names_customer(fields.get(b"raw", b""), ids, patterns)

    return await _delete_matching(client, FAILED_EVENTS_KEY, matches, upto)


def names_customer(raw: bytes, ids: set[str], patterns: Iterable[re.Pattern[bytes]]) -> bool:
    """Whether a failed event's message names one of ``ids`` as its customer.

    A message that is not JSON (a body that did not parse, a row a replay could not read) is
    searched for ``"userId": "<id>"`` and its kin instead; anything else in it is not an
    identity."""
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return any(pattern.search(raw) for pattern in patterns)
    if not isinstance(message, dict):
        return False
    for name in IDENTITY_FIELDS:
        value = message.get(name)
        if isinstance(value, bool) or not isinstance(value, str | int):
            continue
        if str(value) in ids:
            return True
    return False


def _identity_pattern(customer_id: str) -> re.Pattern[bytes]:
    names = b"|".join(re.escape(name.encode()) for name in IDENTITY_FIELDS)
    quoted = re.escape(orjson.dumps(customer_id))
    alternatives = quoted + (
        b"|" + re.escape(customer_id.encode()) if customer_id.isdigit() else b""
    )
    return re.compile(rb'"(?:' + names + rb')"\s*:\s*(?:' + alternatives + rb")(?![\w.])")


async def _delete_matching(
    client: aioredis.Redis,
    key: str,
    matches: Any,
    upto: str = "+",
    found: list[bytes] | None = None,
) -> int:
    deleted, start = 0, "-"
    while True:
        rows: Any = await client.xrange(key, min=start, max=upto, count=SCAN_CHUNK)
        if not rows:
            return deleted
        doomed = [entry_id for entry_id, fields in rows if matches(fields)]
        if doomed:
            deleted += await client.xdel(key, *doomed)
            if found is not None:
                found += doomed
        if len(rows) < SCAN_CHUNK:
            return deleted
        start = "(" + rows[-1][0].decode()
