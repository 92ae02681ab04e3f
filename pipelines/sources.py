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

A caught-up partition waits inside Redis, not on a timer: its next read is an ``XREAD ...
BLOCK``, and when every partition of a worker waits, the worker waits for any of their
connections to answer (one ``poll``, bounded so ticks and heartbeats go on), so a quiet
dataflow takes an event as soon as Redis has it.
"""

from __future__ import annotations

import gc
import logging
import select
import threading
from collections.abc import Iterable
from datetime import datetime
from typing import Any, NamedTuple, cast

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

BATCH = 2_000  # hundreds of items per next_batch (multi-worker runs need them), and Redis
# spends less per event on fewer, larger reads and on the fewer profiles a larger read writes
# The longest a worker's caught-up partitions wait for Redis before Bytewax gets control back,
# in all (each partition's wait is a share of it).
IDLE_WAIT_MS = 20.0
BLOCK_MS = 1_000  # a caught-up partition's read waits in Redis this long at most, then again
IDLE_TICK_MS = 100  # how often a caught-up partition tells the wall-clock time
HEARTBEAT_MS = 1_000  # how often a partition says the dataflow runs (ALIVE_KEY)
# The live clock runs this far behind the time an event is stamped received_at and the time
# Redis appends it (a request's validation and append), so the events in between are rarely
# behind it. One that is, is a late event: it corrects what it changes.
LIVE_MARGIN_MS = 250
_MARKERS = frozenset({PROGRESS, REPLAY_END})
MALFORMED = "malformed"  # an entry the source could not read (``malformed``): never in a stream
MALFORMED_SHOWN = 4_096  # characters of it kept in failed events


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


log = logging.getLogger(__name__)


class _Workers:
    """The partitions each Bytewax worker (a thread) of this process reads: the caught-up
    partitions of one worker wait for Redis together, as Bytewax calls them one after another
    on the worker's thread."""

    def __init__(self) -> None:
        self._local = threading.local()

    def partitions(self) -> list[_StreamPartition]:
        """The calling worker's partitions."""
        found: list[_StreamPartition] | None = getattr(self._local, "partitions", None)
        if found is None:
            found = self._local.partitions = []
        return found


