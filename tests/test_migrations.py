"""The Alembic migrations build exactly the tables ``app.models`` declares.

A freshly migrated database is compared with ``SQLModel.metadata`` the way ``alembic revision
--autogenerate`` would compare them (tables, columns, types, nullability, server defaults,
indexes, unique constraints): a model changed without a migration, or a migration that drifts
from its model, fails here. SQLite always; PostgreSQL too when ``DATABASE_URL`` is set (in a
database of its own, created and dropped by the test).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlmodel import SQLModel

import app.models  # noqa: F401 - registers the tables on SQLModel.metadata
from app import migrate
from app.db import make_engine
from app.settings import Settings
from tests.conftest import _postgres_database

EXTERNAL_DATABASE = os.environ.get("DATABASE_URL")


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """Settings of an empty database: a SQLite file in tmp_path, or a new PostgreSQL one."""
    if request.param == "sqlite":
        yield Settings(SEGFLOW_DATA_DIR=tmp_path)
        return
    if not EXTERNAL_DATABASE:
        pytest.skip("DATABASE_URL is not set: migrations are not checked on PostgreSQL")
    for url in _postgres_database(EXTERNAL_DATABASE):
        yield Settings(SEGFLOW_DATA_DIR=tmp_path, DATABASE_URL=url)


def differences(settings: Settings) -> list[Any]:
    """What autogenerate would put in a new migration for this database (empty: nothing)."""
    engine = make_engine(settings)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": True}
            )
            return list(compare_metadata(context, SQLModel.metadata))
    finally:
        engine.dispose()


def downgrade(settings: Settings, revision: str) -> None:
    engine = make_engine(settings)
    try:
        with engine.begin() as connection:
            config = migrate.alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, revision)
    finally:
        engine.dispose()


def table_names(settings: Settings) -> set[str]:
    engine = make_engine(settings)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_the_migrated_schema_is_the_models_column_for_column(fresh_settings):
    migrate.upgrade(fresh_settings)
    assert differences(fresh_settings) == []


def test_the_migrations_create_every_table_of_the_models_and_no_other(fresh_settings):
    migrate.upgrade(fresh_settings)
    assert table_names(fresh_settings) == set(SQLModel.metadata.tables)


def test_the_migrations_downgrade_to_nothing_and_upgrade_again(fresh_settings):
    migrate.upgrade(fresh_settings)
    downgrade(fresh_settings, "base")
    assert table_names(fresh_settings) == set()

    migrate.upgrade(fresh_settings)
    assert table_names(fresh_settings) == set(SQLModel.metadata.tables)


def test_a_migration_stopped_midway_leaves_nothing_and_runs_again(tmp_path, monkeypatch):
    """A process killed during its first start's migration must restart: the tables it had
    created are rolled back with Alembic's record of them (SQLite ran each CREATE TABLE on
    its own, and the restart failed with "table ... already exists")."""
    monkeypatch.delenv("DATABASE_URL", raising=False)  # SQLite's DDL is what is at stake
    settings = Settings(SEGFLOW_DATA_DIR=tmp_path)
    assert settings.effective_database_url.startswith("sqlite")
    migrate_all = command.upgrade

    def killed_after_the_tables(config: Any, revision: str) -> None:
        migrate_all(config, revision)
        raise KeyboardInterrupt  # as a kill before the transaction commits

    monkeypatch.setattr(command, "upgrade", killed_after_the_tables)
    with pytest.raises(KeyboardInterrupt):
        migrate.upgrade(settings)
    engine = make_engine(settings)
    try:
        assert inspect(engine).get_table_names() == []
    finally:
        engine.dispose()
    monkeypatch.setattr(command, "upgrade", migrate_all)
    migrate.upgrade(settings)
    assert differences(settings) == []
