"""Destinations and templates in SQL: plain create, read, update, delete (no versions).

Every save is checked first: a destination's URL (``app.dispatch.urls``, after DNS) and secret,
a template's sources (they parse and reach no Python internals). Secrets are stored sealed
(``app.dispatch.secret_box``) and opened only by ``sendable_destination``, for signing.

The shipped templates in ``rules/templates/`` are stored on first start, each once ever: one
an operator deletes stays deleted. No destination is created: until an operator creates the
one a rule sends to, its triggers are undeliverable.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import SecretStr, ValidationError
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from app.dispatch.errors import (
    DestinationNotFound,
    DestinationProblem,
    DestinationRefused,
    DestinationURLError,
    NameTaken,
    TemplateNotFound,
    UnresolvableDestinationURL,
)
from app.dispatch.schema import DestinationIn, DestinationUpdate, TemplateIn, TemplateSources
from app.dispatch.secret_box import SecretBox, generate_signing_secret, signing_secret_problem
from app.dispatch.templates import CompiledTemplate, compile_template
from app.dispatch.urls import check_destination_url
from app.dispatch.webhooks import WebhookTarget
from app.models import Destination, MessageTemplate, ShippedSeed, utcnow

SHIPPED_TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "rules" / "templates"


@dataclass(frozen=True)
class SendableDestination(WebhookTarget):
    """A destination with its secret opened: what a delivery needs. Its repr hides the
    secret."""

    kind: str = "generic"
    rate_limit_per_s: float = 10.0
    concurrency: int = 4
    disabled: bool = False


# --- destinations -------------------------------------------------------------------------------


def create_destination(
    *, session: Session, box: SecretBox, spec: DestinationIn, allow_private: bool
) -> tuple[Destination, str | None]:
    """Store a new destination; answer it and the secret generated for it (None when the spec
    gave one). Raises ``NameTaken``, ``DestinationRefused``."""
    if _destination_row(session, spec.name) is not None:
        raise NameTaken(
            f"destination {spec.name!r} exists already: PUT /api/destinations/{spec.name} "
            "changes it"
        )
    _check_destination(spec.name, spec, allow_private=allow_private)
    generated = None if spec.secret else generate_signing_secret()
    secret = spec.secret.get_secret_value() if spec.secret else generated
    assert secret is not None
    now = utcnow()
    row = Destination(
        name=spec.name,
        sealed_secret=box.seal(secret),
        created_at=now,
        updated_at=now,
        **spec.model_dump(exclude={"name", "secret"}),
    )
    session.add(row)
    _flush(session, f"destination {spec.name!r} exists already")
    return row, generated


def update_destination(
    *, session: Session, box: SecretBox, name: str, spec: DestinationUpdate, allow_private: bool
) -> Destination:
    """Replace the destination's settings (and its secret, when the spec gives one)."""
    row = get_destination(session=session, name=name)
    _check_destination(name, spec, allow_private=allow_private)
    for field, value in spec.model_dump(exclude={"secret"}).items():
        setattr(row, field, value)
    if spec.secret is not None:
        row.sealed_secret = box.seal(spec.secret.get_secret_value())
    row.updated_at = utcnow()
    session.add(row)
    session.flush()
    return row


def delete_destination(*, session: Session, name: str) -> None:
    session.delete(get_destination(session=session, name=name))
    session.flush()


def get_destination(*, session: Session, name: str) -> Destination:
    """The stored row (its secret sealed). Raises ``DestinationNotFound``."""
    row = _destination_row(session, name)
    if row is None:
        raise DestinationNotFound(f"destination {name!r}: no such destination")
    return row


def list_destinations(
    *, session: Session, after: str | None = None, limit: int = 100
) -> tuple[list[Destination], str | None]:
    """A page of destinations by name, after the name ``after``; and the next page's cursor."""
    query = select(Destination).order_by(col(Destination.name))
    if after is not None:
        query = query.where(col(Destination.name) > after)
    rows = list(session.exec(query.limit(limit + 1)))
    return rows[:limit], rows[limit - 1].name if len(rows) > limit else None


def send_warnings(*, session: Session, destination: str, template: str) -> dict[str, str]:
    """Why a rule's send to ``destination`` with ``template`` could not go out now, by what is
    wrong (``destination``, ``template``); empty when both are ready. A rule may be saved
    before them (its triggers are recorded as undeliverable, or failed, until they exist),
    so this warns, it does not refuse."""
    found: dict[str, str] = {}
    row = _destination_row(session, destination)
    if row is None:
        found["destination"] = (
            f"destination {destination!r} does not exist yet: until an operator creates it "
            "(POST /api/destinations) this send's triggers are recorded as undeliverable; "
            "replay them then from /api/dead-letters"
        )
    elif row.disabled:
        found["destination"] = (
            f"destination {destination!r} is disabled: this send's triggers are recorded as "
            "undeliverable while it is"
        )
    if _template_row(session, template) is None:
        found["template"] = (
            f"template {template!r} does not exist yet: until an operator creates it "
            "(POST /api/templates) this send's deliveries fail; replay them then from "
            "/api/dead-letters"
        )
    return found


def sendable_destination(*, session: Session, box: SecretBox, name: str) -> SendableDestination:
    """The destination ready to send to: settings and the opened secret. Raises
    ``DestinationNotFound``, ``SecretUnreadable``."""
    row = get_destination(session=session, name=name)
    return sendable(row, box=box)


