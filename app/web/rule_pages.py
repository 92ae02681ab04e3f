"""The rule editor: write or change a rule's YAML with the same checks as the API while typing
(problems at their line and column, the rule's examples run), a preview of who would match
now, save as a new version, the history with each change's diff, rollback, enable and
disable. A new rule can start from one of the shipped ones."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response
from redis import RedisError
from sqlmodel import Session

from app.api.deps import StateDep
from app.api.rules import MAX_RULE_BYTES, rule_warnings
from app.db import session_scope
from app.rules import service, store
from app.rules.active import SHIPPED_RULES_DIR
from app.rules.schema import RuleError, RuleProblem
from app.rules.store import YAML, RuleConflict, RuleNotFound, StoredRule
from app.web.base import WebSessionDep, page
from pipelines.examples import example_problems

router = APIRouter(prefix="/admin/rules", include_in_schema=False)
Source = Annotated[str, Form(max_length=MAX_RULE_BYTES)]
PREVIEW_LIMIT = 100_000


def _shipped() -> dict[str, str]:
    """The shipped rules' texts by file name (what a new rule can start from)."""
    return {path.stem: path.read_text() for path in sorted(SHIPPED_RULES_DIR.glob("*.yaml"))}


@router.get("", response_class=HTMLResponse)
def rule_list(request: Request, state: StateDep, session: WebSessionDep) -> HTMLResponse:
    with Session(state.engine) as db:
        rules = store.current_rules(session=db)
    return page(
        request, "rules.html", session, title="Rules", rules=rules, shipped=sorted(_shipped())
    )


@router.get("/new", response_class=HTMLResponse)
def new_rule(request: Request, session: WebSessionDep, start: str = "") -> HTMLResponse:
    source = _shipped().get(start, "id: my-segment\nname: My segment\nwhen:\n  all:\n    - \n")
    return page(
        request,
        "rule_edit.html",
        session,
        title="New rule",
        stored=None,
        source=source,
        changes=[],
        versions=[],
    )


@router.get("/{rule_id}", response_class=HTMLResponse)
def edit_rule(
    request: Request, rule_id: str, state: StateDep, session: WebSessionDep
) -> HTMLResponse:
    with Session(state.engine) as db:
        try:
            stored = store.get_rule(session=db, rule_id=rule_id)
        except RuleNotFound:
            return page(request, "missing.html", session, 404, title="No such rule", what=rule_id)
        changes = store.changes(session=db, rule_id=rule_id)[:20]
        versions = store.versions(session=db, rule_id=rule_id)
    return page(
        request,
        "rule_edit.html",
        session,
        title=stored.rule.name,
        stored=stored,
        source=stored.source,
        changes=changes,
        versions=versions,
    )


@router.post("/check", response_class=HTMLResponse)
async def check_rule(
    request: Request, state: StateDep, session: WebSessionDep, source: Source
) -> HTMLResponse:
    """As ``POST /api/rules/validate``: every problem at its line and column, the examples
    run."""

    def check() -> dict[str, Any]:
        try:
            rule = store.parse_document(source, YAML)
        except RuleError as error:
            return {"problems": error.problems, "rule": None, "warnings": []}
        with Session(state.engine) as db:
            problems = store.problems_of(
                session=db, rule=rule, text=source, examples=example_problems
            )
            warnings = rule_warnings(db, rule, source)
        return {"problems": problems, "rule": rule, "warnings": warnings}

    return page(request, "_rule_check.html", session, **await asyncio.to_thread(check))


@router.post("/preview", response_class=HTMLResponse)
async def preview_rule(
    request: Request, state: StateDep, session: WebSessionDep, source: Source
) -> HTMLResponse:
    """Who the rule would hold for now, among the current profiles."""
    try:
        rule = store.parse_document(source, YAML)
    except RuleError as error:
        return page(request, "_rule_preview.html", session, preview=None, problems=error.problems)
    try:
        found = await service.preview(state.redis, rule, limit=PREVIEW_LIMIT)
    except (RedisError, OSError) as error:
        return page(
            request,
            "_rule_preview.html",
            session,
            preview=None,
            problems=[RuleProblem(rule.id, None, None, f"Redis unreachable ({error})")],
        )
    return page(request, "_rule_preview.html", session, preview=found, problems=[])


def _done(rule_id: str) -> Response:
    """After a change: the rule's page again (htmx follows HX-Redirect)."""
    return Response(status_code=204, headers={"HX-Redirect": f"/admin/rules/{rule_id}"})


def _refused(request: Request, session: Any, problems: list[RuleProblem]) -> Response:
    """A refusal, as the problems partial (200: htmx swaps only a success in)."""
    return page(
        request,
        "_rule_check.html",
        session,
        problems=problems,
        rule=None,
        warnings=[],
        refused=True,
    )


async def _change(
    request: Request, state: Any, session: Any, change: Callable[[Session], StoredRule]
) -> Response:
    """Run a change to the stored rules; the rule's page again, or why it was refused."""

    def run() -> Response:
        try:
            with session_scope(state.engine) as db:
                stored = change(db)
        except RuleError as error:
            return _refused(request, session, list(error.problems))
        except (RuleNotFound, RuleConflict) as error:
            return _refused(request, session, [RuleProblem(None, None, None, str(error))])
        return _done(stored.id)

    return await asyncio.to_thread(run)


@router.post("/save", response_class=HTMLResponse)
async def save_rule(
    request: Request,
    state: StateDep,
    session: WebSessionDep,
    source: Source,
    rule_id: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    """A new rule, or a new version of ``rule_id``: checked as the API checks it."""

    def change(db: Session) -> StoredRule:
        if rule_id:
            return store.update_rule(
                session=db,
                rule_id=rule_id,
                text=source,
                media_type=YAML,
                author=session.name,
                examples=example_problems,
            )
        return store.create_rule(
            session=db,
            text=source,
            media_type=YAML,
            author=session.name,
            examples=example_problems,
        )

    return await _change(request, state, session, change)


@router.post("/{rule_id}/enabled", response_class=HTMLResponse)
async def set_enabled(
    request: Request,
    rule_id: str,
    state: StateDep,
    session: WebSessionDep,
    enabled: Annotated[bool, Form()],
) -> Response:
    return await _change(
        request,
        state,
        session,
        lambda db: store.set_enabled(
            session=db,
            rule_id=rule_id,
            enabled=enabled,
            author=session.name,
            examples=example_problems,
        ),
    )


@router.post("/{rule_id}/rollback", response_class=HTMLResponse)
async def rollback_rule(
    request: Request,
    rule_id: str,
    state: StateDep,
    session: WebSessionDep,
    version: Annotated[int, Form(ge=1)],
) -> Response:
    return await _change(
        request,
        state,
        session,
        lambda db: store.rollback(
            session=db,
            rule_id=rule_id,
            version=version,
            author=session.name,
            examples=example_problems,
        ),
    )
