"""Admin endpoints for rules: create, read, update, disable, delete, versions, rollback,
validate and preview. A rule is sent as its YAML text (``Content-Type: application/yaml``) or
the same document as JSON. Views are thin: storage and checks are in ``app.rules.store``.

A refused rule answers 422 with ``{"detail": [{"rule", "field", "line", "column", "message"},
...]}``: every problem, each naming where it is (line and column are 1-based; null when the
problem has no place in the text). A rule that sends to a destination or template that
does not exist yet is saved, with ``warnings`` of the same shape naming each such send.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

from fastapi import HTTPException, Query, Request, Response
from pydantic import BaseModel, Field
from redis import RedisError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from app.api.deps import Admin, Limit, Responses, StateDep, When, admin_router
from app.db import session_scope
from app.dispatch.store import send_warnings
from app.rules import service, store
from app.rules.explain import feature_keys
from app.rules.schema import Rule, RuleError, RuleProblem, position_of
from app.rules.service import Preview
from app.rules.store import JSON, YAML, RuleConflict, RuleNotFound, StoredRule
from pipelines.examples import example_problems

MAX_RULE_BYTES = 256 * 1024
_YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain")
_DOCUMENT = {
    "required": True,
    "content": {
        YAML: {"schema": {"type": "string"}, "example": "id: my-segment\nname: ...\nwhen: ..."},
        JSON: {"schema": {"type": "object"}},
    },
}

router = admin_router(prefix="/api/rules", tags=["rules"])
T = TypeVar("T")
_NO_RULE: Responses = {404: {"description": "No such rule."}}
_REFUSED: Responses = {
    422: {"description": "Refused: every problem, with its rule, field, line and column."}
}
_SENT: Responses = {
    400: {"description": "The body is not UTF-8 text."},
    413: {"description": "The rule is larger than 256 KB."},
    415: {"description": "Not YAML or JSON."},
}


class ProblemOut(BaseModel):
    rule: str | None
    field: str | None
    line: int | None = Field(description="1-based line of the rule's text (null: no place).")
    column: int | None = Field(
        default=None, description="1-based column on that line, in characters (null: no place)."
    )
    message: str


class RuleSummary(BaseModel):
    id: str
    name: str
    enabled: bool
    version: int
    updated_at: When


class RuleOut(RuleSummary):
    description: str
    media_type: str
    source: str  # the document as written
    features: list[str]  # what it reads, as profiles show them
    segments_read: list[str]
    # sends whose destination or template does not exist (yet): saved, but not sent until then
    warnings: list[ProblemOut] = []


class RulePage(BaseModel):
    items: list[RuleSummary]
    next_cursor: str | None


class VersionOut(BaseModel):
    version: int
    author: str
    created_at: When
    media_type: str
    source: str


class VersionPage(BaseModel):
    items: list[VersionOut]  # newest first
    next_cursor: str | None


class ChangeOut(BaseModel):
    id: int
    action: str
    version: int | None
    author: str
    at: When
    diff: str


class ChangePage(BaseModel):
    items: list[ChangeOut]  # newest first
    next_cursor: str | None


class Validation(BaseModel):
    valid: bool
    id: str | None
    problems: list[ProblemOut]
    features: list[str] = []
    examples: int = 0
    warnings: list[ProblemOut] = []


class RollbackIn(BaseModel):
    version: int = Field(ge=1, le=999_999_999)


def _out(stored: StoredRule, session: Session) -> RuleOut:
    rule = stored.rule
    return RuleOut(
        warnings=rule_warnings(session, rule, stored.source),
        id=rule.id,
        name=rule.name,
        enabled=stored.enabled,
        version=stored.version,
        updated_at=stored.updated_at,
        description=rule.description,
        media_type=stored.media_type,
        source=stored.source,
        features=sorted(feature_keys(rule)),
        segments_read=sorted(rule.segment_refs()),
    )


def rule_warnings(session: Session, rule: Rule, text: str) -> list[ProblemOut]:
    """Each send of the rule whose destination or template is not there to send with."""
    found = []
    for kind, actions in (("on_enter", rule.on_enter), ("on_exit", rule.on_exit)):
        for index, action in enumerate(actions):
            send = action.send
            wrong = send_warnings(
                session=session, destination=send.destination, template=send.template
            )
            for what, message in wrong.items():
                line, column = position_of(text, (kind, index, "send", what)) or (None, None)
                found.append(
                    ProblemOut(
                        rule=rule.id,
                        field=f"{kind}[{index}].send.{what}",
                        line=line,
                        column=column,
                        message=message,
                    )
                )
    return found


def _problems(error: RuleError) -> list[ProblemOut]:
    return [_problem(problem) for problem in error.problems]


def _problem(problem: RuleProblem) -> ProblemOut:
    return ProblemOut(
        rule=problem.rule_id,
        field=problem.field,
        line=problem.line,
        column=problem.column,
        message=problem.message,
    )


async def _document(request: Request) -> tuple[str, str]:
    """The rule's text and its media type, from the request body."""
    declared = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if declared == JSON:
        media_type = JSON
    elif declared in _YAML_TYPES or not declared:
        media_type = YAML
    else:
        raise HTTPException(415, detail=f"a rule is sent as {YAML} or {JSON}, not {declared!r}")
    body = await request.body()
    if len(body) > MAX_RULE_BYTES:
        raise HTTPException(413, detail=f"a rule is at most {MAX_RULE_BYTES // 1024} KB")
    try:
        return body.decode("utf-8"), media_type
    except UnicodeDecodeError as error:
        raise HTTPException(400, detail=f"the rule is not UTF-8 text: {error}") from error


