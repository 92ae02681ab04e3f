"""Admin endpoints that revoke credentials: a source's write key, or admin tokens by name.

Either fails at the very next call, in every API process (``app.credentials``); the row of a
revoked write key stays, so the source name still explains the events it sent.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from fastapi import HTTPException
from pydantic import BaseModel
from redis import RedisError

from app.api.deps import AppState, StateDep, When, admin_router
from app.credentials import (
    EnvironmentTokenError,
    UnknownCredentialError,
    bump_credentials_revision,
    revoke_admin_tokens,
    revoke_write_key,
)
from app.db import session_scope

write_keys = admin_router(prefix="/api/write-keys", tags=["credentials"])
admin_tokens = admin_router(prefix="/api/admin-tokens", tags=["credentials"])


class RevokedWriteKey(BaseModel):
    name: str
    key_prefix: str
    revoked_at: When


class RevokedAdminTokens(BaseModel):
    name: str
    revoked: int  # how many tokens had that name


@write_keys.delete(
    "/{name}",
    response_model=RevokedWriteKey,
    responses={404: {"description": "No write key has that name."}},
)
async def revoke_key(name: str, state: StateDep) -> RevokedWriteKey:
    """Revoke the write key of source NAME: the collector answers 401 to it from now on."""

    def revoke() -> RevokedWriteKey:
        with session_scope(state.engine) as session:
            row = revoke_write_key(session=session, name=name)
            revoked_at: datetime = row.disabled_at  # type: ignore[assignment]
            return RevokedWriteKey(name=row.name, key_prefix=row.key_prefix, revoked_at=revoked_at)

    try:
        revoked = await asyncio.to_thread(revoke)
    except UnknownCredentialError as error:
        raise HTTPException(404, detail=str(error)) from error
    await _spread(state)
    return revoked


@admin_tokens.delete(
    "/{name}",
    response_model=RevokedAdminTokens,
    responses={
        404: {"description": "No admin token has that name."},
        409: {"description": "The token set by SEGFLOW_ADMIN_TOKEN is not stored."},
    },
)
async def revoke_tokens(name: str, state: StateDep) -> RevokedAdminTokens:
    """Revoke every admin token called NAME (the caller's own too, if it is one of them)."""

    def revoke() -> int:
        with session_scope(state.engine) as session:
            return revoke_admin_tokens(session=session, name=name)

    try:
        count = await asyncio.to_thread(revoke)
    except UnknownCredentialError as error:
        raise HTTPException(404, detail=str(error)) from error
    except EnvironmentTokenError as error:
        raise HTTPException(409, detail=str(error)) from error
    await _spread(state)
    return RevokedAdminTokens(name=name, revoked=count)


async def _spread(state: AppState) -> None:
    """Make every process's cached checks stale; this one's at once in any case."""
    state.admin_tokens_seen.clear()
    try:
        await bump_credentials_revision(state.redis)
    except (RedisError, OSError) as error:
        raise HTTPException(
            503,
            detail=(
                "revoked in the database, but Redis is unreachable to tell the other API "
                f"processes ({error}): they refuse it within 5 seconds"
            ),
        ) from error
