"""Admin endpoints for segments: each rule's segment with its size, and its members."""

from __future__ import annotations

from typing import Annotated

from fastapi import HTTPException, Query
from redis import RedisError

from app.api.deps import Limit, StateDep, StoredRules, admin_router
from app.profiles import segments
from app.profiles.segments import MemberPage
from app.rules.service import SegmentPage, list_segments

router = admin_router(
    prefix="/api/segments",
    tags=["segments"],
    responses={503: {"description": "Redis unreachable."}},
)
Cursor = Annotated[str | None, Query(pattern=r"^\d{1,18}$")]  # fits Redis's 64-bit integers


def _unreachable(error: Exception) -> HTTPException:
    return HTTPException(503, detail=f"segments: Redis unreachable ({error})")


@router.get("", response_model=SegmentPage)
async def read_segments(state: StateDep, rules: StoredRules) -> SegmentPage:
    """Every segment (a rule's id) with its name and current size."""
    try:
        return await list_segments(state.redis, rules=[stored.rule for stored in rules])
    except (RedisError, OSError) as error:
        raise _unreachable(error) from error


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
