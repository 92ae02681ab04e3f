"""Secrets that authenticate callers: sources' write keys and admin bearer tokens.

Both are random, high-entropy strings, so a plain SHA-256 is a safe way to store them: the
plaintext is returned once, when created, and never stored or logged.

The API's processes cache what they checked. A revocation therefore also bumps a revision
number in Redis (``REVISION_KEY``), which every check reads: a cache older than the revision
is reloaded, so a revoked secret fails at the very next call, in every process.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import redis.asyncio as aioredis
from redis import RedisError
from sqlmodel import Session, col, delete, select

from app.models import AdminToken, WriteKey, utcnow

REVISION_KEY = "credentials:revision"


class DuplicateNameError(ValueError):
    """A write key with that name exists already."""


class UnknownCredentialError(LookupError):
    """No write key or admin token has that name."""


class EnvironmentTokenError(ValueError):
    """The token set by SEGFLOW_ADMIN_TOKEN cannot be revoked from the database."""


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def create_write_key(*, session: Session, name: str) -> str:
    """Create a write key called ``name`` and return it; only its hash is stored."""
    name = name.strip()
    if not name:
        raise ValueError("a write key needs a name")
    existing = session.exec(select(WriteKey).where(WriteKey.name == name)).first()
    if existing is not None and existing.disabled_at is None:
        raise DuplicateNameError(f"a write key named {name!r} exists already")
    if existing is not None:  # revoked: its name is free for the source's new key
        session.delete(existing)
        session.flush()
    key = "sk_" + secrets.token_urlsafe(24)
    session.add(WriteKey(name=name, key_hash=hash_secret(key), key_prefix=key[:10]))
    session.flush()
    return key


def replace_write_key(*, session: Session, name: str) -> str:
    """Drop the key called ``name``, if any, and create a new one."""
    for row in session.exec(select(WriteKey).where(WriteKey.name == name)):
        session.delete(row)
    session.flush()
    return create_write_key(session=session, name=name)


def list_write_keys(*, session: Session) -> list[WriteKey]:
    return list(session.exec(select(WriteKey).order_by(WriteKey.id)))  # type: ignore[arg-type]


def active_write_key_hashes(*, session: Session) -> dict[str, str]:
    """``{key_hash: source name}`` for every key that is not disabled."""
    rows = session.exec(select(WriteKey).where(WriteKey.disabled_at == None))  # noqa: E711
    return {row.key_hash: row.name for row in rows}


def revoke_write_key(*, session: Session, name: str) -> WriteKey:
    """Disable the write key called ``name`` (its row stays, so the name still tells where
    stored events came from); revoking a revoked key changes nothing."""
    row = session.exec(select(WriteKey).where(WriteKey.name == name)).first()
    if row is None:
        raise UnknownCredentialError(f"no write key named {name!r}")
    if row.disabled_at is None:
        row.disabled_at = utcnow()
        session.add(row)
        session.flush()
    return row


def revoke_admin_tokens(*, session: Session, name: str) -> int:
    """Delete every admin token called ``name``; how many there were."""
    if name == BOOTSTRAP_ADMIN:
        raise EnvironmentTokenError(
            "the token set by SEGFLOW_ADMIN_TOKEN is not stored: unset or change "
            "SEGFLOW_ADMIN_TOKEN and restart Segflow's processes"
        )
    query = select(AdminToken).where(AdminToken.name == name)
    count = len(session.exec(query).all())
    if not count:
        raise UnknownCredentialError(f"no admin token named {name!r}")
    session.exec(delete(AdminToken).where(col(AdminToken.name) == name))
    session.flush()
    return count


async def credentials_revision(client: aioredis.Redis) -> int | None:
    """The revocations' revision number (None when Redis cannot say: use the SQL truth)."""
    try:
        value = await client.get(REVISION_KEY)
    except (RedisError, OSError):
        return None
    return int(value or 0)


async def bump_credentials_revision(client: aioredis.Redis) -> None:
    """Make every process's cached checks stale (after a revocation is committed)."""
    await client.incr(REVISION_KEY)


def create_admin_token(*, session: Session, name: str) -> str:
    token = "sfa_" + secrets.token_urlsafe(32)
    session.add(AdminToken(name=name, token_hash=hash_secret(token)))
    session.flush()
    return token


def has_admin_tokens(*, session: Session) -> bool:
    return session.exec(select(AdminToken.id)).first() is not None


BOOTSTRAP_ADMIN = "admin (SEGFLOW_ADMIN_TOKEN)"


def admin_token_name(*, session: Session, digest: str, bootstrap: str | None) -> str | None:
    """Whose admin token has this hash (``hash_secret``): the bootstrap token from the
    environment or a stored token's name (what the audit trail records); None for no valid
    token. By hash, so that the admin UI's session cookie, which keeps only the hash, is
    checked as a bearer token is, and a revoked token ends its sessions too."""
    if bootstrap is not None and hmac.compare_digest(digest, hash_secret(bootstrap)):
        return BOOTSTRAP_ADMIN
    query = select(AdminToken.name).where(AdminToken.token_hash == digest)
    return session.exec(query).first()
