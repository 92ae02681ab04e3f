"""The delivery log and the retry schedule, in Redis, so a restarted dispatcher loses nothing.

One hash per delivery (``delivery:<trigger id>``: its trigger, status, attempts, last answer),
indexed by time overall and per customer, rule and destination. Deliveries waiting for an
attempt are in ``deliveries:due`` scored by when; a dispatcher *leases* one by moving its score
``LEASE_MS`` ahead before trying it, so a dispatcher killed mid-flight leaves it due again
after the lease. Dead letters, the deliveries an operator can replay once the cause is
fixed (``dead``, ``undeliverable`` and ``failed`` ones), are in ``deliveries:dead``.

Statuses: ``scheduled`` (waiting for an attempt, retries included), ``delivered``,
``held_out`` (the rule's holdout group: recorded, not sent), ``suppressed`` (no consent),
``capped`` (frequency cap), ``undeliverable`` (no such destination), ``failed`` (the template
did not render: nothing sent), ``dead`` (the last attempt failed, or the receiver refused),
``retracted`` (a late event corrected the transition before it was sent: nothing sent),
``stale`` (the transition was older than the send's ``max_age`` when first decided: history,
not news; nothing sent).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, cast, get_args

import orjson
import redis.asyncio as aioredis
from pydantic import BaseModel

DUE_KEY = "deliveries:due"
DEAD_KEY = "deliveries:dead"
LOG_KEY = "deliveries:log"
LEASE_MS = 30_000  # longer than an attempt takes (its timeout, and a wait for its turn)
# Every status a delivery can have (the API's schema lists them): waiting, then one of the ends.
DeliveryStatus = Literal[
    "scheduled",
    "delivered",
    "held_out",
    "suppressed",
    "capped",
    "undeliverable",
    "failed",
    "dead",
    "retracted",
    "stale",
]
TERMINAL = frozenset(get_args(DeliveryStatus)) - {"scheduled"}
# What a replay makes due again: a receiver that failed, a destination missing, disabled or
# refused, or a template missing or failing when the trigger came, may be fixed since.
REPLAYABLE = frozenset({"dead", "undeliverable", "failed"})


def delivery_key(delivery_id: str) -> str:
    return f"delivery:{delivery_id}"


def index_key(kind: str, value: str) -> str:
    """``kind``: customer, rule or destination."""
    return f"deliveries:{kind}:{value}"


def cap_key(customer_id: str, rule_id: str, destination: str, template: str) -> str:
    return f"deliveries:sent:{customer_id}:{rule_id}:{destination}:{template}"


class Delivery(BaseModel):
    id: str  # the trigger's id: the webhook-id, stable across retries and replays
    customer_id: str
    rule: str  # the segment (rule id) whose enter / exit triggered it
    kind: str  # enter | exit
    at: int  # the transition's event time
    rule_version: int
    destination: str
    template: str
    send: dict[str, Any]
    status: DeliveryStatus
    attempts: int = 0
    created_at: int
    updated_at: int
    next_at: int | None = None
    response_code: int | None = None
    latency_ms: float | None = None
    reason: str = ""
    # past this wall-clock instant the first attempt is not made (the transition is history);
    # None once a decision was made fresh (quiet hours deferred it) or an operator replayed it
    stale_after: int | None = None

    def fields(self) -> dict[str, str]:
        return {
            key: orjson.dumps(value).decode()
            for key, value in self.model_dump().items()
            if value is not None
        }

    @classmethod
    def from_fields(cls, fields: Mapping[bytes, bytes]) -> Delivery:
        return cls.model_validate(
            {key.decode(): orjson.loads(value) for key, value in fields.items()}
        )


# Create the delivery once (a trigger read twice finds it), index it and make it due.
# KEYS: delivery, log, by customer, by rule, by destination, due; ARGV: created_at, id, due at,
# then the fields
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
for i = 2, 5 do redis.call('ZADD', KEYS[i], ARGV[1], ARGV[2]) end
redis.call('ZADD', KEYS[6], ARGV[3], ARGV[2])
return 1
"""

# Lease due deliveries: those due by ARGV[1] move to ARGV[2] (when the lease runs out), and
# the consumer's set of leases names them. KEYS: due, leases; ARGV: now, lease end, how many
_LEASE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], id)
  redis.call('SADD', KEYS[2], id)
