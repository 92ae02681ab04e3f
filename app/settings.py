"""The one ``Settings`` object: every knob Segflow reads from the environment."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.durations import parse_duration_ms

DurationMs = Annotated[int, BeforeValidator(parse_duration_ms)]
MIN_ADMIN_TOKEN_CHARS = 16  # a guessable bootstrap token opens the whole admin API


class Settings(BaseSettings):
    """Read from the environment (names as in the contract of DESIGN.md).

    ``REDIS_URL`` and ``DATABASE_URL`` unset mean the embedded defaults: a real redis-server
    started by Segflow and a SQLite file, both under ``SEGFLOW_DATA_DIR``.
    """

    # hide_input_in_errors: a refused value may be a secret (a token, a URL with a password)
    model_config = SettingsConfigDict(
        extra="ignore", populate_by_name=True, hide_input_in_errors=True
    )

    redis_url: str | None = Field(default=None, alias="REDIS_URL")
    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    data_dir: Path = Field(default=Path(".segflow"), alias="SEGFLOW_DATA_DIR")
    admin_token: SecretStr | None = Field(default=None, alias="SEGFLOW_ADMIN_TOKEN")
    partitions: int = Field(default=4, ge=1, le=4096, alias="SEGFLOW_PARTITIONS")
    allowed_lateness_ms: DurationMs = Field(default=300_000, alias="SEGFLOW_ALLOWED_LATENESS")
    allow_private_destinations: bool = Field(
        default=False, alias="SEGFLOW_ALLOW_PRIVATE_DESTINATIONS"
    )
    # Fernet key(s) sealing destinations' signing secrets, comma-separated, newest first (it
    # seals; all open). Unset: a key generated once in SEGFLOW_DATA_DIR/secret.key. Set it when
    # processes on several hosts share one database.
    secret_key: SecretStr | None = Field(default=None, alias="SEGFLOW_SECRET_KEY")
    # How long a messageId is remembered to acknowledge SDK retries without storing twice.
    dedup_window_s: int = Field(default=86_400, ge=60, alias="SEGFLOW_DEDUP_WINDOW_S")
    api_workers: int = Field(default=0, ge=0, alias="SEGFLOW_API_WORKERS")
    # A request's body must come within these: each part after the one before, all of it
    # after the request's start (a client trickling its body holds no connection for long).
    body_idle_timeout_s: float = Field(
        default=10.0, gt=0, le=3600, alias="SEGFLOW_BODY_IDLE_TIMEOUT_S"
    )
    # How often each segment's size is recorded for its history (GET .../history).
    segment_history_interval_s: int = Field(
        default=60, ge=1, le=3600, alias="SEGFLOW_SEGMENT_HISTORY_INTERVAL_S"
    )
    body_timeout_s: float = Field(default=60.0, gt=0, le=3600, alias="SEGFLOW_BODY_TIMEOUT_S")
    # How often the API refits the cluster model on a sample of the profiles (0: never; a
    # refit is skipped while there are too few profiles). One API process runs each.
    cluster_refit_interval_s: int = Field(
        default=3600, ge=0, le=30 * 86_400, alias="SEGFLOW_CLUSTER_REFIT_INTERVAL_S"
    )
    # How clusters are kept: "batch" (periodic refits on a sample), "stream" (updated from the
    # feature snapshots as they come, and refitted too), "off" (no cluster is assigned).
    clustering: Literal["batch", "stream", "off"] = Field(
        default="batch", alias="SEGFLOW_CLUSTERING"
    )
    # With "stream": how often the stream clusterer publishes its centres (seconds), and how
    # many recent snapshots a centre follows (a newer snapshot weighs 1/N of it at least).
    cluster_stream_interval_s: int = Field(
        default=300, ge=1, le=86_400, alias="SEGFLOW_CLUSTER_STREAM_INTERVAL_S"
    )
    cluster_stream_memory: int = Field(
        default=10_000, ge=100, le=10_000_000, alias="SEGFLOW_CLUSTER_STREAM_MEMORY"
    )
    # How often the dataflow snapshots its state for recovery: after a crash it re-reads at
    # most this much of the streams.
    snapshot_interval_s: int = Field(default=2, ge=1, alias="SEGFLOW_SNAPSHOT_INTERVAL_S")
    # Processes the dataflow runs as (`segflow pipeline`), one per core to give it: each reads,
    # computes and writes its own partitions (threads of one process share one interpreter).
    pipeline_processes: int = Field(default=1, ge=1, le=64, alias="SEGFLOW_PIPELINE_PROCESSES")
    # How long an event stays in its stream after the dataflow's recovery state has passed it:
    # what `segflow rebuild` can rebuild from. Each retained event costs Redis memory (README,
    # "Retention and memory").
    stream_retention_ms: DurationMs = Field(default=86_400_000, alias="SEGFLOW_STREAM_RETENTION")
    # How often `segflow pipeline` trims the streams (and the dispatcher its log).
    trim_interval_s: int = Field(default=5, ge=1, alias="SEGFLOW_TRIM_INTERVAL_S")
    # The newest failed events kept (the store is a stream; older ones are trimmed).
    failed_events_kept: int = Field(default=100_000, ge=1, alias="SEGFLOW_FAILED_EVENTS_KEPT")
    # How long a finished delivery (and a dead letter) stays in the delivery log; acknowledged
    # triggers are kept as long as events (SEGFLOW_STREAM_RETENTION).
    delivery_retention_ms: DurationMs = Field(
        default=30 * 86_400_000, alias="SEGFLOW_DELIVERY_RETENTION"
    )

    @field_validator("admin_token")
    @classmethod
    def _admin_token_strong_enough(cls, value: SecretStr | None) -> SecretStr | None:
        """Refuse a short or empty SEGFLOW_ADMIN_TOKEN (empty, no token would be generated
        either: the operator was locked out without a word). The message never shows it."""
        if value is None:
            return None
        length = len(value.get_secret_value().strip())
        if length == 0:
            raise ValueError(
                "is set but empty: unset it (a token is then generated "
                f"and printed at the first start) or set one of at least "
                f"{MIN_ADMIN_TOKEN_CHARS} characters"
            )
        if length < MIN_ADMIN_TOKEN_CHARS:
            raise ValueError(
                f"has {length} characters; use at least "
                f"{MIN_ADMIN_TOKEN_CHARS} (e.g. the output of `openssl rand -hex 32`)"
            )
        return value

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "segflow.db"

    @property
    def effective_database_url(self) -> str:
        """The SQLAlchemy URL: ``DATABASE_URL`` with a driver named, else the SQLite file."""
        if not self.database_url:
            return f"sqlite:///{self.sqlite_path.resolve()}"
        url = self.database_url
        for plain in ("postgresql://", "postgres://"):
            if url.startswith(plain):
                return "postgresql+psycopg://" + url[len(plain) :]
        return url

    @property
    def effective_api_workers(self) -> int:
        if self.api_workers:
            return self.api_workers
        return max(1, min(os.cpu_count() or 1, 4))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
