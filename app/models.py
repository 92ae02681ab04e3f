"""SQL tables (SQLModel). Each table's family: a base, what the API takes, the table itself."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class WriteKey(SQLModel, table=True):
    """A source's write key. Only its SHA-256 is stored; the key is shown once, at creation."""

    __tablename__ = "write_keys"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=200)
    key_hash: str = Field(unique=True, max_length=64)
    key_prefix: str = Field(max_length=12)  # enough to tell keys apart in a listing
    created_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))
    disabled_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))


class AdminToken(SQLModel, table=True):
    """A bearer token for the admin API and UI, stored as its SHA-256."""

    __tablename__ = "admin_tokens"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200)
    token_hash: str = Field(unique=True, max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))
