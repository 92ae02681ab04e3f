"""Admin endpoints for the delivery log and the dead letters (``app.dispatch.deliveries``): the
``dead``, ``undeliverable`` and ``failed`` deliveries, replayable once their cause is fixed."""

from __future__ import annotations

from typing import Annotated

from fastapi import HTTPException, Query
from pydantic import BaseModel
from redis import RedisError

from app.api.deps import Limit, StateDep, admin_router
from app.clock import now_ms
from app.dispatch.deliveries import DEAD_KEY, LOG_KEY, Delivery, DeliveryStore, index_key

router = admin_router(
    prefix="/api", tags=["deliveries"], responses={503: {"description": "Redis unreachable."}}
)
Cursor = Annotated[str | None, Query(pattern=r"^\d{1,9}$")]


class DeliveryPage(BaseModel):
    items: list[Delivery]  # newest first
    next_cursor: str | None


def _unreachable(error: Exception) -> HTTPException:
    return HTTPException(503, detail=f"deliveries: Redis unreachable ({error})")


@router.get(
    "/deliveries",
    response_model=DeliveryPage,
    responses={422: {"description": "More than one of customer, rule and destination."}},
)
async def list_deliveries(
    state: StateDep,
    customer: str | None = None,
    rule: str | None = None,
    destination: str | None = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> DeliveryPage:
    """Every delivery, newest first, or those of one customer, rule or destination: status,
    attempts, the last response code and latency, and why."""
    chosen = [
        (k, v)
        for k, v in (("customer", customer), ("rule", rule), ("destination", destination))
        if v
    ]
    if len(chosen) > 1:
        raise HTTPException(422, detail="filter by one of customer, rule or destination")
    key = index_key(*chosen[0]) if chosen else LOG_KEY
    try:
        items, more = await DeliveryStore(state.redis).page(key, limit=limit, cursor=cursor)
    except (RedisError, OSError) as error:
        raise _unreachable(error) from error
    return DeliveryPage(items=items, next_cursor=more)


@router.get("/dead-letters", response_model=DeliveryPage)
async def list_dead_letters(
    state: StateDep, limit: Limit = 100, cursor: Cursor = None
) -> DeliveryPage:
    """Deliveries that can be replayed, newest first: ``dead`` (the last attempt failed, or the
    receiver refused), ``undeliverable`` (the destination was missing, disabled or its address
    refused when the trigger came) and ``failed`` (the template was missing or did not
    render)."""
    try:
        items, more = await DeliveryStore(state.redis).page(DEAD_KEY, limit=limit, cursor=cursor)
    except (RedisError, OSError) as error:
        raise _unreachable(error) from error
    return DeliveryPage(items=items, next_cursor=more)


@router.post(
    "/dead-letters/{delivery_id}/replay",
    response_model=Delivery,
    responses={404: {"description": "No such dead, undeliverable or failed delivery."}},
)
async def replay_dead_letter(delivery_id: str, state: StateDep) -> Delivery:
    """Try a dead, undeliverable or failed delivery again now, with its attempts counted
    afresh (same webhook-id), whatever its age: consent, holdout, the cap and quiet hours
    still decide."""
    try:
        found = await DeliveryStore(state.redis).replay(delivery_id, now_ms())
    except (RedisError, OSError) as error:
        raise _unreachable(error) from error
    if found is None:
        raise HTTPException(
            404,
            detail=f"delivery {delivery_id!r}: no such dead, undeliverable or failed delivery "
            "(only those are replayed; GET /api/deliveries shows its status)",
        )
    return found
