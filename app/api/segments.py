"""Admin endpoints for segments: each rule's segment with its size, and its members."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Literal

from fastapi import HTTPException, Query
from pydantic import BaseModel
from redis import RedisError
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from app.api.deps import AppState, Limit, StateDep, StoredRules, admin_router
from app.clock import now_ms
from app.db import to_the_end
from app.profiles import history, moves, segments
from app.profiles.moves import MovePage
from app.profiles.segments import MemberPage
from app.rules import store as rules_store
from app.rules.service import SegmentPage, list_segments

log = logging.getLogger(__name__)

router = admin_router(
    prefix="/api/segments",
    tags=["segments"],
    responses={503: {"description": "Redis unreachable."}},
)
Cursor = Annotated[str | None, Query(pattern=r"^\d{1,18}$")]  # fits Redis's 64-bit integers


def _unreachable(error: Exception) -> HTTPException:
    return HTTPException(503, detail=f"segments: Redis unreachable ({error})")


@router.get("", response_model=SegmentPage)
async def read_segments(
    state: StateDep,
    rules: StoredRules,
    limit: Limit = 100,
    cursor: Annotated[str | None, Query(description="The page's last segment id.")] = None,
) -> SegmentPage:
    """Every segment (a rule's id) with its name, current size, and how many customers
    entered and left it in the last hour and the last 24 hours (of wall-clock time; a count
    of 50,000 means at least that many), by id, a page at a time."""
    after = sorted(
        (stored.rule for stored in rules if cursor is None or stored.id > cursor),
        key=lambda rule: rule.id,
    )
    try:
        page = await list_segments(state.redis, rules=after[:limit])
    except (RedisError, OSError) as error:
        raise _unreachable(error) from error
    page.next_cursor = page.items[-1].id if len(after) > limit else None
    return page


@router.get(
    "/{segment_id}/members",
    response_model=MemberPage,
    responses={404: {"description": "No such segment."}},
)
async def list_members(
    segment_id: str, state: StateDep, rules: StoredRules, limit: Limit = 100, cursor: Cursor = None
) -> MemberPage:
    """The customers in the segment now, a page at a time."""
    if segment_id not in {stored.id for stored in rules}:
        raise HTTPException(404, detail=f"segment {segment_id!r}: no such segment")
    try:
        return await segments.members(state.redis, segment_id, limit=limit, cursor=cursor)
    except (RedisError, OSError) as error:
        raise _unreachable(error) from error


MovesCursor = Annotated[
    str | None,
    Query(pattern=r"^\d{1,16}-\d{1,9}$", description="next_cursor of the page before"),
]


@router.get(
    "/{segment_id}/transitions",
    response_model=MovePage,
    responses={404: {"description": "No such segment."}},
)
async def list_transitions(
    segment_id: str,
    state: StateDep,
    rules: StoredRules,
    limit: Limit = 100,
    cursor: MovesCursor = None,
) -> MovePage:
    """Who entered and left the segment, newest first (``at`` in event time), over the last
    2 days of event time (at most 50,000 enters and 50,000 exits), a page at a time."""
    if segment_id not in {stored.id for stored in rules}:
        raise HTTPException(404, detail=f"segment {segment_id!r}: no such segment")
    try:
        return await moves.page(state.redis, segment_id, limit=limit, cursor=cursor)
    except (RedisError, OSError) as error:
        raise _unreachable(error) from error


class HistoryPoint(BaseModel):
    at: int  # ms since the epoch: the start of the interval the size was sampled in
    size: int
    anomaly: bool  # a sudden jump or drop against the changes before it


class SegmentHistory(BaseModel):
    items: list[HistoryPoint]  # oldest first
    resolution: Literal["minute", "hour"]
    interval_ms: int  # between samples (an instant with none: no Segflow process was up)


Millis = Annotated[int | None, Query(ge=0, le=2**53, description="ms since the epoch")]


@router.get(
    "/{segment_id}/history",
    response_model=SegmentHistory,
    responses={404: {"description": "No such segment."}},
)
async def read_history(
    segment_id: str,
    state: StateDep,
    rules: StoredRules,
    resolution: Literal["minute", "hour"] = "minute",
    since: Millis = None,
    until: Millis = None,
) -> SegmentHistory:
    """The segment's size over time, oldest first: by default the last day of samples at
    ``minute`` resolution (one per ``SEGFLOW_SEGMENT_HISTORY_INTERVAL_S``, kept 7 days) or
    the last 90 days at ``hour`` resolution. Each point says whether it is an anomaly (see
    the README's "Segment size history" for the method)."""
    if segment_id not in {stored.id for stored in rules}:
        raise HTTPException(404, detail=f"segment {segment_id!r}: no such segment")
    if since is None:
        since = now_ms() - history.DEFAULT_SPAN_MS[resolution]
    try:
        samples = await history.read(
            state.redis, segment_id, resolution=resolution, since=since, until=until
        )
    except (RedisError, OSError) as error:
        raise _unreachable(error) from error
    interval_ms = (
        history.HOUR_MS
        if resolution == "hour"
        else state.settings.segment_history_interval_s * 1000
    )
    return SegmentHistory(
        items=[HistoryPoint(at=s.at, size=s.size, anomaly=s.anomaly) for s in samples],
        resolution=resolution,
        interval_ms=interval_ms,
    )


def _segment_ids(engine: Engine) -> list[str]:
    with Session(engine) as session:
        return [stored.id for stored in rules_store.current_rules(session=session)]


async def record_history(state: AppState) -> None:
    """Sample every segment's size once per interval, for ever (the API runs it; of several
    API processes, one records each interval)."""
    interval_ms = state.settings.segment_history_interval_s * 1000
    while True:
        try:
            ids = await to_the_end(_segment_ids, state.engine)  # before the engine goes
            await history.record(state.redis, ids, now_ms=now_ms(), interval_ms=interval_ms)
        except (RedisError, OSError, SQLAlchemyError) as error:
            log.warning("segment history: nothing recorded this interval (%s)", error)
        await asyncio.sleep((interval_ms - now_ms() % interval_ms) / 1000)
