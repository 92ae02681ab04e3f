"""Admin endpoints for destinations (``/api/destinations``) and message templates
(``/api/templates``). Views are thin: checks and storage are in ``app.dispatch.store``.

A refused destination answers 422 with ``{"detail": [{"destination", "field", "message"}]}``,
a refused or failing template with ``{"detail": [{"template", "field", "line", "message"}]}``.
A destination's secret is answered once, by the POST that generated it, and never again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal

from fastapi import HTTPException, Query, Response
from pydantic import BaseModel, Field
from redis import RedisError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from app.api.deps import AppState, Limit, Responses, StateDep, When, admin_router
from app.clock import now_ms
from app.db import session_scope
from app.dispatch import store
from app.dispatch.errors import (
    DestinationNotFound,
    DestinationRefused,
    MessageTemplateError,
    NameTaken,
    SecretUnreadable,
    TemplateNotFound,
)
from app.dispatch.schema import (
    NAME_PATTERN,
    DestinationIn,
    DestinationUpdate,
    InlineTemplate,
    Name,
    TemplateIn,
    TemplateSources,
)
from app.dispatch.secret_box import secret_box
from app.dispatch.templates import (
    CompiledTemplate,
    TriggerContext,
    compile_template,
    jsonable_context,
    message_context,
)
from app.dispatch.webhooks import (
    Outcome,
    new_webhook_id,
    send_webhook,
    webhook_body,
    webhook_client,
)
from app.models import Destination, MessageTemplate
from app.profiles.service import get_profile

Cursor = Annotated[str | None, Query(pattern=NAME_PATTERN, description="The page's last name.")]

destinations = admin_router(prefix="/api/destinations", tags=["destinations"])
templates = admin_router(prefix="/api/templates", tags=["templates"])

_NOT_JSON: Responses = {400: {"description": "The body is not JSON."}}
_NO_DESTINATION: Responses = {404: {"description": "No such destination."}}
_NO_TEMPLATE: Responses = {404: {"description": "No such template."}}
_DESTINATION_REFUSED: Responses = {
    422: {"description": "Refused: every problem with its field (an unsafe URL, a bad secret)."}
}
_TEMPLATE_REFUSED: Responses = {
    422: {"description": "Refused: every problem with its template, field and line."}
}


# --- answers ------------------------------------------------------------------------------------


class DestinationOut(BaseModel):
    name: str
    kind: str
    url: str
    headers: dict[str, str]
    timeout_s: float
    rate_limit_per_s: float
    concurrency: int
    disabled: bool
    created_at: When
    updated_at: When


class DestinationCreated(DestinationOut):
    secret: str | None = Field(
        description="The `whsec_` secret generated for it, shown this once (null when the "
        "request gave one)."
    )


class DestinationPage(BaseModel):
    items: list[DestinationOut]
    next_cursor: str | None


class TestDelivery(BaseModel):
    webhook_id: str
    ok: bool
    outcome: Outcome
    status_code: int | None
    latency_ms: float
    error: str | None


class TemplateSummary(BaseModel):
    name: str
    kind: str
    description: str
    updated_at: When


class TemplateOut(TemplateSummary):
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    title: str | None = None
    body: str | None = None
    deep_link: str | None = None
    created_at: When


class TemplatePage(BaseModel):
    items: list[TemplateSummary]
    next_cursor: str | None


class TriggerIn(BaseModel):
    """The trigger to render for (every part optional)."""

    segment: str = Field(default="preview", max_length=200)
    kind: Literal["enter", "exit"] = "enter"
    at: int | None = Field(default=None, ge=0, le=10**15, description="ms; default: now")
    rule_version: int = Field(default=0, ge=0, le=10**9)


class PreviewIn(BaseModel):
    template: Name | InlineTemplate = Field(description="A stored template's name, or one in full.")
    customer_id: str = Field(min_length=1, max_length=500)
    trigger: TriggerIn | None = None


class PreviewOut(BaseModel):
    template: str
    kind: str
    message: dict[str, Any] = Field(description="Each field as rendered (generic: its JSON).")
    context: dict[str, Any] = Field(description="What the template was given.")


def _destination_out(row: Destination) -> DestinationOut:
    return DestinationOut.model_validate(row, from_attributes=True)


def _template_out(row: MessageTemplate) -> TemplateOut:
    return TemplateOut(
        name=row.name,
        kind=row.kind,
        description=row.description,
        updated_at=row.updated_at,
        created_at=row.created_at,
        **row.sources,
    )


@contextmanager
def _stored(state: AppState) -> Iterator[Session]:
    """A committed session, with the store's refusals as HTTP answers."""
    try:
        with session_scope(state.engine) as session:
            yield session
    except (DestinationNotFound, TemplateNotFound) as error:
        raise HTTPException(404, detail=str(error)) from error
    except (NameTaken, SecretUnreadable) as error:
        raise HTTPException(409, detail=str(error)) from error
    except DestinationRefused as error:
        detail = [vars(problem) for problem in error.problems]
        raise HTTPException(422, detail=detail) from error
    except MessageTemplateError as error:
        raise _template_refused(error) from error


