"""Activation in the admin UI: destinations (created, edited, deleted; a signed test send,
its result) and templates (written, edited with a preview of the draft, deleted), the delivery
log filtered by customer, rule, destination or status, and dead letters (dead, undeliverable,
failed) replayed with a click. Every change is checked as the API checks it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from sqlmodel import Session

from app.api.activation import PreviewIn, render_preview, send_test
from app.api.deps import AppState, StateDep
from app.clock import now_ms
from app.db import session_scope
from app.dispatch import store
from app.dispatch.deliveries import DEAD_KEY, LOG_KEY, DeliveryStore, index_key
from app.dispatch.errors import (
    DestinationNotFound,
    DispatchError,
    MessageTemplateError,
    TemplateNotFound,
)
from app.dispatch.schema import (
    MAX_HEADERS,
    DestinationIn,
    DestinationUpdate,
    InlineTemplate,
    TemplateIn,
    TemplateSources,
)
from app.dispatch.secret_box import generate_signing_secret, secret_box
from app.dispatch.templates import ALL_FIELDS, MAX_SOURCE_CHARS
from app.rules.store import StoredRule
from app.web.base import StoredRulesDep, WebSessionDep, page
from app.web.session import WebSession

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


def _refused(
    request: Request, session: WebSession, error: Exception | str, *, heading: str = "Not saved:"
) -> HTMLResponse:
    """A refusal as the form's message (200: htmx swaps only a success in)."""
    problems = [error] if isinstance(error, str) else _problems(error)
    return page(request, "_refused.html", session, problems=problems, heading=heading)


def _to_list() -> Response:
    """Back to the list of destinations and templates (htmx follows HX-Redirect)."""
    return Response(status_code=204, headers={"HX-Redirect": "/admin/destinations"})


def _senders(
    rules: Iterable[StoredRule], *, destination: str | None = None, template: str | None = None
) -> list[str]:
    """The ids of the rules with a send to ``destination`` or with ``template``: what a
    deletion leaves without one."""
    return sorted(
        {
            stored.id
            for stored in rules
            for action in (*stored.rule.on_enter, *stored.rule.on_exit)
            if action.send.destination == destination or action.send.template == template
        }
    )


# --- destinations -------------------------------------------------------------------------------


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
        return _refused(request, session, error)
    return page(request, "_destination_saved.html", session, destination=spec.name, secret=secret)


@router.get("/destinations/{name}", response_class=HTMLResponse)
def destination_edit(
    request: Request, name: str, state: StateDep, session: WebSessionDep, rules: StoredRulesDep
) -> HTMLResponse:
    """A destination's settings to change, and its deletion."""
    with Session(state.engine) as db:
        try:
            row = store.get_destination(session=db, name=name)
        except DestinationNotFound:
            return page(
                request, "missing.html", session, 404, title="No such destination", what=name
            )
    return page(
        request,
        "destination.html",
        session,
        title=f"Destination {name}",
        destination=row,
        header_lines="\n".join(f"{k}: {v}" for k, v in (row.headers or {}).items()),
        senders=_senders(rules, destination=name),
    )


def _headers(lines: str) -> dict[str, str]:
    """``Name: value`` lines (blank ones skipped) as the headers they name; ValueError naming
    the line that is not one."""
    headers: dict[str, str] = {}
    for number, line in enumerate(lines.splitlines(), 1):
        if not line.strip():
            continue
        header, colon, value = line.partition(":")
        if not colon or not header.strip():
            raise ValueError(f"headers, line {number}: write one header a line as Name: value")
        if header.strip() in headers:
            raise ValueError(f"headers, line {number}: {header.strip()!r} is given twice")
        headers[header.strip()] = value.strip()
    return headers


Setting = Annotated[str, Form(max_length=20)]  # checked by DestinationUpdate, naming the field


@router.post("/destinations/{name}", response_class=HTMLResponse)
def destination_save(
    request: Request,
    name: str,
    state: StateDep,
    session: WebSessionDep,
    kind: Annotated[str, Form(max_length=20)],
    url: Annotated[str, Form(max_length=2000)],
    timeout_s: Setting,
    rate_limit_per_s: Setting,
    concurrency: Setting,
    headers: Annotated[str, Form(max_length=MAX_HEADERS * 2200)] = "",
    disabled: Annotated[bool, Form()] = False,
    new_secret: Annotated[bool, Form()] = False,
) -> Response:
    """Replace the destination's settings, as ``PUT /api/destinations/{name}`` does; the
    signing secret stays unless a new one is asked for (then it is shown once)."""
    secret = generate_signing_secret() if new_secret else None
    try:
        spec = DestinationUpdate.model_validate(
            {
                "kind": kind,
                "url": url,
                "headers": _headers(headers),
                "timeout_s": timeout_s,
                "rate_limit_per_s": rate_limit_per_s,
                "concurrency": concurrency,
                "disabled": disabled,
                "secret": secret,
            }
        )
        with session_scope(state.engine) as db:
            store.update_destination(
                session=db,
                box=secret_box(state.settings),
                name=name,
                spec=spec,
                allow_private=state.settings.allow_private_destinations,
            )
    except (ValueError, DispatchError) as error:  # ValidationError is a ValueError
        return _refused(request, session, error)
    return page(
        request, "_destination_saved.html", session, destination=name, secret=secret, saved=True
    )


Confirm = Annotated[str, Form(max_length=200)]


