"""SQL tables (SQLModel). Each table's family: a base, what the API takes, the table itself."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

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


class Destination(SQLModel, table=True):
    """A webhook that messages are sent to. Its signing secret is stored sealed (encrypted with
    the key of ``app.dispatch.secret_box``): signing needs the secret itself, so a hash would
    not do, and a database dump alone does not give it away."""

    __tablename__ = "destinations"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=100)
    kind: str = Field(max_length=20)  # email | push | generic
    url: str = Field(max_length=2000)
    sealed_secret: str = Field(sa_type=sa.Text())
    headers: dict[str, str] = Field(default_factory=dict, sa_type=sa.JSON())
    timeout_s: float
    rate_limit_per_s: float
    concurrency: int
    disabled: bool = False
    created_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))
    updated_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))


class MessageTemplate(SQLModel, table=True):
    """A message's Jinja2 sources, by field: email ``subject`` / ``text`` / ``html``, push
    ``title`` / ``body`` / ``deep_link``, generic ``body`` (a JSON document)."""

    __tablename__ = "templates"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=100)
    kind: str = Field(max_length=20)
    description: str = Field(default="", sa_type=sa.Text())
    sources: dict[str, str] = Field(default_factory=dict, sa_type=sa.JSON())
    created_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))
    updated_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))


class ShippedSeed(SQLModel, table=True):
    """What was stored from the shipped defaults, so each is stored once ever: one an operator
    deletes stays deleted, and one added by a later release is stored on its first start."""

    __tablename__ = "shipped_seeds"

    what: str = Field(primary_key=True, max_length=20)  # "template"
    name: str = Field(primary_key=True, max_length=100)
    seeded_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))


class ClusterRefit(SQLModel, table=True):
    """One cluster refit: every candidate judged, the chosen model's quality, and the model
    itself (``model``: the JSON the dataflow assigns by) when it was published."""

    __tablename__ = "cluster_refits"

    id: int | None = Field(default=None, primary_key=True)
    fitted_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))
    reason: str = Field(max_length=40)  # "schedule" | "api" | "cli" | "stream"
    algorithm: str = Field(max_length=40)
    params: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON())
    sample_size: int
    silhouette: float | None = None
    davies_bouldin: float | None = None
    calinski_harabasz: float | None = None
    outlier_share: float | None = None
    sizes: dict[str, int] = Field(default_factory=dict, sa_type=sa.JSON())  # cluster id: size
    kept: list[str] = Field(default_factory=list, sa_type=sa.JSON())  # ids a refit kept
    added: list[str] = Field(default_factory=list, sa_type=sa.JSON())
    retired: list[str] = Field(default_factory=list, sa_type=sa.JSON())
    fit_seconds: float
    candidates: list[dict[str, Any]] = Field(default_factory=list, sa_type=sa.JSON())
    model_version: int = Field(index=True)
    model: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON())


class ClusterName(SQLModel, table=True):
    """A name a marketer gave a cluster; it survives refits while the cluster keeps its id."""

    __tablename__ = "cluster_names"

    cluster_id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=200)
    renamed_by: str = Field(default="", max_length=200)
    renamed_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))
