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


class RuleRow(SQLModel, table=True):
    """A rule as it stands: its current version's document. Deleted rules leave no row, but
    their versions and changes stay."""

    __tablename__ = "rules"

    id: str = Field(primary_key=True, max_length=100)
    name: str = Field(max_length=200)
    enabled: bool = True
    version: int
    source: str = Field(sa_type=sa.Text())  # the document as written (YAML, or JSON)
    media_type: str = Field(max_length=40)  # "application/yaml" | "application/json"
    created_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))
    updated_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))


class RuleVersion(SQLModel, table=True):
    """Every version of every rule, kept for rollback and audit."""

    __tablename__ = "rule_versions"
    __table_args__ = (sa.UniqueConstraint("rule_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    rule_id: str = Field(index=True, max_length=100)
    version: int
    source: str = Field(sa_type=sa.Text())
    media_type: str = Field(max_length=40)
    author: str = Field(max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))


class RuleChange(SQLModel, table=True):
    """The audit trail: who changed which rule, when, how (a unified diff). Its newest id is
    the rule set's revision: the dataflow reloads when it moves."""

    __tablename__ = "rule_changes"

    id: int | None = Field(default=None, primary_key=True)
    rule_id: str = Field(index=True, max_length=100)
    action: str = Field(max_length=20)  # create update disable enable rollback delete seed
    version: int | None = None  # the version it made current (None: deleted)
    author: str = Field(max_length=200)
    at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))
    diff: str = Field(default="", sa_type=sa.Text())
