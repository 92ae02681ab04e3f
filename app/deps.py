"""What the views depend on, in one place: the process-wide state and the admin check."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from sqlmodel import Session

from app.credentials import admin_token_name, hash_secret
from app.ingest.auth import WriteKeyCache
from app.ingest.service import EventStore
from app.settings import Settings

_ADMIN_CACHE_S = 5.0


@dataclass
class AppState:
    settings: Settings
    redis: aioredis.Redis
    engine: Engine
    store: EventStore
    write_keys: WriteKeyCache
    # token hash -> (monotonic time it was last confirmed, whose it is): admin calls skip SQL
    admin_tokens_seen: dict[str, tuple[float, str]] = field(default_factory=dict)


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

_bearer = HTTPBearer(auto_error=False, description="The admin token `segflow up` printed.")


def require_admin(
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """Let admins through; answer who it is (the token's name)."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="admin API: send the admin token as 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    token = credentials.credentials
    digest = hash_secret(token)
    seen = state.admin_tokens_seen.get(digest)
    if seen is not None and time.monotonic() - seen[0] < _ADMIN_CACHE_S:
        return seen[1]
    bootstrap = state.settings.admin_token
    with Session(state.engine) as session:
        name = admin_token_name(
            session=session,
            token=token,
            bootstrap=bootstrap.get_secret_value() if bootstrap else None,
        )
    if name is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="admin API: the bearer token is not valid",
            headers={"WWW-Authenticate": "Bearer"},
        )
    state.admin_tokens_seen[digest] = (time.monotonic(), name)
    return name


AdminDep = Depends(require_admin)
Admin = Annotated[str, Depends(require_admin)]  # the admin's name, for the audit trail
