"""The partitioned Redis Streams source: one Bytewax source partition per stream key.

Like Bytewax's Kafka connector, progress belongs to recovery: a partition's resume state is the
id of the last entry it emitted, so a restarted dataflow reads on from exactly there, and
nothing is acknowledged on the Redis side.

The source also tells the dataflow's clocks, one per lane (see "How time works" in
``pipelines.segmentation``), as ``Tick``s:

- the live lane (events from the collector): after each read, the wall clock less
  ``LIVE_MARGIN_MS`` (events still being appended), or, while the partition is behind, the time
  Redis appended the last entry read (its id) less that margin. Event time never runs ahead of
  arrival, so no sender's clock moves it, and an empty read is the wall clock's word.
- a replay's lane: its progress markers (``app.streams.lane_markers``), read in the stream in
  their place behind the replay's events, become that lane's ticks; its end marker ends it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson
import redis
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from app.clock import now_ms
from app.events import StreamEntry
from app.streams import (
    ALIVE_KEY,
    ALIVE_TTL_S,
    EVENT_FIELD,
    LIVE,
    PROGRESS,
    REPLAY_END,
    stream_key,
)

BATCH = 500  # hundreds of items per next_batch: multi-worker runs need them (DEPENDENCY-FACTS)
IDLE_WAIT = timedelta(milliseconds=20)
IDLE_TICK_MS = 100  # how often a caught-up partition tells the wall-clock time
HEARTBEAT_MS = 1_000  # how often a partition says the dataflow runs (ALIVE_KEY)
# The live clock runs this far behind the time an event is stamped received_at and the time
# Redis appends it (a request's validation and append), so the events in between are rarely
# behind it. One that is, is a late event: it corrects what it changes.
LIVE_MARGIN_MS = 250
_MARKERS = frozenset({PROGRESS, REPLAY_END})


class StreamEvent(NamedTuple):  # tuples: made for every event, they cost least
    partition: int
    entry_id: str
    event: StreamEntry


class Tick(NamedTuple):
    """The clock of one lane of ``partition``: every event of the lane before ``at`` (or at it,
    when ``inclusive``) has been read. ``end``: the lane (a replay) is done; its customers go
    over to the live clock."""

    partition: int
    at: int
    inclusive: bool
    lane: str = LIVE
    end: bool = False


SourceItem = StreamEvent | Tick


class _StreamPartition(StatefulSourcePartition[SourceItem, str]):
    def __init__(self, url: str, partition: int, after: str, *, stop_at_end: bool) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=10)
        self._partition = partition
        self._key = stream_key(partition)
        self._after = after
        self._stop_at_end = stop_at_end
        self._awake: datetime | None = None
        self._last_idle_tick = 0
        self._live = 0  # the live lane's clock (it never goes back)
        self._last_heartbeat = 0
        # The read of the next batch is sent before this one is handed on, and its reply read
        # at the next call: the dataflow computes while Redis reads (one connection, in order).
        self._connection: Any = None
        self._asked: str | None = None  # the id the read in flight reads after

    def next_batch(self) -> Iterable[SourceItem]:
        now = now_ms()
        if now - self._last_heartbeat >= HEARTBEAT_MS:
            self._client.set(ALIVE_KEY, now, ex=ALIVE_TTL_S)
            self._last_heartbeat = now
        if self._asked != self._after:
            self._ask()
        entries = self._answer()
        if not entries:
            return self._idle()
        self._awake = None
        self._after = entries[-1][0].decode()
        self._ask()  # the next batch, read while this one is processed
        items: list[SourceItem] = []
        partition, field = self._partition, EVENT_FIELD.encode()
        for entry_id, fields in entries:
            entry = orjson.loads(fields[1] if fields[0] == field else _field(fields, field))
            kind = entry["type"]
            if kind in _MARKERS:  # a replay's progress, or its end
                end = kind == REPLAY_END
                items.append(Tick(partition, int(entry["timestamp"]), end, entry["replay"], end))
            else:
                items.append(StreamEvent(partition, entry_id.decode(), entry))
        # Behind (a full read): what Redis had appended by the last entry read; else now.
        appended = now if len(entries) < BATCH else min(now, _id_ms(entries[-1][0]))
        self._live = max(self._live, appended - LIVE_MARGIN_MS)
        items.append(Tick(partition, self._live, inclusive=True))
        return items

    def _ask(self) -> None:
        """Send the read of the entries after ``_after``; ``_answer`` reads its reply."""
        if self._connection is None:
            self._connection = self._client.connection_pool.get_connection()
        try:
            self._connection.send_command(
                "XREAD", "COUNT", BATCH, "STREAMS", self._key, self._after
            )
        except BaseException:
            self._drop()
            raise
        self._asked = self._after

    def _answer(self) -> list[Any]:
        """The entries of the read in flight (raw, as hiredis parses them)."""
        self._asked = None
        try:
            reply: Any = self._connection.read_response()
        except BaseException:
            self._drop()
            raise
        if not reply:
            return []
        if isinstance(reply, dict):  # RESP3: {stream: entries}
            return next(iter(reply.values()))
        return reply[0][1]  # type: ignore[no-any-return]

    def _drop(self) -> None:
        """Forget a connection whose replies may be out of step; the next read opens one."""
        connection, self._connection, self._asked = self._connection, None, None
        if connection is not None:
            connection.disconnect()
            self._client.connection_pool.release(connection)

    def _idle(self) -> list[SourceItem]:
        now = now_ms()
        if self._stop_at_end:
            # The end of a finished stream: the clock returns to the wall clock once, then stop.
            if self._last_idle_tick:
                raise StopIteration
            self._last_idle_tick = now
            return [Tick(self._partition, now, inclusive=True)]  # nothing more comes: no margin
        self._awake = datetime.now(UTC) + IDLE_WAIT
        if now - self._last_idle_tick < IDLE_TICK_MS:
            return []
        self._last_idle_tick = now
        self._live = max(self._live, now - LIVE_MARGIN_MS)
        return [Tick(self._partition, self._live, inclusive=True)]

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> str:
        return self._after

    def close(self) -> None:
        self._drop()
        self._client.close()


def _id_ms(entry_id: bytes) -> int:
    """The time (ms, Redis's clock) a stream entry was appended: the first part of its id."""
    return int(entry_id.split(b"-", 1)[0])


def _field(fields: list[bytes], name: bytes) -> bytes:
    """The value of ``name`` in a stream entry's flat field list."""
    for index in range(0, len(fields), 2):
        if fields[index] == name:
            return fields[index + 1]
    raise KeyError(f"a stream entry without its {name.decode()!r} field")


class RedisStreamSource(FixedPartitionedSource[SourceItem, str]):
    """Reads ``events:{0}`` .. ``events:{P-1}``; ``stop_at_end`` ends the flow once caught up
    (tests and batch replays), otherwise it follows the streams forever."""

    def __init__(self, url: str, partitions: int, *, stop_at_end: bool = False) -> None:
        self._url = url
        self._partitions = partitions
        self._stop_at_end = stop_at_end

    def list_parts(self) -> list[str]:
        return [stream_key(p) for p in range(self._partitions)]

    def build_part(self, step_id: str, for_part: str, resume_state: str | None) -> _StreamPartition:
        partition = self.list_parts().index(for_part)
        return _StreamPartition(
            self._url, partition, resume_state or "0-0", stop_at_end=self._stop_at_end
        )
