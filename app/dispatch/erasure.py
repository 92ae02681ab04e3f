"""GDPR erasure of what the dispatcher holds about customers: their entries in the ``triggers``
stream, the markers the sink keeps per trigger, and their deliveries with every index, lease,
dead letter and frequency-cap record that names one.

A trigger's id, and so its delivery's, starts with the customer id
(``app.profiles.keys.trigger_id``), so the keys that carry one are found by a scan of the key
space and told apart exactly (an id that contains ``:`` is not mistaken for a shorter one).
"""

from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aioredis

from app.dispatch.deliveries import DEAD_KEY, DUE_KEY, LOG_KEY, delivery_key, index_key
from app.dispatch.worker import GROUP
from app.profiles.keys import TRIGGERS_KEY, retracted_key, trigger_marker_key

SCAN_CHUNK = 1_000
_TRIGGER_ID_PARTS = 5  # customer : segment : kind : at : index
_CAP_PREFIX = "deliveries:sent:"  # then customer : rule : destination : template
_LEASES_PREFIX = "deliveries:leases:"


def customer_of_trigger(trigger: str) -> str | None:
    """The customer a trigger id names (segment ids, kinds and instants hold no ``:``)."""
    parts = trigger.rsplit(":", _TRIGGER_ID_PARTS - 1)
    return parts[0] if len(parts) == _TRIGGER_ID_PARTS else None


def _owner(key: str) -> tuple[str, str] | None:
    """(kind, customer id) of a key that belongs to one customer's dispatch state."""
    for kind, prefix in (
        ("delivery", delivery_key("")),
        ("marker", trigger_marker_key("")),
        ("marker", retracted_key("")),
    ):
        if key.startswith(prefix):
            customer = customer_of_trigger(key[len(prefix) :])
            return (kind, customer) if customer is not None else None
    if key.startswith(_CAP_PREFIX):  # rule ids and destination and template names hold no ":"
        parts = key[len(_CAP_PREFIX) :].rsplit(":", 3)
        return ("cap", parts[0]) if len(parts) == 4 else None
    if key.startswith(index_key("customer", "")):
        return "index", key[len(index_key("customer", "")) :]
    return None


async def forget_customers(client: aioredis.Redis, ids: set[str]) -> dict[str, int]:
    """Delete every trigger, delivery and dispatcher record of the customers ``ids``: how
    many ``deliveries`` and ``triggers`` went."""
    triggers = await _delete_triggers(client, ids)
    deleted = 0
    doomed_keys: list[str] = []
    deliveries: set[str] = set(triggers)
    leases: list[str] = []
    async for raw in client.scan_iter(count=SCAN_CHUNK):
        key = raw.decode("utf-8", "surrogateescape")
        if key.startswith(_LEASES_PREFIX):
            leases.append(key)
            continue
        owner = _owner(key)
        if owner is None or owner[1] not in ids:
            continue
        kind, _ = owner
        if kind == "delivery":
            deliveries.add(key[len(delivery_key("")) :])
        elif kind == "index":
            found: Any = await client.zrange(key, 0, -1)
            deliveries.update(member.decode() for member in found)
        doomed_keys.append(key)
    for delivery in sorted(deliveries):
        deleted += await _delete_delivery(client, delivery, leases)
    if doomed_keys:
        await client.delete(*doomed_keys)
    return {"deliveries": deleted, "triggers": len(triggers)}


async def _delete_triggers(client: aioredis.Redis, ids: set[str]) -> list[str]:
    """Delete the customers' entries in the ``triggers`` stream (acknowledged first, so the
    dispatcher's backlog never reads a deleted entry); return their trigger ids."""
    found: list[str] = []
    start = "-"
    while True:
        rows: Any = await client.xrange(TRIGGERS_KEY, min=start, max="+", count=SCAN_CHUNK)
        doomed = []
        for entry_id, fields in rows:
            if fields.get(b"customer_id", b"").decode() in ids:
                doomed.append(entry_id)
                found.append(fields.get(b"trigger_id", b"").decode())
        if doomed:
            pipe = client.pipeline(transaction=False)
            pipe.xack(TRIGGERS_KEY, GROUP, *doomed)
            pipe.xdel(TRIGGERS_KEY, *doomed)
            await pipe.execute()
        if len(rows) < SCAN_CHUNK:
            return [trigger for trigger in found if trigger]
        start = "(" + rows[-1][0].decode()


async def _delete_delivery(client: aioredis.Redis, delivery: str, leases: list[str]) -> int:
    """One delivery: its hash, its place in every index, the schedule, the dead letters and
    the dispatchers' leases, and its trigger's markers. 1 if it existed."""
    rule, destination = await client.hmget(delivery_key(delivery), ["rule", "destination"])
    pipe = client.pipeline(transaction=False)
    for key in (LOG_KEY, DUE_KEY, DEAD_KEY):
        pipe.zrem(key, delivery)
    if rule is not None:
        pipe.zrem(index_key("rule", orjson.loads(rule)), delivery)
    if destination is not None:
        pipe.zrem(index_key("destination", orjson.loads(destination)), delivery)
    for lease in leases:
        pipe.srem(lease, delivery)
    pipe.delete(delivery_key(delivery), trigger_marker_key(delivery), retracted_key(delivery))
    await pipe.execute()
    return 0 if rule is None else 1
