"""Activation in the admin UI: destinations (a signed test send, its result) and templates,
the delivery log filtered by customer, rule, destination or status, and dead letters (dead,
undeliverable, failed) replayed with a click."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from sqlmodel import Session

from app.api.activation import PreviewIn, render_preview, send_test
from app.api.deps import StateDep
from app.clock import now_ms
from app.db import session_scope
from app.dispatch import store
from app.dispatch.deliveries import DEAD_KEY, LOG_KEY, DeliveryStore, index_key
from app.dispatch.errors import DispatchError, MessageTemplateError
from app.dispatch.schema import DestinationIn, TemplateIn, TemplateSources
from app.dispatch.secret_box import secret_box
from app.dispatch.templates import MAX_SOURCE_CHARS
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
    found = await DeliveryStore(state.redis).replay(delivery_id, now_ms())
    return page(request, "_replayed.html", session, delivery=found, delivery_id=delivery_id)


def _problems(error: Exception) -> list[str]:
    """What a refusal says, one line per problem."""
    if isinstance(error, ValidationError):
        return [
            f"{'.'.join(str(p) for p in e['loc']) or 'form'}: {e['msg']}" for e in error.errors()
        ]
    if isinstance(error, MessageTemplateError):
        return [str(problem) for problem in error.problems]
    if isinstance(error, HTTPException):
        detail = error.detail
        return [str(d) for d in detail] if isinstance(detail, list) else [str(detail)]
    return [str(error)]


@router.post("/destinations", response_class=HTMLResponse)
def destination_create(
    request: Request,
    state: StateDep,
    session: WebSessionDep,
    name: Annotated[str, Form(max_length=100)],
    kind: Annotated[str, Form(max_length=20)],
    url: Annotated[str, Form(max_length=2000)],
) -> Response:
    """A new destination; its generated signing secret is shown once."""
    try:
        spec = DestinationIn(name=name, kind=kind, url=url)
        with session_scope(state.engine) as db:
            _, secret = store.create_destination(
                session=db,
                box=secret_box(state.settings),
                spec=spec,
                allow_private=state.settings.allow_private_destinations,
            )
    except (ValidationError, DispatchError) as error:
        return page(request, "_refused.html", session, problems=_problems(error))
    return page(request, "_destination_created.html", session, destination=spec.name, secret=secret)


TemplateField = Annotated[str, Form(max_length=MAX_SOURCE_CHARS)]


@router.post("/templates", response_class=HTMLResponse)
def template_save(
    request: Request,
    state: StateDep,
    session: WebSessionDep,
    name: Annotated[str, Form(max_length=100)],
    kind: Annotated[str, Form(max_length=20)],
    description: Annotated[str, Form(max_length=2000)] = "",
    subject: TemplateField = "",
    text: TemplateField = "",
    html: TemplateField = "",
    title: TemplateField = "",
    body: TemplateField = "",
    deep_link: TemplateField = "",
) -> Response:
    """Create the template, or replace it when it exists: checked as the API checks it."""
    given = {"subject": subject, "text": text, "html": html, "title": title, "body": body}
    sources = {k: v for k, v in {**given, "deep_link": deep_link}.items() if v.strip()}
    try:
        with session_scope(state.engine) as db:
            if name in store.template_names(session=db):
                spec = TemplateSources(kind=kind, description=description, **sources)
                store.update_template(session=db, name=name, spec=spec)
            else:
                new = TemplateIn(name=name, kind=kind, description=description, **sources)
                store.create_template(session=db, spec=new)
    except (ValidationError, MessageTemplateError, DispatchError) as error:
        return page(request, "_refused.html", session, problems=_problems(error))
    return Response(status_code=204, headers={"HX-Redirect": "/admin/destinations"})


@router.post("/templates/{name}/preview", response_class=HTMLResponse)
async def template_preview(
    request: Request,
    name: str,
    state: StateDep,
    session: WebSessionDep,
    customer_id: Annotated[str, Form(min_length=1, max_length=500)],
) -> HTMLResponse:
    """The template rendered for a real customer's profile (nothing is sent)."""
    try:
        shown = await render_preview(state, PreviewIn(template=name, customer_id=customer_id))
    except HTTPException as error:
        return page(request, "_refused.html", session, problems=_problems(error))
    return page(request, "_template_preview.html", session, preview=shown)