@contextmanager
def _stored(state: Any) -> Iterator[Session]:
    """A committed session, with the store's refusals as HTTP answers."""
    try:
        with session_scope(state.engine) as session:
            yield session
    except RuleError as error:
        raise HTTPException(422, detail=[p.model_dump() for p in _problems(error)]) from error
    except RuleNotFound as error:
        raise HTTPException(404, detail=str(error)) from error
    except RuleConflict as error:
        raise HTTPException(409, detail=str(error)) from error


@router.get("", response_model=RulePage)
def list_rules(state: StateDep, limit: Limit = 100, cursor: str | None = None) -> RulePage:
    """Every rule, enabled or not, by id."""
    with _stored(state) as session:
        rules = [r for r in store.current_rules(session=session) if cursor is None or r.id > cursor]
    page = rules[:limit]
    return RulePage(
        items=[
            RuleSummary(
                id=r.id,
                name=r.rule.name,
                enabled=r.enabled,
                version=r.version,
                updated_at=r.updated_at,
            )
            for r in page
        ],
        next_cursor=page[-1].id if len(rules) > limit else None,
    )


@router.post(
    "",
    status_code=201,
    response_model=RuleOut,
    openapi_extra={"requestBody": _DOCUMENT},
    responses={409: {"description": "A rule with this id exists."}, **_REFUSED, **_SENT},
)
async def create_rule(request: Request, state: StateDep, admin: Admin) -> RuleOut:
    """Store a new rule (version 1): the running dataflow evaluates it within seconds."""
    text, media_type = await _document(request)

    def create() -> RuleOut:
        with _stored(state) as session:
            stored = store.create_rule(
                session=session,
                text=text,
                media_type=media_type,
                author=admin,
                examples=example_problems,
            )
            return _out(stored, session)

    return await run_in_threadpool(create)


@router.post(
    "/validate",
    response_model=Validation,
    openapi_extra={"requestBody": _DOCUMENT},
    responses=_SENT,
)
async def validate_rule(request: Request, state: StateDep) -> Validation:
    """Check a rule as saving it would (schema, the rule set with it, its examples), without
    saving: ``valid`` and every problem."""
    text, media_type = await _document(request)

    def validate() -> Validation:
        try:
            rule = store.parse_document(text, media_type)
        except RuleError as error:
            return Validation(valid=False, id=None, problems=_problems(error))
        with _stored(state) as session:
            problems = store.problems_of(
                session=session, rule=rule, text=text, examples=example_problems
            )
            warnings = rule_warnings(session, rule, text)
        return Validation(
            valid=not problems,
            id=rule.id,
            problems=[_problem(p) for p in problems],
            features=sorted(feature_keys(rule)),
            examples=len(rule.examples),
            warnings=warnings,
        )

    return await run_in_threadpool(validate)


@router.post(
    "/preview",
    response_model=Preview,
    openapi_extra={"requestBody": _DOCUMENT},
    responses={503: {"description": "Redis unreachable."}, **_REFUSED, **_SENT},
)
async def preview_rule(
    request: Request,
    state: StateDep,
    limit: Annotated[int, Query(ge=1, le=1_000_000)] = 100_000,
) -> Preview:
    """How many current customers the rule would hold for now, and some of them. Features no
    rule computes yet are listed: they count from when the rule is saved."""
    text, media_type = await _document(request)
    try:
        rule = store.parse_document(text, media_type)
    except RuleError as error:
        raise HTTPException(422, detail=[p.model_dump() for p in _problems(error)]) from error
    try:
        return await service.preview(state.redis, rule, limit=limit)
    except (RedisError, OSError) as error:
        raise HTTPException(503, detail=f"preview: Redis unreachable ({error})") from error


