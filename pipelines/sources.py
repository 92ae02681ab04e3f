"""The partitioned Redis Streams source: one Bytewax source partition per stream key.

Like Bytewax's Kafka connector, progress belongs to recovery: a partition's resume state is the
id of the last entry it emitted, so a restarted dataflow reads on from exactly there, and
nothing is acknowledged on the Redis side.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import redis
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from app.streams import EVENT_FIELD, stream_key

BATCH = 500  # hundreds of items per next_batch: multi-worker runs need them (DEPENDENCY-FACTS)
IDLE_WAIT = timedelta(milliseconds=20)

StreamItem = tuple[str, dict[str, Any]]  # (stream entry id, canonical event fields)


class _StreamPartition(StatefulSourcePartition[StreamItem, str]):
    def __init__(self, url: str, key: str, after: str, *, stop_at_end: bool) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=10)
        self._key = key
        self._after = after
        self._stop_at_end = stop_at_end
        self._awake: datetime | None = None

    def next_batch(self) -> Iterable[StreamItem]:
        reply: Any = self._client.xread({self._key: self._after}, count=BATCH)
        if not reply:
            if self._stop_at_end:
                raise StopIteration
            self._awake = datetime.now(UTC) + IDLE_WAIT
            return []
        self._awake = None
        entries = reply[0][1]
        self._after = entries[-1][0].decode()
        return [
            (entry_id.decode(), orjson.loads(fields[EVENT_FIELD.encode()]))
            for entry_id, fields in entries
        ]

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> str:
        return self._after

    def close(self) -> None:
        self._client.close()


class RedisStreamSource(FixedPartitionedSource[StreamItem, str]):
    """Reads ``events:{0}`` .. ``events:{P-1}``; ``stop_at_end`` ends the flow once caught up
    (tests and ``segflow replay --process``), otherwise it follows the streams forever."""

    def __init__(self, url: str, partitions: int, *, stop_at_end: bool = False) -> None:
        self._url = url
        self._partitions = partitions
        self._stop_at_end = stop_at_end

    def list_parts(self) -> list[str]:
        return [stream_key(p) for p in range(self._partitions)]

    def build_part(self, step_id: str, for_part: str, resume_state: str | None) -> _StreamPartition:
        return _StreamPartition(
            self._url, for_part, resume_state or "0-0", stop_at_end=self._stop_at_end
        )
