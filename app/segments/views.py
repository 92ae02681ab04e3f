"""Admin endpoints for segments and customers' transitions. Views are thin."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from redis import RedisError

from app.deps import AdminDep, StateDep
from app.rules.active import shipped_rules
from app.segments import service
from app.segments.service import MemberPage, SegmentPage, TransitionPage

router = APIRouter(
    prefix="/api",
    tags=["segments"],
    dependencies=[AdminDep],
    responses={
        401: {"description": "Missing or wrong bearer token."},
        503: {"description": "Redis unreachable."},
    },
)
Limit = Annotated[int, Query(ge=1, le=1000)]
Cursor = Annotated[str | None, Query(pattern=r"^\d{1,20}$")]


def _unreachable(error: Exception) -> HTTPException:
    return HTTPException(503, detail=f"segments: Redis unreachable ({error})")


@router.get("/segments", response_model=SegmentPage)
async def list_segments(state: StateDep) -> SegmentPage:
    """Every segment (a rule's id) with its name and current size."""
    try:
        return await service.list_segments(state.redis, rules=shipped_rules())
    except (RedisError, OSError) as error:
        raise _unreachable(error) from error


@router.get(
    "/segments/{segment_id}/members",
    response_model=MemberPage,
    responses={404: {"description": "No such segment."}},
)
async def list_members(
    segment_id: str, state: StateDep, limit: Limit = 100, cursor: Cursor = None
) -> MemberPage:
    """The customers in the segment now, a page at a time."""
    if segment_id not in {rule.id for rule in shipped_rules()}:
        raise HTTPException(404, detail=f"segment {segment_id!r}: no such segment")
    try:
        return await service.members(state.redis, segment_id, limit=limit, cursor=cursor)
    except (RedisError, OSError) as error:
        raise _unreachable(error) from error


@router.get("/customers/{customer_id}/transitions", response_model=TransitionPage)
async def list_transitions(
    customer_id: str, state: StateDep, limit: Limit = 100, cursor: Cursor = None
) -> TransitionPage:
    """When the customer entered and left segments, oldest first, in event time."""
    try:
        return await service.transitions(state.redis, customer_id, limit=limit, cursor=cursor)
    except (RedisError, OSError) as error:
        raise _unreachable(error) from error
