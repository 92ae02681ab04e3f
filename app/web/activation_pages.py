"""Activation in the admin UI: destinations (a signed test send, its result) and templates,
the delivery log filtered by customer, rule, destination or status, and dead letters (dead,
undeliverable, failed) replayed with a click."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from sqlmodel import Session

from app.api.activation import send_test
from app.api.deps import StateDep
from app.dispatch import store
from app.dispatch.deliveries import DEAD_KEY, LOG_KEY, DeliveryStore, index_key
from app.web.base import WebSessionDep, page

router = APIRouter(prefix="/admin", include_in_schema=False)
Filter = Annotated[str, Query(max_length=200)]
PAGE = 50


@router.get("/destinations", response_class=HTMLResponse)
def destination_list(request: Request, state: StateDep, session: WebSessionDep) -> HTMLResponse:
    with Session(state.engine) as db:
        destinations, _ = store.list_destinations(session=db, limit=1000)
        templates, _ = store.list_templates(session=db, limit=1000)
    return page(
        request,
        "destinations.html",
        session,
        title="Destinations and templates",
        destinations=destinations,
        templates=templates,
    )


@router.post("/destinations/{name}/test", response_class=HTMLResponse)
async def destination_test(
    request: Request, name: str, state: StateDep, session: WebSessionDep
) -> HTMLResponse:
    """A signed test delivery now, and how it went (200 either way: htmx swaps it in)."""
    try:
        result = await send_test(state, name)
    except HTTPException as error:
        return page(request, "_test_result.html", session, result=None, error=str(error.detail))
    return page(request, "_test_result.html", session, result=result, error=None)


@router.get("/deliveries", response_class=HTMLResponse)
async def delivery_log(
    request: Request,
    state: StateDep,
    session: WebSessionDep,
    customer: Filter = "",
    rule: Filter = "",
    destination: Filter = "",
    dead: bool = False,
    cursor: Annotated[str | None, Query(pattern=r"^\d{1,9}$")] = None,
) -> HTMLResponse:
    """The delivery log, newest first: all, or one customer's, rule's or destination's (the
    first filter given), or the dead letters."""
    chosen = next(
        (
            (k, v)
            for k, v in (("customer", customer), ("rule", rule), ("destination", destination))
            if v
        ),
        None,
    )
    key = DEAD_KEY if dead else index_key(*chosen) if chosen else LOG_KEY
    items, more = await DeliveryStore(state.redis).page(key, limit=PAGE, cursor=cursor)
    return page(
        request,
        "deliveries.html",
        session,
        title="Dead letters" if dead else "Deliveries",
        items=items,
        next_cursor=more,
        dead=dead,
        filters={"customer": customer, "rule": rule, "destination": destination},
    )


@router.post("/deliveries/{delivery_id}/replay", response_class=HTMLResponse)
async def replay(
    request: Request, delivery_id: str, state: StateDep, session: WebSessionDep
) -> HTMLResponse:
    found = await DeliveryStore(state.redis).replay(delivery_id, int(time.time() * 1000))
    return page(request, "_replayed.html", session, delivery=found, delivery_id=delivery_id)