def _template_refused(error: MessageTemplateError) -> HTTPException:
    return HTTPException(422, detail=[vars(problem) for problem in error.problems])


# --- destinations -------------------------------------------------------------------------------


@destinations.get("", response_model=DestinationPage)
def list_destinations(
    state: StateDep, limit: Limit = 100, cursor: Cursor = None
) -> DestinationPage:
    """Every destination by name (never its secret)."""
    with _stored(state) as session:
        rows, next_cursor = store.list_destinations(session=session, after=cursor, limit=limit)
        return DestinationPage(items=[_destination_out(r) for r in rows], next_cursor=next_cursor)


@destinations.post(
    "",
    status_code=201,
    response_model=DestinationCreated,
    responses={
        409: {"description": "A destination of that name exists."},
        **_DESTINATION_REFUSED,
        **_NOT_JSON,
    },
)
def create_destination(body: DestinationIn, state: StateDep) -> DestinationCreated:
    """A new webhook destination. Without a `secret`, a `whsec_` secret is generated and
    answered here, once: keep it to verify signatures."""
    with _stored(state) as session:
        row, generated = store.create_destination(
            session=session,
            box=secret_box(state.settings),
            spec=body,
            allow_private=state.settings.allow_private_destinations,
        )
        return DestinationCreated(**_destination_out(row).model_dump(), secret=generated)


@destinations.get("/{name}", response_model=DestinationOut, responses=_NO_DESTINATION)
def read_destination(name: str, state: StateDep) -> DestinationOut:
    with _stored(state) as session:
        return _destination_out(store.get_destination(session=session, name=name))


@destinations.put(
    "/{name}",
    response_model=DestinationOut,
    responses={**_NO_DESTINATION, **_DESTINATION_REFUSED, **_NOT_JSON},
)
def update_destination(name: str, body: DestinationUpdate, state: StateDep) -> DestinationOut:
    """Replace the settings (a setting left out takes its default); the secret stays unless
    a new one is given."""
    with _stored(state) as session:
        row = store.update_destination(
            session=session,
            box=secret_box(state.settings),
            name=name,
            spec=body,
            allow_private=state.settings.allow_private_destinations,
        )
        return _destination_out(row)


@destinations.delete("/{name}", status_code=204, responses=_NO_DESTINATION)
def delete_destination(name: str, state: StateDep) -> Response:
    """Triggers sent to it from now on are undeliverable."""
    with _stored(state) as session:
        store.delete_destination(session=session, name=name)
    return Response(status_code=204)


@destinations.post(
    "/{name}/test",
    response_model=TestDelivery,
    responses={
        **_NO_DESTINATION,
        409: {"description": "The stored secret cannot be opened with this key."},
    },
)
async def send_test_delivery(name: str, state: StateDep) -> TestDelivery:
    """Send a signed test delivery now (a disabled destination too) and answer how it went:
    `ok`, `outcome`, the receiver's `status_code`, `latency_ms`, `error`. The payload is
    `{"type": "segflow.test", "timestamp", "data": {"destination", "kind", "message"}}`."""
    return await send_test(state, name)


async def send_test(state: AppState, name: str) -> TestDelivery:
    """One signed test delivery to the destination ``name`` now (the admin UI sends it too)."""

    def load() -> store.SendableDestination:
        with _stored(state) as session:
            return store.sendable_destination(
                session=session, box=secret_box(state.settings), name=name
            )

    destination = await run_in_threadpool(load)
    body = webhook_body(
        "segflow.test",
        {
            "destination": destination.name,
            "kind": destination.kind,
            "message": "A test delivery from Segflow.",
        },
    )
    async with webhook_client() as client:
        result = await send_webhook(
            client=client,
            destination=destination,
            webhook_id=new_webhook_id(),
            body=body,
            allow_private=state.settings.allow_private_destinations,
        )
    return TestDelivery(
        webhook_id=result.webhook_id,
        ok=result.ok,
        outcome=result.outcome,
        status_code=result.status_code,
        latency_ms=result.latency_ms,
        error=result.error,
    )


