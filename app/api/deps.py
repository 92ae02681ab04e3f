"""What the views depend on, in one place: the process-wide state and the admin check."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator
from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.convertors import PathConvertor, register_url_convertor

from app.credentials import admin_token_name, credentials_revision, hash_secret
from app.dispatch.rendering import TemplateRenderer
from app.ingest.auth import WriteKeyCache
from app.ingest.service import EventStore
from app.rules import store as rules_store
from app.rules.store import StoredRule
from app.settings import Settings

_ADMIN_CACHE_S = 5.0


@dataclass(frozen=True)
class SeenToken:
    at: float  # monotonic
    name: str
    revision: int  # the credentials' revision it was confirmed at


@dataclass
class AppState:
    settings: Settings
    redis: aioredis.Redis
    engine: Engine
    store: EventStore
    write_keys: WriteKeyCache
    renderer: TemplateRenderer  # previews render in its processes, never in the API's
    redis_url: str = ""  # for a thread's own (sync) client: cluster refits run in threads
    # token hash -> when it was last confirmed, whose it is: admin calls skip SQL
    admin_tokens_seen: dict[str, SeenToken] = field(default_factory=dict)


async def get_state(request: Request) -> AppState:
    # async on purpose: FastAPI runs a plain-def dependency in a worker thread, one thread hop
    # per request on the collector's hot path.
    state: AppState = request.app.state.segflow
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_session(state: StateDep) -> Iterator[Session]:
    with Session(state.engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_stored_rules(state: StateDep) -> list[StoredRule]:
    """Every stored rule, enabled or not (a plain def: FastAPI reads SQL in its thread pool)."""
    with Session(state.engine) as session:
        return rules_store.current_rules(session=session)


StoredRules = Annotated[list[StoredRule], Depends(get_stored_rules)]
Limit = Annotated[int, Query(ge=1, le=1000)]  # a page's size
# SQLite gives datetimes back without their zone: they were written in UTC
When = Annotated[datetime, AfterValidator(lambda d: d if d.tzinfo else d.replace(tzinfo=UTC))]

_bearer = HTTPBearer(auto_error=False, description="The admin token `segflow up` printed.")


async def require_admin(
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """Let admins through; answer who it is (the token's name). A token seen lately passes
    without SQL unless a revocation happened since (the credentials' revision moved)."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="admin API: send the admin token as 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    name = await confirmed_admin(state, hash_secret(credentials.credentials))
    if name is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="admin API: the bearer token is not valid",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return name


async def confirmed_admin(state: AppState, digest: str) -> str | None:
    """Whose admin token has this hash (None: no one's now): remembered for a few seconds
    unless a revocation happened since (the credentials' revision moved), else read from SQL
    in a thread. The API's bearer check, the UI's login and its sessions all ask here."""
    revision = await credentials_revision(state.redis)
    seen = state.admin_tokens_seen.get(digest)
    if (
        seen is not None
        and revision is not None
        and seen.revision == revision
        and time.monotonic() - seen.at < _ADMIN_CACHE_S
    ):
        return seen.name
    name = await asyncio.to_thread(_admin_token_name, state, digest)
    if name is None:
        state.admin_tokens_seen.pop(digest, None)
    elif revision is not None:
        state.admin_tokens_seen[digest] = SeenToken(time.monotonic(), name, revision)
    return name


def _admin_token_name(state: AppState, digest: str) -> str | None:
    bootstrap = state.settings.admin_token
    with Session(state.engine) as session:
        return admin_token_name(
            session=session,
            digest=digest,
            bootstrap=bootstrap.get_secret_value() if bootstrap else None,
        )


# The admin dependency, in one spelling: every admin router requires it (``admin_router``), and a
# route that records who acted reads the name from it (``admin: Admin``; FastAPI checks the
# token once per request).
Admin = Annotated[str, Depends(require_admin)]  # the admin token's name, for the audit trail
Responses = dict[int | str, dict[str, Any]]
UNAUTHORIZED: Responses = {401: {"description": "Missing or wrong bearer token."}}


TOO_LARGE: Responses = {413: {"description": "The request body is larger than 1 MB."}}


def admin_router(*, prefix: str, tags: list[str], responses: Responses | None = None) -> APIRouter:
    """A router of the admin API: every route answers 401 without a valid admin token."""
    return APIRouter(
        prefix=prefix,
        tags=list(tags),
        dependencies=[Depends(require_admin)],
        responses={**UNAUTHORIZED, **TOO_LARGE, **(responses or {})},
    )


class CustomerIdConvertor(PathConvertor):
    """A customer id in a path (``{customer_id:customer}``): anything the collector took,
    ``/`` (sent as it is or as ``%2F``, decoded before routing) and line breaks too, which
    Starlette's ``path`` (``.*``) does not match."""

    regex = r"[\s\S]+"


register_url_convertor("customer", CustomerIdConvertor())
