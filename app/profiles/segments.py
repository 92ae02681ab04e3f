"""Reading segments' sizes and members and customers' transitions (the dataflow's sink writes
them).

A segment is a rule's id; its members are a Redis set, a customer's transitions a sorted set
scored by the event time of each transition.
"""

from __future__ import annotations

from typing import cast

import redis.asyncio as aioredis
from pydantic import BaseModel

from app.profiles.keys import corrections_key, members_key, transitions_key


class MemberPage(BaseModel):
    items: list[str]  # customer ids
    next_cursor: str | None


class TransitionOut(BaseModel):
    segment: str
    kind: str  # "enter" | "exit"
    at: int  # event time, ms
    rule_version: int
    # set when it happened to an anonymous id since merged into this customer: that id
    merged_from: str | None = None


class TransitionPage(BaseModel):
    items: list[TransitionOut]  # oldest first
    next_cursor: str | None


class CorrectionOut(BaseModel):
    """A late event (``message_id``, at its instant ``at``) replayed in its place changed the
    customer's transitions: these were retracted, these added."""

    message_id: str
    at: int  # the late event's time, ms
    retracted: list[TransitionOut]
    added: list[TransitionOut]


class CorrectionPage(BaseModel):
    items: list[CorrectionOut]  # oldest first, by the late event's time
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
    found, more = await _page(client, transitions_key(customer_id), limit, cursor)
    items = [TransitionOut.model_validate_json(item) for item in found]
    return TransitionPage(items=items, next_cursor=more)


async def corrections(
    client: aioredis.Redis, customer_id: str, *, limit: int, cursor: str | None
) -> CorrectionPage:
    """What late events corrected, oldest first (the newest kept); ``cursor`` as above."""
    found, more = await _page(client, corrections_key(customer_id), limit, cursor)
    items = [CorrectionOut.model_validate_json(item) for item in found]
    return CorrectionPage(items=items, next_cursor=more)


async def _page(
    client: aioredis.Redis, key: str, limit: int, cursor: str | None
) -> tuple[list[bytes], str | None]:
    """A page of a sorted set in score order, and the cursor of the next page, if any."""
    start = int(cursor) if cursor else 0
    found = cast(list[bytes], await client.zrange(key, start, start + limit))
    more = str(start + limit) if len(found) > limit else None
    return found[:limit], more
