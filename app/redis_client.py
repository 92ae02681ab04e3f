"""Redis clients for Segflow's processes.

The async client packs commands with hiredis, as redis-py's sync client already does: the
collector sends hundreds of arguments per request, and redis-py's pure-Python packer was the
largest single cost of an append after validation.
"""

from __future__ import annotations

from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import DataError, ResponseError


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
