"""SQL engine and sessions: PostgreSQL from ``DATABASE_URL``, else a SQLite file in the data dir."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool
from sqlmodel import Session, create_engine

from app.settings import Settings

T = TypeVar("T")


def make_engine(settings: Settings, *, pooled: bool = True) -> Engine:
    """The engine of the configured database; ``pooled=False`` for a process that only looks
    now and then (every connection is closed after use)."""
    url = settings.effective_database_url
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            **({} if pooled else {"poolclass": NullPool}),
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if not pooled:
        return create_engine(url, poolclass=NullPool)
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API processes read while another writes; foreign keys are off by default.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits when the block succeeds and rolls back when it raises."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


async def to_the_end(work: Callable[..., T], *args: Any) -> T:
    """``work(*args)`` in a thread, as ``asyncio.to_thread``; but when the awaiting task is
    cancelled (a process shutting down), the thread is waited for before the cancellation goes
    on: a thread cannot be stopped, and one holding a connection of an engine disposed under it
    gives it back to a pool nobody closes (psycopg then warns, at some later collection)."""
    running = asyncio.ensure_future(asyncio.to_thread(work, *args))
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        await asyncio.wait([running])
        with suppress(Exception):
            running.result()
        raise
