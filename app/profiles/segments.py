"""Reading segments' sizes and members and customers' transitions (the dataflow's sink writes
them).

A segment is a rule's id; its members are a Redis set, a customer's transitions a sorted set
scored by the event time of each transition.
"""

from __future__ import annotations

from typing import cast

import redis.asyncio as aioredis
from pydantic import BaseModel

from app.profiles.keys import members_key, transitions_key


class MemberPage(BaseModel):
    items: list[str]  # customer ids
    next_cursor: str | None


class TransitionOut(BaseModel):
    segment: str
    kind: str  # "enter" | "exit"
    at: int  # event time, ms
    rule_version: int


class TransitionPage(BaseModel):
    items: list[TransitionOut]  # oldest first
    next_cursor: str | None


async def sizes(client: aioredis.Redis, segments: list[str]) -> list[int]:
    """How many members each segment has now, in the order given."""
    pipe = client.pipeline(transaction=False)
    for segment in segments:
        pipe.scard(members_key(segment))
    found: list[int] = await pipe.execute()
    return found


async def members(
    client: aioredis.Redis, segment: str, *, limit: int, cursor: str | None
) -> MemberPage:
    """A page of members in the set's own order (Redis SSCAN: every member present for the
    whole scan is listed once; a page may hold more or fewer than ``limit``)."""
    position = int(cursor) if cursor else 0
    position, found = await client.sscan(members_key(segment), position, count=limit)
    names = sorted(item.decode() if isinstance(item, bytes) else item for item in found)
    return MemberPage(items=names, next_cursor=str(position) if position else None)


async def transitions(
    client: aioredis.Redis, customer_id: str, *, limit: int, cursor: str | None
) -> TransitionPage:
    """Oldest first, by event time; ``cursor`` is the number of items already read."""
    start = int(cursor) if cursor else 0
    found = cast(
        list[bytes], await client.zrange(transitions_key(customer_id), start, start + limit)
    )
    items = [TransitionOut.model_validate_json(item) for item in found[:limit]]
    more = len(found) > limit
    return TransitionPage(items=items, next_cursor=str(start + limit) if more else None)
