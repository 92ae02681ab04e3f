"""Redis clients for Segflow's processes.

The async client packs commands with hiredis, as redis-py's sync client already does: the
collector sends hundreds of arguments per request, and redis-py's pure-Python packer was the
largest single cost of an append after validation.

A process that starts while Redis is down or still loading its data waits for it quietly
(``wait_until_ready``): one log line, no traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import hiredis
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, BusyLoadingError, DataError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

log = logging.getLogger(__name__)


class _HiredisPackedConnection(aioredis.Connection):
    def pack_command(self, *args: Any) -> list[bytes]:
        name = args[0]
        if isinstance(name, str):  # "CONFIG GET" is sent as two words, as redis-py does
            name = name.encode()
        if b" " in name:
            args = (*name.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as error:  # an argument hiredis cannot encode: redis-py's own error
            raise DataError(str(error)) from error


def async_redis(url: str, **options: Any) -> aioredis.Redis:
    """An asyncio client for ``url`` with the options every Segflow process uses."""
    options.setdefault("socket_connect_timeout", 2)
    options.setdefault("socket_timeout", 5)
    options.setdefault("health_check_interval", 10)
    if url.startswith("redis://"):  # TLS and unix sockets keep redis-py's own classes
        options["connection_class"] = _HiredisPackedConnection
    return aioredis.Redis.from_url(url, **options)


# What ``rewrite_aof`` found: Redis rewrites its append-only file now (or once a save under way
# ends: ``started``); a rewrite was already under way, begun before what was just deleted, so
# another is needed after it (``busy``); the server keeps no append-only file (``off``); or it
# refuses CONFIG / BGREWRITEAOF, as managed services do (``unavailable``: the operator rewrites
# it, see the README's erasure section).
AOF_STARTED, AOF_BUSY, AOF_OFF, AOF_UNAVAILABLE = "started", "busy", "off", "unavailable"


async def rewrite_aof(client: aioredis.Redis) -> str:
    """Ask Redis to rewrite its append-only file from what it holds now, so deleted data
    leaves the file too (it still holds the commands that wrote it). Never raises for a
    server that refuses: erasure in Redis itself is done either way."""
    try:
        config: Any = await client.config_get("appendonly")
        if _text(config.get(b"appendonly", config.get("appendonly", ""))) != "yes":
            return AOF_OFF
        await client.bgrewriteaof()
    except ResponseError as error:
        return AOF_BUSY if "already in progress" in str(error) else AOF_UNAVAILABLE
    return AOF_STARTED


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def masked_url(url: str) -> str:
    """``url`` fit for a log line or a message: its password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


_WAIT_S = 0.5


class _WaitLog:
    """One log line each time the reason to wait changes (unreachable, then loading), and one
    when Redis is ready: a restart of Redis reads as two or three lines, not tracebacks."""

    def __init__(self, who: str, url: str) -> None:
        self._who = who
        self._url = masked_url(url)
        self._reason = ""

    def unready(self, error: Exception) -> None:
        if isinstance(error, AuthenticationError):  # waiting would not help: say it and stop
            raise error
        reason = (
            "is loading its data"
            if isinstance(error, BusyLoadingError)
            else f"is unreachable ({error})"
        )
        if reason.split(" (")[0] != self._reason.split(" (")[0]:
            log.warning("%s: Redis at %s %s; waiting for it", self._who, self._url, reason)
        self._reason = reason

    def ready(self) -> None:
        if self._reason:
            log.warning("%s: Redis at %s is ready", self._who, self._url)


_UNREADY = (RedisConnectionError, RedisTimeoutError, OSError)  # BusyLoadingError among them


# A probe sees each answer (LOADING) rather than retrying it.
_PROBE: dict[str, Any] = {"socket_connect_timeout": 2, "socket_timeout": 5}


async def wait_until_ready(url: str, *, who: str, stop: asyncio.Event | None = None) -> bool:
    """Return once the Redis at ``url`` answers (it may be starting, restarting or loading its
    append-only file), saying so in a log line or two, never a traceback; False if ``stop``
    was set first. A wrong password raises ``AuthenticationError`` at once."""
    waiting = _WaitLog(who, url)
    client = aioredis.Redis.from_url(url, retry=AsyncRetry(NoBackoff(), 0), **_PROBE)
    try:
        while stop is None or not stop.is_set():
            try:
                await client.ping()
            except _UNREADY as error:
                waiting.unready(error)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for((stop or asyncio.Event()).wait(), _WAIT_S)
                continue
            waiting.ready()
            return True
        return False
    finally:
        await client.aclose()


def wait_until_ready_sync(url: str, *, who: str) -> None:
    """``wait_until_ready`` for a process without an event loop (``segflow pipeline``)."""
    waiting = _WaitLog(who, url)
    client = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **_PROBE)
    try:
        while True:
            try:
                client.ping()
            except _UNREADY as error:
                waiting.unready(error)
                time.sleep(_WAIT_S)
                continue
            waiting.ready()
            return
    finally:
        client.close()
