"""Bounds on what the dispatcher keeps: the ``triggers`` stream once its consumer group has
acknowledged entries (each is then a delivery), and finished deliveries past their age.

A trigger entry goes once the group has read and acknowledged it and it is older than the
stream retention (what erasure and inspection can still find); one read and not yet
acknowledged (its dispatcher died) or not read at all is never trimmed. A delivery goes, hash
and every index, once it is older than the delivery retention and not ``scheduled``: a retry
still due is work, not history. Dead letters age out like the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis import RedisError
from redis.exceptions import ResponseError

from app.clock import now_ms
from app.dispatch.deliveries import DEAD_KEY, LOG_KEY
from app.profiles.keys import TRIGGERS_KEY
from app.streams import entry_order

PRUNE_BATCH = 500

log = logging.getLogger(__name__)

# Forget finished deliveries: the hash and its place in the log, the dead letters and the
# indexes by customer, rule and destination (named from the hash, as ``index_key`` does).
# KEYS: log, dead; ARGV: delivery ids. Returns how many went (a scheduled one stays).
_PRUNE = """
local removed = 0
for _, id in ipairs(ARGV) do
  local key = 'delivery:' .. id
  local f = redis.call('HMGET', key, 'status', 'customer_id', 'rule', 'destination')
  if not f[1] or cjson.decode(f[1]) ~= 'scheduled' then
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    local kinds = {'customer', 'rule', 'destination'}
    for i = 2, 4 do
      if f[i] then
        redis.call('ZREM', 'deliveries:' .. kinds[i - 1] .. ':' .. cjson.decode(f[i]), id)
      end
    end
    removed = removed + 1
  end
end
return removed
"""


async def trim_triggers(client: aioredis.Redis, *, group: str, retention_ms: int) -> int:
    """Trim ``triggers`` below what ``group`` has acknowledged and the retention window;
    return how many entries went (none while the group does not exist)."""
    try:
        groups: list[dict[str, Any]] = await client.xinfo_groups(TRIGGERS_KEY)
    except ResponseError:  # no stream yet
        return 0
    found = [g for g in groups if _text(g["name"]) == group]
    if not found:
        return 0
    last = _text(found[0]["last-delivered-id"])
    millis, seq = entry_order(last)
    floor = f"{millis}-{seq + 1}"  # everything up to the last one read ...
    pending: dict[str, Any] = await client.xpending(TRIGGERS_KEY, group)
    if pending["pending"]:  # ... unless read and not acknowledged
        floor = min(floor, _text(pending["min"]), key=entry_order)
    seconds, micros = await client.time()
    window = f"{max(int(seconds) * 1_000 + int(micros) // 1_000 - retention_ms, 0)}-0"
    floor = min(floor, window, key=entry_order)
    return int(await client.xtrim(TRIGGERS_KEY, minid=floor, approximate=False))


async def prune_deliveries(client: aioredis.Redis, *, now: int, retention_ms: int) -> int:
    """Forget the deliveries created before ``now - retention_ms`` that are finished; return
    how many went."""
    prune = client.register_script(_PRUNE)
    cutoff = now - retention_ms
    removed = skipped = 0
    while True:
        ids: list[Any] = await client.zrangebyscore(
            LOG_KEY, "-inf", cutoff, start=skipped, num=PRUNE_BATCH
        )
        if not ids:
            return removed
        gone = int(await prune(keys=[LOG_KEY, DEAD_KEY], args=ids))
        removed += gone
        skipped += len(ids) - gone  # still scheduled: kept, and read past next time


@dataclass(frozen=True)
class DispatchRetention:
    """How long acknowledged triggers and finished deliveries are kept, and how often the
    dispatcher trims them."""

    triggers_ms: int
    deliveries_ms: int
    every_s: float

    async def run(self, client: aioredis.Redis, *, group: str, stopping: asyncio.Event) -> None:
        """Trim until ``stopping``; an error is logged and the next pass tries again."""
        while not stopping.is_set():
            try:
                await trim_triggers(client, group=group, retention_ms=self.triggers_ms)
                await prune_deliveries(client, now=now_ms(), retention_ms=self.deliveries_ms)
            except (RedisError, OSError) as error:
                log.warning("retention: dispatch keys not trimmed this time: %s", error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.every_s)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
