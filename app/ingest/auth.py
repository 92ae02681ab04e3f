"""Write-key checks for the collector, served from a small in-process cache of key hashes.

The SQL table is the truth; the cache reloads when a key was revoked (the credentials'
revision in Redis moved: the revoked key fails at the next request), every few seconds anyway,
and at most once a second on an unknown key (so bad keys cannot flood the database).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time

import redis.asyncio as aioredis
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from app.credentials import active_write_key_hashes, credentials_revision, hash_secret

log = logging.getLogger(__name__)


def write_key_from_authorization(header: str | None) -> str | None:
    """The user part of ``Authorization: Basic base64(key:)``, as the Segment SDKs send it."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.split(":", 1)[0] or None


class WriteKeyCache:
    def __init__(
        self,
        engine: Engine,
        redis: aioredis.Redis,
        *,
        refresh_s: float = 5.0,
        miss_reload_s: float = 1.0,
    ):
        self._engine = engine
        self._redis = redis
        self._refresh_s = refresh_s
        self._miss_reload_s = miss_reload_s
        self._sources: dict[str, str] = {}
        self._loaded_at = float("-inf")
        self._revision: int | None = None  # the credentials' revision the cache was loaded at
        self._lock = asyncio.Lock()

    async def source_for(self, key: str) -> str | None:
        """The source name of a valid write key, else None."""
        digest = hash_secret(key)
        revision = await credentials_revision(self._redis)
        if revision is not None and revision != self._revision:
            await self._reload(revision, force=True)
        age = time.monotonic() - self._loaded_at
        if age > self._refresh_s or (digest not in self._sources and age > self._miss_reload_s):
            await self._reload(revision)
        return self._sources.get(digest)

    async def _reload(self, revision: int | None, *, force: bool = False) -> None:
        async with self._lock:
            if force and revision == self._revision:
                return  # another request reloaded at this revision while this one waited
            if not force and time.monotonic() - self._loaded_at < self._miss_reload_s:
                return  # another request reloaded while this one waited
            try:
                self._sources = await asyncio.to_thread(self._load)
            except SQLAlchemyError:
                log.exception("could not reload write keys; keeping the ones already known")
            else:
                if revision is not None:
                    self._revision = revision
            self._loaded_at = time.monotonic()

    def _load(self) -> dict[str, str]:
        with Session(self._engine) as session:
            return active_write_key_hashes(session=session)
