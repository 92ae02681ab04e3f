"""Secrets that authenticate callers: sources' write keys and admin bearer tokens.

Both are random, high-entropy strings, so a plain SHA-256 is a safe way to store them: the
plaintext is returned once, when created, and never stored or logged.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlmodel import Session, select

from app.models import AdminToken, WriteKey


class DuplicateNameError(ValueError):
    """A write key with that name exists already."""


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def create_write_key(*, session: Session, name: str) -> str:
    """Create a write key called ``name`` and return it; only its hash is stored."""
    name = name.strip()
    if not name:
        raise ValueError("a write key needs a name")
    if session.exec(select(WriteKey).where(WriteKey.name == name)).first() is not None:
        raise DuplicateNameError(f"a write key named {name!r} exists already")
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


def create_admin_token(*, session: Session, name: str) -> str:
    token = "sfa_" + secrets.token_urlsafe(32)
    session.add(AdminToken(name=name, token_hash=hash_secret(token)))
    session.flush()
    return token


def has_admin_tokens(*, session: Session) -> bool:
    return session.exec(select(AdminToken.id)).first() is not None


BOOTSTRAP_ADMIN = "admin (SEGFLOW_ADMIN_TOKEN)"


def admin_name_by_hash(*, session: Session, digest: str, bootstrap: str | None) -> str | None:
    """As ``admin_token_name``, for a token known only by its hash (``hash_secret``): what
    the admin UI's session cookie keeps, so that a revoked token ends its sessions too."""
    if bootstrap is not None and hmac.compare_digest(digest, hash_secret(bootstrap)):
        return BOOTSTRAP_ADMIN
    query = select(AdminToken.name).where(AdminToken.token_hash == digest)
    return session.exec(query).first()


def admin_token_name(*, session: Session, token: str, bootstrap: str | None) -> str | None:
    """Who the token is: the bootstrap token from the environment or a stored token's name
    (what the audit trail records); None for a token that is not valid."""
    if bootstrap is not None and hmac.compare_digest(token.encode(), bootstrap.encode()):
        return BOOTSTRAP_ADMIN
    digest = hash_secret(token)
    query = select(AdminToken.name).where(AdminToken.token_hash == digest)
    return session.exec(query).first()
