"""Reading the failed-events store (a Redis stream, newest entries last)."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from pydantic import BaseModel
from redis import RedisError
from redis.exceptions import ResponseError

from app.streams import FAILED_EVENTS_KEY


class StoreError(RuntimeError):
    """Redis did not answer."""


class BadCursor(ValueError):
    """The cursor is not an entry id Redis can start from."""


class FailedEventOut(BaseModel):
    id: str
    received_at: int
    reason: str  # what went wrong; exactly "late" or "unprocessable" when the dataflow set it
    detail: str | None = None  # more on the reason, where there is more to say
    source: str
    raw: str


class FailedEventPage(BaseModel):
    items: list[FailedEventOut]
    next_cursor: str | None


async def page(client: aioredis.Redis, *, limit: int, cursor: str | None) -> FailedEventPage:
    """Newest first; ``cursor`` is the id of the last item of the previous page."""
    if cursor is not None and all(int(part) == 0 for part in cursor.split("-")):
        return FailedEventPage(items=[], next_cursor=None)  # nothing comes before 0-0
    upper = f"({cursor}" if cursor else "+"
    try:
        rows: list[Any] = await client.xrevrange(  # type: ignore[assignment]
            FAILED_EVENTS_KEY, max=upper, min="-", count=limit + 1
        )
    except ResponseError as error:
        raise BadCursor(f"cursor: {cursor!r} is not a position in the list ({error})") from error
    except (RedisError, OSError) as error:
        raise StoreError(str(error)) from error
    items = [
        FailedEventOut(
            id=entry_id.decode(),
            received_at=int(fields[b"received_at"]),
            reason=fields[b"reason"].decode(),
            detail=fields[b"detail"].decode() if b"detail" in fields else None,
            source=fields[b"source"].decode(),
            raw=fields[b"raw"].decode(),
        )
        for entry_id, fields in rows[:limit]
    ]
    next_cursor = items[-1].id if len(rows) > limit else None
    return FailedEventPage(items=items, next_cursor=next_cursor)