# --- templates ----------------------------------------------------------------------------------


@templates.get("", response_model=TemplatePage)
def list_templates(state: StateDep, limit: Limit = 100, cursor: Cursor = None) -> TemplatePage:
    """Every template by name: `name`, `kind`, `description`, `updated_at`."""
    with _stored(state) as session:
        rows, next_cursor = store.list_templates(session=session, after=cursor, limit=limit)
        items = [
            TemplateSummary(
                name=r.name, kind=r.kind, description=r.description, updated_at=r.updated_at
            )
            for r in rows
        ]
        return TemplatePage(items=items, next_cursor=next_cursor)


@templates.post(
    "",
    status_code=201,
    response_model=TemplateOut,
    responses={
        409: {"description": "A template of that name exists."},
        **_TEMPLATE_REFUSED,
        **_NOT_JSON,
    },
)
def create_template(body: TemplateIn, state: StateDep) -> TemplateOut:
    """A new template; refused when a field does not parse or reaches Python internals."""
    with _stored(state) as session:
        return _template_out(store.create_template(session=session, spec=body))


@templates.post(
    "/preview",
    response_model=PreviewOut,
    responses={
        404: {"description": "No such template, or no profile of the customer."},
        503: {"description": "Redis unreachable."},
        **_TEMPLATE_REFUSED,
        **_NOT_JSON,
    },
)
async def preview_template(body: PreviewIn, state: StateDep) -> PreviewOut:
    """Render a stored template (by name) or one given in full for a real customer's profile
    and a trigger (default: entering segment `preview` now). Nothing is sent."""
    return await render_preview(state, body)


async def render_preview(state: AppState, body: PreviewIn) -> PreviewOut:
    """The preview (the admin UI's too); refusals as HTTP errors naming what and where."""
    given = body.template

    def load() -> CompiledTemplate:
        if isinstance(given, InlineTemplate):
            try:
                return compile_template(name=given.name, kind=given.kind, sources=given.sources())
            except MessageTemplateError as error:
                raise _template_refused(error) from error
        with _stored(state) as session:
            return store.load_template(session=session, name=given)

    template = await run_in_threadpool(load)
    try:
        profile = await get_profile(state.redis, body.customer_id)
    except (RedisError, OSError) as error:
        raise HTTPException(503, detail=f"preview: Redis unreachable ({error})") from error
    if profile is None:
        raise HTTPException(404, detail=f"customer {body.customer_id!r}: no profile")
    trigger = body.trigger or TriggerIn()
    context = message_context(
        profile=profile,
        trigger=TriggerContext(
            segment=trigger.segment,
            kind=trigger.kind,
            at=trigger.at if trigger.at is not None else now_ms(),
            rule_version=trigger.rule_version,
        ),
    )
    try:
        message = await state.renderer.render(template, context)
    except MessageTemplateError as error:
        raise _template_refused(error) from error
    return PreviewOut(
        template=template.name,
        kind=template.kind,
        message=message.fields,
        context=jsonable_context(context),
    )


@templates.get("/{name}", response_model=TemplateOut, responses=_NO_TEMPLATE)
def read_template(name: str, state: StateDep) -> TemplateOut:
    with _stored(state) as session:
        return _template_out(store.get_template(session=session, name=name))


@templates.put(
    "/{name}",
    response_model=TemplateOut,
    responses={**_NO_TEMPLATE, **_TEMPLATE_REFUSED, **_NOT_JSON},
)
def update_template(name: str, body: TemplateSources, state: StateDep) -> TemplateOut:
    """Replace the template's kind, description and sources (checked as on create)."""
    with _stored(state) as session:
        return _template_out(store.update_template(session=session, name=name, spec=body))


@templates.delete("/{name}", status_code=204, responses=_NO_TEMPLATE)
def delete_template(name: str, state: StateDep) -> Response:
    """Triggers that name it from now on fail to render, with that reason."""
    with _stored(state) as session:
        store.delete_template(session=session, name=name)
    return Response(status_code=204)
