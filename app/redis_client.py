"""Redis clients for Segflow's processes.

The async client packs commands with hiredis, as redis-py's sync client already does: the
collector sends hundreds of arguments per request, and redis-py's pure-Python packer was the
largest single cost of an append after validation.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.connection import HiredisRespSerializer
from redis.utils import HIREDIS_AVAILABLE


class _HiredisPackedConnection(aioredis.Connection):
    _serializer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        return self._serializer.pack(*args)  # type: ignore[no-any-return]


def async_redis(url: str, **options: Any) -> aioredis.Redis:
    """An asyncio client for ``url`` with the options every Segflow process uses."""
    options.setdefault("socket_connect_timeout", 2)
    options.setdefault("socket_timeout", 5)
    options.setdefault("health_check_interval", 10)
    if HIREDIS_AVAILABLE and url.startswith("redis://"):
        options["connection_class"] = _HiredisPackedConnection
    return aioredis.Redis.from_url(url, **options)
