"""Run the Alembic migrations against the configured database (``segflow migrate``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlmodel import Session

from app.db import make_engine, session_scope
from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def alembic_config() -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    engine = make_engine(settings)
    try:
        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()


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