class _StreamPartition(StatefulSourcePartition[SourceItem, str]):
    def __init__(
        self, url: str, partition: int, after: str, *, stop_at_end: bool, workers: _Workers
    ) -> None:
        self._client = redis.Redis.from_url(
            url, socket_timeout=10, client_name=f"segflow-source-{partition}"
        )
        self._partition = partition
        self._key = stream_key(partition)
        self._after = after
        self._stop_at_end = stop_at_end
        self._workers = workers
        self._worker: list[_StreamPartition] | None = None  # the partitions read beside it
        self._last_idle_tick = 0
        self._live = 0  # the live lane's clock (it never goes back)
        self._last_heartbeat = 0
        # The read of the next batch is sent before this one is handed on, and its reply read
        # at the next call: the dataflow computes while Redis reads (one connection, in order).
        self._connection: Any = None
        self._asked: str | None = None  # the id the read in flight reads after
        # The read in flight is a caught-up partition's XREAD BLOCK: its reply comes when an
        # entry does (or after BLOCK_MS), and nothing else is sent on the connection before.
        self._blocking = False

    def next_batch(self) -> Iterable[SourceItem]:
        if self._worker is None:  # on the worker's thread, where Bytewax calls it
            self._worker = self._workers.partitions()
            self._worker.append(self)
        if self._worker[0] is self:  # once a round of the worker's partitions
            collect_between_reads()
        now = now_ms()
        if now - self._last_heartbeat >= HEARTBEAT_MS:
            self._client.set(ALIVE_KEY, now, ex=ALIVE_TTL_S)
            self._last_heartbeat = now
        if self._asked != self._after:
            self._ask()
        blocking = self._blocking
        try:
            if blocking and not self._replied():
                return self._idle()
            entries = self._answer()
        except redis.ConnectionError as error:
            if not blocking:
                raise
            # Dropped while waiting (a restart, a killed client): asked again on a new one.
            log.warning("%s: connection lost while waiting for entries (%s)", self._key, error)
            self._drop()
            return self._idle()
        if not entries:
            if not self._stop_at_end:  # a finished stream's run must see its end: no wait
                self._ask(block=True)
            return self._idle()
        self._after = entries[-1][0].decode()
        self._ask()  # the next batch, read while this one is processed
        items: list[SourceItem] = []
        partition, field = self._partition, EVENT_FIELD.encode()
        for entry_id, fields in entries:
            try:
                entry = orjson.loads(fields[1] if fields[0] == field else _field(fields, field))
                kind = entry["type"]
                if kind in _MARKERS:  # a replay's progress, or its end
                    end = kind == REPLAY_END
                    at = int(entry["timestamp"])
                    items.append(Tick(partition, at, end, entry["replay"], end))
                    continue
                if entry["customer_id"].__class__ is not str:
                    raise TypeError("its customer_id is not text")
                int(entry["timestamp"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                entry = malformed(partition, entry_id, fields, error)
            items.append(StreamEvent(partition, entry_id.decode(), entry))
        # Behind (a full read): what Redis had appended by the last entry read; else now.
        appended = now if len(entries) < BATCH else min(now, _id_ms(entries[-1][0]))
        self._live = max(self._live, appended - LIVE_MARGIN_MS)
        items.append(Tick(partition, self._live, inclusive=True))
        return items

    def _ask(self, *, block: bool = False) -> None:
        """Send the read of the entries after ``_after`` (``block``: waiting in Redis for the
        first one); ``_answer`` reads its reply."""
        if self._connection is None:
            self._connection = self._client.connection_pool.get_connection()
        wait = ("BLOCK", BLOCK_MS) if block else ()
        try:
            self._connection.send_command(
                "XREAD", "COUNT", BATCH, *wait, "STREAMS", self._key, self._after
            )
        except BaseException:
            self._drop()
            raise
        self._asked, self._blocking = self._after, block

    def _replied(self) -> bool:
        """Whether the blocking read's reply is here. When every partition of this worker is
        waiting, first wait for any of their connections to answer, for this partition's
        share of ``IDLE_WAIT_MS``: Bytewax calls the next one after, then this one again."""
        if self._connection.can_read(timeout=0):
            return True
        worker = self._worker or [self]
        if not all(partition._blocking for partition in worker):
            return False  # another one has entries to hand on first
        answers = select.poll()
        for partition in worker:
            # redis-py has no public way to wait on several connections: their sockets
            answers.register(partition._connection._sock, select.POLLIN)
        answers.poll(IDLE_WAIT_MS / len(worker))
        return bool(self._connection.can_read(timeout=0))

    def _answer(self) -> list[Any]:
        """The entries of the read in flight (raw, as hiredis parses them)."""
        self._asked = None
        try:
            reply: Any = self._connection.read_response()
        except BaseException:
            self._drop()
            raise
        self._blocking = False
        if not reply:  # none, or a blocking read's time was up
            return []
        if isinstance(reply, dict):  # RESP3: {stream: entries}
            return next(iter(reply.values()))
        return reply[0][1]  # type: ignore[no-any-return]

    def _drop(self) -> None:
        """Forget a connection whose replies may be out of step; the next read opens one."""
        connection, self._connection, self._asked = self._connection, None, None
        self._blocking = False
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
        if now - self._last_idle_tick < IDLE_TICK_MS:
            return []
        self._last_idle_tick = now
        self._live = max(self._live, now - LIVE_MARGIN_MS)
        return [Tick(self._partition, self._live, inclusive=True)]

    def next_awake(self) -> datetime | None:
        return None  # a caught-up partition waits in ``_replied``, for Redis, not a timer

    def snapshot(self) -> str:
        return self._after

    def close(self) -> None:
        if self._worker is not None and self in self._worker:
            self._worker.remove(self)
        self._drop()
        self._client.close()


# The flow's process collects its young objects between reads, once this many were allocated
# (net); the older generations as often as the collector's own thresholds say.
YOUNG_COLLECTED = 50_000


def collect_between_reads() -> None:
    """Collect garbage now if enough was allocated since the last time: called between a
    worker's reads, when the last read's items (thousands of events, their records and
    outputs) are gone, so a collection traverses only what survives. Python's own collector
    (its threshold set high by the flow, a backstop) would run in the middle of a read and
    traverse all of them: about three times the collector's time catching up."""
    young, middle, old = gc.get_count()
    if young < YOUNG_COLLECTED:
        return
    _, middle_every, old_every = gc.get_threshold()  # escalating as Python's collector does
    generation = 0
    if middle >= middle_every:
        generation = 2 if old >= old_every else 1
    gc.collect(generation)


def _id_ms(entry_id: bytes) -> int:
    """The time (ms, Redis's clock) a stream entry was appended: the first part of its id."""
    return int(entry_id.split(b"-", 1)[0])


def malformed(
    partition: int, entry_id: bytes, fields: list[bytes], error: Exception
) -> StreamEntry:
    """A stream entry the flow cannot read as one of its own (not JSON, no type, a customer id
    that is not text: nothing Segflow writes, but whoever can write Redis can): handed on as
    a ``MALFORMED`` entry, which the shard keeps in failed events (``Unprocessable``) instead of
    the flow stopping on it, and stopping on it again when restarted."""
    shown = b" ".join(fields).decode("utf-8", "replace")
    entry: dict[str, Any] = {
        "type": MALFORMED,
        "customer_id": "",
        "timestamp": 0,
        "message_id": f"entry:{partition}:{entry_id.decode()}",
        "raw": shown[:MALFORMED_SHOWN],
        "error": f"not an entry the dataflow can read: {type(error).__name__}: {error}"[:500],
    }
    return cast(StreamEntry, entry)


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
        self._workers = _Workers()

    def list_parts(self) -> list[str]:
        return [stream_key(p) for p in range(self._partitions)]

    def build_part(self, step_id: str, for_part: str, resume_state: str | None) -> _StreamPartition:
        partition = self.list_parts().index(for_part)
        return _StreamPartition(
            self._url,
            partition,
            resume_state or "0-0",
            stop_at_end=self._stop_at_end,
            workers=self._workers,
        )
