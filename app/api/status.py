"""Admin endpoints for how the pipeline is doing: events accepted against events processed,
and the messages the collector refused."""

from __future__ import annotations

from typing import Annotated

from fastapi import HTTPException, Query
from redis import RedisError

from app.api.deps import Limit, StateDep, admin_router
from app.ingest import failed_events
from app.ingest.failed_events import FailedEventPage
from app.ingest.status import PipelineStatus, pipeline_status

router = admin_router(prefix="/api", tags=["status"])


@router.get("/status", response_model=PipelineStatus)
async def read_status(state: StateDep) -> PipelineStatus:
    """Events accepted, processed by the dataflow, the lag between them, and the watermark."""
    try:
        return await pipeline_status(state.redis, partitions=state.settings.partitions)
    except (RedisError, OSError) as error:
        raise HTTPException(503, detail=f"status: Redis unreachable ({error})") from error


@router.get(
    "/failed-events",
    response_model=FailedEventPage,
    responses={400: {"description": "Bad cursor."}, 503: {"description": "Redis unreachable."}},
)
async def list_failed_events(
    state: StateDep,
    limit: Limit = 100,
    cursor: Annotated[str | None, Query(pattern=r"^\d{1,20}-\d{1,20}$")] = None,
) -> FailedEventPage:
    """Messages the collector refused, newest first, with the reason and the raw message."""
    try:
        return await failed_events.page(state.redis, limit=limit, cursor=cursor)
    except failed_events.BadCursor as error:
        raise HTTPException(400, detail=str(error)) from error
    except failed_events.StoreError as error:
        raise HTTPException(503, detail=f"failed events: {error}") from error