@router.get("/{rule_id}", response_model=RuleOut, responses=_NO_RULE)
def read_rule(rule_id: str, state: StateDep) -> RuleOut:
    with _stored(state) as session:
        return _out(store.get_rule(session=session, rule_id=rule_id), session)


@router.put(
    "/{rule_id}",
    response_model=RuleOut,
    openapi_extra={"requestBody": _DOCUMENT},
    responses={**_NO_RULE, **_REFUSED, **_SENT},
)
async def update_rule(rule_id: str, request: Request, state: StateDep, admin: Admin) -> RuleOut:
    """Store a new version of the rule; customers enter or exit under it within seconds."""
    text, media_type = await _document(request)

    def update() -> RuleOut:
        with _stored(state) as session:
            stored = store.update_rule(
                session=session,
                rule_id=rule_id,
                text=text,
                media_type=media_type,
                author=admin,
                examples=example_problems,
            )
            return _out(stored, session)

    return await run_in_threadpool(update)


@router.delete(
    "/{rule_id}",
    status_code=204,
    responses={**_NO_RULE, 409: {"description": "Other rules read this segment."}},
)
def delete_rule(rule_id: str, state: StateDep, admin: Admin) -> Response:
    """Delete the rule: its segment empties (members exit); versions and audit stay."""
    with _stored(state) as session:
        store.delete_rule(session=session, rule_id=rule_id, author=admin)
    return Response(status_code=204)


@router.post("/{rule_id}/disable", response_model=RuleOut, responses={**_NO_RULE, **_REFUSED})
def disable_rule(rule_id: str, state: StateDep, admin: Admin) -> RuleOut:
    """A new version with ``enabled: false``: members exit, nobody enters."""
    with _stored(state) as session:
        return _out(
            store.set_enabled(
                session=session,
                rule_id=rule_id,
                enabled=False,
                author=admin,
                examples=example_problems,
            ),
            session,
        )


@router.post("/{rule_id}/enable", response_model=RuleOut, responses={**_NO_RULE, **_REFUSED})
def enable_rule(rule_id: str, state: StateDep, admin: Admin) -> RuleOut:
    with _stored(state) as session:
        return _out(
            store.set_enabled(
                session=session,
                rule_id=rule_id,
                enabled=True,
                author=admin,
                examples=example_problems,
            ),
            session,
        )


@router.get("/{rule_id}/versions", response_model=VersionPage, responses=_NO_RULE)
def list_versions(
    rule_id: str,
    state: StateDep,
    limit: Limit = 100,
    cursor: Annotated[str | None, Query(pattern=r"^\d{1,9}$")] = None,
) -> VersionPage:
    """Every version, newest first (a deleted rule's too); ``cursor``: below that version."""
    with _stored(state) as session:
        found = store.versions(session=session, rule_id=rule_id)
    page, more = _newest_first(found, lambda v: v.version, limit, cursor)
    items = [VersionOut.model_validate(v, from_attributes=True) for v in page]
    return VersionPage(items=items, next_cursor=more)


@router.get("/{rule_id}/changes", response_model=ChangePage, responses=_NO_RULE)
def list_changes(
    rule_id: str,
    state: StateDep,
    limit: Limit = 100,
    cursor: Annotated[str | None, Query(pattern=r"^\d{1,18}$")] = None,
) -> ChangePage:
    """The audit trail: who changed the rule, when, and the diff; newest first."""
    with _stored(state) as session:
        found = store.changes(session=session, rule_id=rule_id)
    page, more = _newest_first(found, lambda c: c.id or 0, limit, cursor)
    items = [ChangeOut.model_validate(c, from_attributes=True) for c in page]
    return ChangePage(items=items, next_cursor=more)


def _newest_first(
    found: list[T], number: Callable[[T], int], limit: int, cursor: str | None
) -> tuple[list[T], str | None]:
    """A page of a newest-first list; the cursor is the last number given (below it next)."""
    below = [item for item in found if cursor is None or number(item) < int(cursor)]
    page = below[:limit]
    return page, str(number(page[-1])) if len(below) > limit else None


@router.post(
    "/{rule_id}/rollback",
    response_model=RuleOut,
    responses={
        400: {"description": "The body is not JSON."},
        404: {"description": "No such rule or version."},
        **_REFUSED,
    },
)
def rollback_rule(rule_id: str, body: RollbackIn, state: StateDep, admin: Admin) -> RuleOut:
    """Make an old version current again, as a new version checked like any change."""
    with _stored(state) as session:
        return _out(
            store.rollback(
                session=session,
                rule_id=rule_id,
                version=body.version,
                author=admin,
                examples=example_problems,
            ),
            session,
        )