def sendable(row: Destination, *, box: SecretBox) -> SendableDestination:
    secret = box.open(row.sealed_secret, what=f"the secret of destination {row.name!r}")
    return SendableDestination(
        name=row.name,
        url=row.url,
        secret=SecretStr(secret),
        headers=dict(row.headers or {}),
        timeout_s=row.timeout_s,
        kind=row.kind,
        rate_limit_per_s=row.rate_limit_per_s,
        concurrency=row.concurrency,
        disabled=row.disabled,
    )


def _destination_row(session: Session, name: str) -> Destination | None:
    return session.exec(select(Destination).where(Destination.name == name)).first()


def _check_destination(name: str, spec: DestinationUpdate, *, allow_private: bool) -> None:
    problems = []
    if spec.secret is not None:
        problem = signing_secret_problem(spec.secret.get_secret_value())
        if problem:
            problems.append(DestinationProblem(name, "secret", problem))
    try:
        check_destination_url(spec.url, allow_private=allow_private)
    except UnresolvableDestinationURL:
        # kept: what a name resolves to is checked again before every send, where a name that
        # does not resolve (yet, or from this host) is a network failure, retried
        pass
    except DestinationURLError as error:
        problems.append(DestinationProblem(name, "url", str(error)))
    if problems:
        raise DestinationRefused(problems)


# --- templates ----------------------------------------------------------------------------------


def create_template(*, session: Session, spec: TemplateIn) -> MessageTemplate:
    """Store a new template. Raises ``NameTaken``, ``MessageTemplateError``."""
    if _template_row(session, spec.name) is not None:
        raise NameTaken(
            f"template {spec.name!r} exists already: PUT /api/templates/{spec.name} changes it"
        )
    compile_template(name=spec.name, kind=spec.kind, sources=spec.sources())
    now = utcnow()
    row = MessageTemplate(
        name=spec.name,
        kind=spec.kind,
        description=spec.description,
        sources=spec.sources(),
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    _flush(session, f"template {spec.name!r} exists already")
    return row


def update_template(*, session: Session, name: str, spec: TemplateSources) -> MessageTemplate:
    """Replace the template's kind, description and sources."""
    row = get_template(session=session, name=name)
    compile_template(name=name, kind=spec.kind, sources=spec.sources())
    row.kind, row.description, row.sources = spec.kind, spec.description, spec.sources()
    row.updated_at = utcnow()
    session.add(row)
    session.flush()
    return row


def delete_template(*, session: Session, name: str) -> None:
    session.delete(get_template(session=session, name=name))
    session.flush()


def get_template(*, session: Session, name: str) -> MessageTemplate:
    """Raises ``TemplateNotFound``."""
    row = _template_row(session, name)
    if row is None:
        raise TemplateNotFound(f"template {name!r}: no such template")
    return row


def list_templates(
    *, session: Session, after: str | None = None, limit: int = 100
) -> tuple[list[MessageTemplate], str | None]:
    query = select(MessageTemplate).order_by(col(MessageTemplate.name))
    if after is not None:
        query = query.where(col(MessageTemplate.name) > after)
    rows = list(session.exec(query.limit(limit + 1)))
    return rows[:limit], rows[limit - 1].name if len(rows) > limit else None


def load_template(*, session: Session, name: str) -> CompiledTemplate:
    """The stored template, compiled (cached by content) and ready to render. Raises
    ``TemplateNotFound``, ``MessageTemplateError``."""
    row = get_template(session=session, name=name)
    return compile_template(name=row.name, kind=row.kind, sources=row.sources)


def template_names(*, session: Session) -> set[str]:
    return set(session.exec(select(MessageTemplate.name)))


def _template_row(session: Session, name: str) -> MessageTemplate | None:
    return session.exec(select(MessageTemplate).where(MessageTemplate.name == name)).first()


def _flush(session: Session, taken: str) -> None:
    """Flush, reading a unique-name race lost to another writer as ``NameTaken``."""
    try:
        session.flush()
    except IntegrityError as error:
        session.rollback()
        raise NameTaken(taken) from error


# --- shipped templates --------------------------------------------------------------------------


@functools.cache
def shipped_templates() -> tuple[TemplateIn, ...]:
    """The templates in ``rules/templates/`` (one YAML document each), checked."""
    found = []
    for path in sorted(SHIPPED_TEMPLATES_DIR.glob("*.y*ml")):
        try:
            spec = TemplateIn.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
        except (ValidationError, yaml.YAMLError) as error:
            raise ValueError(f"{path}: not a template: {error}") from error
        compile_template(name=spec.name, kind=spec.kind, sources=spec.sources())
        found.append(spec)
    return tuple(found)


def seed_shipped_templates(*, session: Session) -> int:
    """Store each shipped template not stored before; answer how many were stored."""
    stored = 0
    for spec in shipped_templates():
        if session.get(ShippedSeed, {"what": "template", "name": spec.name}) is not None:
            continue
        if _template_row(session, spec.name) is None:  # an operator's own one stays
            create_template(session=session, spec=spec)
            stored += 1
        session.add(ShippedSeed(what="template", name=spec.name))
        session.flush()
    return stored
