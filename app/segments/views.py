"""Admin endpoints for segments and customers' transitions. Views are thin."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from redis import RedisError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from app.deps import AdminDep, StateDep
from app.rules import store
from app.rules.service import Explanation, explain
from app.rules.store import StoredRule
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


async def _rules(state: StateDep) -> list[StoredRule]:
    def read() -> list[StoredRule]:
        with Session(state.engine) as session:
            return store.current_rules(session)

    return await run_in_threadpool(read)


@router.get("/segments", response_model=SegmentPage)
async def list_segments(state: StateDep) -> SegmentPage:
    """Every segment (a rule's id) with its name and current size."""
    try:
        return await service.list_segments(
            state.redis, rules=[stored.rule for stored in await _rules(state)]
        )
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
    if segment_id not in {stored.id for stored in await _rules(state)}:
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


@router.get(
    "/customers/{customer_id}/explain",
    response_model=Explanation,
    responses={404: {"description": "No such customer or segment."}},
)
async def explain_membership(
    customer_id: str, state: StateDep, segment: Annotated[str, Query(min_length=1)]
) -> Explanation:
    """Why the customer is in the segment or not: its rule's condition tree with each leaf's
    current value and truth, next to the membership the dataflow keeps."""
    found = {stored.id: stored for stored in await _rules(state)}.get(segment)
    if found is None:
        raise HTTPException(404, detail=f"segment {segment!r}: no such segment")
    try:
        explained = await explain(state.redis, customer_id, found.rule, found.version)
    except (RedisError, OSError) as error:
        raise _unreachable(error) from error
    if explained is None:
        raise HTTPException(404, detail=f"customer {customer_id!r}: no profile")
    return explained
