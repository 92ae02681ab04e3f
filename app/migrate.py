"""Run the Alembic migrations against the configured database (``segflow migrate``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session

from app.db import make_engine, session_scope
from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def alembic_config() -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Migrate to ``revision`` in one transaction: a process killed midway leaves the
    database as it was, never tables without Alembic's record of them."""
    engine = make_engine(settings)
    if engine.dialect.name == "sqlite":
        _ddl_in_transactions(engine)
    try:
        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def _ddl_in_transactions(engine: Engine) -> None:
    """pysqlite begins a transaction only before INSERT, UPDATE and DELETE, so a migration's
    CREATE TABLE ran on its own, committed at once: a SIGKILL after it and before Alembic's
    version row left tables a restart tried to create again ("table ... already exists").
    This engine leaves transactions to SQLite and begins each itself (SQLAlchemy's recipe
    for transactional DDL on SQLite)."""

    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN")


def migrated(settings: Settings) -> None:
    """The data directory exists and the database is at the newest revision."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings)


@contextmanager
def migrated_session(settings: Settings) -> Iterator[Session]:
    """A session of an up-to-date database, committed when the block succeeds."""
    migrated(settings)
    engine = make_engine(settings)
    try:
        with session_scope(engine) as session:
            yield session
    finally:
        engine.dispose()