@router.post("/destinations/{name}/delete", response_class=HTMLResponse)
def destination_delete(
    request: Request, name: str, state: StateDep, session: WebSessionDep, confirm: Confirm = ""
) -> Response:
    """Delete the destination once its name is typed to confirm: sends to it from then on are
    undeliverable (dead letters, replayable when one of that name exists again)."""
    if confirm != name:
        return _refused(
            request,
            session,
            "Type the destination's name exactly to delete it.",
            heading="Not deleted:",
        )
    try:
        with session_scope(state.engine) as db:
            store.delete_destination(session=db, name=name)
    except DestinationNotFound as error:
        return _refused(request, session, error, heading="Not deleted:")
    return _to_list()


# --- templates ----------------------------------------------------------------------------------

TemplateField = Annotated[str, Form(max_length=MAX_SOURCE_CHARS)]


@dataclass(frozen=True)
class TemplateForm:
    """A template form's kind, description and the sources written (blank ones left out)."""

    kind: str
    description: str
    sources: dict[str, str]


def template_form(
    kind: Annotated[str, Form(max_length=20)],
    description: Annotated[str, Form(max_length=2000)] = "",
    subject: TemplateField = "",
    text: TemplateField = "",
    html: TemplateField = "",
    title: TemplateField = "",
    body: TemplateField = "",
    deep_link: TemplateField = "",
) -> TemplateForm:
    given = {
        "subject": subject,
        "text": text,
        "html": html,
        "title": title,
        "body": body,
        "deep_link": deep_link,
    }
    return TemplateForm(kind, description, {k: v for k, v in given.items() if v.strip()})


TemplateFormDep = Annotated[TemplateForm, Depends(template_form)]


@router.post("/templates", response_class=HTMLResponse)
def template_save(
    request: Request,
    state: StateDep,
    session: WebSessionDep,
    name: Annotated[str, Form(max_length=100)],
    form: TemplateFormDep,
) -> Response:
    """Create the template, or replace it when it exists: checked as the API checks it."""
    try:
        with session_scope(state.engine) as db:
            if name in store.template_names(session=db):
                spec = TemplateSources(kind=form.kind, description=form.description, **form.sources)
                store.update_template(session=db, name=name, spec=spec)
            else:
                new = TemplateIn(
                    name=name, kind=form.kind, description=form.description, **form.sources
                )
                store.create_template(session=db, spec=new)
    except (ValidationError, MessageTemplateError, DispatchError) as error:
        return _refused(request, session, error)
    return _to_list()


@router.get("/templates/{name}", response_class=HTMLResponse)
def template_edit(
    request: Request, name: str, state: StateDep, session: WebSessionDep, rules: StoredRulesDep
) -> HTMLResponse:
    """A template's sources to change (previewed for a customer before saving), and its
    deletion."""
    with Session(state.engine) as db:
        try:
            row = store.get_template(session=db, name=name)
        except TemplateNotFound:
            return page(request, "missing.html", session, 404, title="No such template", what=name)
    return page(
        request,
        "template.html",
        session,
        title=f"Template {name}",
        template=row,
        fields=ALL_FIELDS,
        senders=_senders(rules, template=name),
    )


@router.post("/templates/{name}", response_class=HTMLResponse)
def template_replace(
    request: Request, name: str, state: StateDep, session: WebSessionDep, form: TemplateFormDep
) -> HTMLResponse:
    """Replace the template's kind, description and sources, as ``PUT /api/templates/{name}``
    does (checked as on create)."""
    try:
        spec = TemplateSources(kind=form.kind, description=form.description, **form.sources)
        with session_scope(state.engine) as db:
            store.update_template(session=db, name=name, spec=spec)
    except (ValidationError, DispatchError) as error:
        return _refused(request, session, error)
    return page(request, "_template_saved.html", session, template=name)


@router.post("/templates/{name}/delete", response_class=HTMLResponse)
def template_delete(
    request: Request, name: str, state: StateDep, session: WebSessionDep, confirm: Confirm = ""
) -> Response:
    """Delete the template once its name is typed to confirm: deliveries that use it from then
    on fail (replayable when one of that name exists again)."""
    if confirm != name:
        return _refused(
            request,
            session,
            "Type the template's name exactly to delete it.",
            heading="Not deleted:",
        )
    try:
        with session_scope(state.engine) as db:
            store.delete_template(session=db, name=name)
    except TemplateNotFound as error:
        return _refused(request, session, error, heading="Not deleted:")
    return _to_list()


@router.post("/templates/{name}/preview", response_class=HTMLResponse)
async def template_preview(
    request: Request,
    name: str,
    state: StateDep,
    session: WebSessionDep,
    customer_id: Annotated[str, Form(min_length=1, max_length=500)],
) -> HTMLResponse:
    """The template rendered for a real customer's profile (nothing is sent)."""
    return await _preview(request, state, session, name, customer_id)


@router.post("/templates/{name}/draft", response_class=HTMLResponse)
async def template_draft_preview(
    request: Request,
    name: str,
    state: StateDep,
    session: WebSessionDep,
    form: TemplateFormDep,
    customer_id: Annotated[str, Form(max_length=500)] = "",
) -> HTMLResponse:
    """The form's sources, not saved, rendered for a real customer's profile: checked as a
    save would check them."""
    if not customer_id:
        return _refused(
            request,
            session,
            "Give a customer's id to preview the template for.",
            heading="No preview:",
        )
    try:
        draft = InlineTemplate(
            name=name, kind=form.kind, description=form.description, **form.sources
        )
    except ValidationError as error:
        return _refused(request, session, error, heading="No preview:")
    return await _preview(request, state, session, draft, customer_id)


async def _preview(
    request: Request,
    state: AppState,
    session: WebSession,
    template: str | InlineTemplate,
    customer_id: str,
) -> HTMLResponse:
    try:
        shown = await render_preview(state, PreviewIn(template=template, customer_id=customer_id))
    except HTTPException as error:
        return _refused(request, session, error, heading="No preview:")
    return page(request, "_template_preview.html", session, preview=shown)
