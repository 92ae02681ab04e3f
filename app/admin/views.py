"""Admin endpoints of the foundation: failed events. Views are thin; the work is in services."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from redis import RedisError

from app.admin import failed_events
from app.admin.failed_events import FailedEventPage
from app.admin.status import PipelineStatus, pipeline_status
from app.deps import AdminDep, StateDep
from app.ingest.service import now_ms
from app.profiles import erasure
from app.profiles import service as profiles
from app.profiles.erasure import ErasureReport
from app.profiles.service import CustomerProfile

router = APIRouter(
    prefix="/api",
    tags=["admin"],
    dependencies=[AdminDep],
    responses={401: {"description": "Missing or wrong bearer token."}},
)


@router.get(
    "/customers/{customer_id}",
    response_model=CustomerProfile,
    responses={404: {"description": "No events from this customer yet."}},
)
async def read_customer(customer_id: str, state: StateDep) -> CustomerProfile:
    """A customer's traits, features (as of their last change), and recent events."""
    try:
        found = await profiles.get_profile(state.redis, customer_id)
    except (RedisError, OSError) as error:
        raise HTTPException(503, detail=f"profiles: Redis unreachable ({error})") from error
    if found is None:
        raise HTTPException(404, detail=f"customer {customer_id!r}: no profile")
    return found


@router.delete(
    "/customers/{customer_id}",
    response_model=ErasureReport,
    responses={404: {"description": "Segflow holds nothing about this customer."}},
)
async def erase_customer(customer_id: str, state: StateDep) -> ErasureReport:
    """GDPR erasure: the profile, the dataflow's state and every stored event of the customer."""
    try:
        report = await erasure.erase_customer(
            state.redis, customer_id, partitions=state.settings.partitions, now=now_ms()
        )
    except (RedisError, OSError) as error:
        raise HTTPException(503, detail=f"erasure: Redis unreachable ({error})") from error
    if report is None:
        raise HTTPException(404, detail=f"customer {customer_id!r}: nothing to erase")
    return report


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
