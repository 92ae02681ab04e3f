"""Admin endpoints of the foundation: failed events. Views are thin; the work is in services."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from app.admin import failed_events
from app.admin.failed_events import FailedEventPage
from app.deps import AdminDep, StateDep

router = APIRouter(
    prefix="/api",
    tags=["admin"],
    dependencies=[AdminDep],
    responses={401: {"description": "Missing or wrong bearer token."}},
)


@router.get(
    "/failed-events",
    response_model=FailedEventPage,
    responses={400: {"description": "Bad cursor."}, 503: {"description": "Redis unreachable."}},
)
async def list_failed_events(
    state: StateDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(pattern=r"^\d{1,20}-\d{1,20}$")] = None,
) -> FailedEventPage:
    """Messages the collector refused, newest first, with the reason and the raw message."""
    try:
        return await failed_events.page(state.redis, limit=limit, cursor=cursor)
    except failed_events.BadCursor as error:
        raise HTTPException(400, detail=str(error)) from error
    except failed_events.StoreError as error:
        raise HTTPException(503, detail=f"failed events: {error}") from error