end
return due
"""


def leases_key(consumer: str) -> str:
    return f"deliveries:leases:{consumer}"


# A frequency-cap slot: sends after now - per are counted; one more is taken if allowed. Those
# "after now" count too: two attempts at once read the clock in one order and reserve in the
# other, and the later stamp must not hide from the earlier one.
# KEYS: the customer's sends of this action; ARGV: now, per (ms), times, delivery id
_RESERVE = """
local now, per = tonumber(ARGV[1]), tonumber(ARGV[2])
if redis.call('ZSCORE', KEYS[1], ARGV[4]) then return 1 end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - per)
if redis.call('ZCOUNT', KEYS[1], '(' .. (now - per), '+inf') >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], per)
return 1
"""


class DeliveryStore:
    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client
        self._create = client.register_script(_CREATE)
        self._lease = client.register_script(_LEASE)
        self._reserve = client.register_script(_RESERVE)

    async def create(self, deliveries: list[Delivery]) -> list[bool]:
        """Record new deliveries, due at their ``next_at``, in one round trip; False for one
        that exists already (a trigger read again)."""
        pipe = self._redis.pipeline(transaction=False)
        for delivery in deliveries:
            flat = [x for pair in delivery.fields().items() for x in pair]
            keys = [
                delivery_key(delivery.id),
                LOG_KEY,
                index_key("customer", delivery.customer_id),
                index_key("rule", delivery.rule),
                index_key("destination", delivery.destination),
                DUE_KEY,
            ]
            await self._create(
                keys=keys,
                args=[
                    delivery.created_at,
                    delivery.id,
                    delivery.next_at or delivery.created_at,
                    *flat,
                ],
                client=pipe,
            )
        return [bool(created) for created in await pipe.execute()]

    async def lease_due(self, now: int, most: int, consumer: str) -> list[str]:
        """Deliveries due by ``now``, leased to ``consumer`` for ``LEASE_MS``."""
        keys = [DUE_KEY, leases_key(consumer)]
        found = await self._lease(keys=keys, args=[now, now + LEASE_MS, most])
        return [item.decode() if isinstance(item, bytes) else item for item in found]

    async def reclaim(self, consumer: str, now: int) -> int:
        """At a dispatcher's start: what it had leased when it died is due now, not when the
        leases run out."""
        key = leases_key(consumer)
        held = cast(list[bytes], await self._redis.smembers(key))
        if held:
            await self._redis.zadd(DUE_KEY, dict.fromkeys(held, now), xx=True)
        await self._redis.delete(key)
        return len(held)

    async def unlease(self, consumer: str, delivery_ids: list[str], now: int) -> None:
        """Deliveries just leased whose last attempt is still ending here (it scheduled the
        retry now due): due again at ``now``, to be leased once it has ended, not in
        ``LEASE_MS``. Only deliveries still scheduled are moved (a finished one is left out)."""
        await self._redis.zadd(DUE_KEY, dict.fromkeys(delivery_ids, now), xx=True)
        await self._redis.srem(leases_key(consumer), *delivery_ids)

    async def release(self, consumer: str, delivery_id: str) -> None:
        await self._redis.srem(leases_key(consumer), delivery_id)

    async def get(self, delivery_id: str) -> Delivery | None:
        fields = cast(dict[bytes, bytes], await self._redis.hgetall(delivery_key(delivery_id)))
        return Delivery.from_fields(fields) if fields else None

    async def save(self, delivery: Delivery) -> None:
        """Write the delivery's state; schedule it (``next_at``), or take it off the schedule
        when it is finished, into the dead letters when replayable."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(delivery_key(delivery.id), mapping=delivery.fields())  # type: ignore[arg-type]
        cleared = [name for name, value in delivery.model_dump().items() if value is None]
        if delivery.status == "scheduled" and delivery.next_at is not None:
            pipe.zadd(DUE_KEY, {delivery.id: delivery.next_at})
        else:
            pipe.zrem(DUE_KEY, delivery.id)
            cleared.append("next_at")
        if cleared:  # a field set to None is gone from the hash too, not left as it was
            pipe.hdel(delivery_key(delivery.id), *set(cleared))
        if delivery.status in REPLAYABLE:
            pipe.zadd(DEAD_KEY, {delivery.id: delivery.updated_at})
        else:
            pipe.zrem(DEAD_KEY, delivery.id)
        await pipe.execute()

    async def reserve_send(self, delivery: Delivery, now: int, times: int, per_ms: int) -> bool:
        """Take one of the ``times`` sends allowed per ``per_ms`` to this customer for this
        rule's action, atomically (two deliveries at once cannot both take the last one)."""
        key = cap_key(delivery.customer_id, delivery.rule, delivery.destination, delivery.template)
        taken = await self._reserve(keys=[key], args=[now, per_ms, times, delivery.id])
        return bool(taken)

    async def release_send(self, delivery: Delivery) -> None:
        """Give the reservation back: nothing reached the customer."""
        key = cap_key(delivery.customer_id, delivery.rule, delivery.destination, delivery.template)
        await self._redis.zrem(key, delivery.id)

    async def page(
        self, key: str, *, limit: int, cursor: str | None
    ) -> tuple[list[Delivery], str | None]:
        """Newest first; ``cursor``: how many were already read."""
        start = int(cursor) if cursor else 0
        ids: list[bytes] = cast(list[bytes], await self._redis.zrevrange(key, start, start + limit))
        pipe = self._redis.pipeline(transaction=False)
        for delivery_id in ids[:limit]:
            pipe.hgetall(delivery_key(delivery_id.decode()))
        found = [Delivery.from_fields(fields) for fields in await pipe.execute() if fields]
        return found, str(start + limit) if len(ids) > limit else None

    async def statuses_since(self, since: int, *, most: int = 1_000) -> dict[str, int]:
        """How many of the deliveries created since ``since`` (ms) are in each status, over
        the newest ``most`` of them (the overview's delivery health)."""
        ids: Any = await self._redis.zrevrangebyscore(LOG_KEY, "+inf", since, start=0, num=most)
        pipe = self._redis.pipeline(transaction=False)
        for delivery_id in ids:
            pipe.hget(delivery_key(delivery_id.decode()), "status")
        counts: dict[str, int] = {}
        for status in await pipe.execute():
            if status is not None:
                name = orjson.loads(status)
                counts[name] = counts.get(name, 0) + 1
        return counts

    async def replay(self, delivery_id: str, now: int) -> Delivery | None:
        """A dead letter (``dead``, ``undeliverable`` or ``failed``), due again now with its
        attempts counted afresh. The operator chose to send it: its age no longer stops it
        (consent, holdout, the cap and quiet hours still apply)."""
        delivery = await self.get(delivery_id)
        if delivery is None or delivery.status not in REPLAYABLE:
            return None
        delivery = delivery.model_copy(
            update={
                "status": "scheduled",
                "attempts": 0,
                "next_at": now,
                "updated_at": now,
                "stale_after": None,
                "reason": f"replayed ({delivery.reason})",
            }
        )
        await self.save(delivery)
        return delivery
