"""Finishing erasures in the dataflow process, once its recovery snapshots are past them.

``DELETE /api/customers/{id}`` erases at once what Redis holds and appends an ``erase`` entry
(``app.profiles.erasure``). Two things can only go later:

- The ``erase`` entry itself names the customer. It must stay while a recovery snapshot from
  before it exists: a dataflow resumed from that snapshot would hold the customer again, and
  reading the entry again is what forgets them.
- Bytewax keeps each shard's state as pickled rows in SQLite files (``recovery/part-*.sqlite3``)
  and deletes a shard's older rows when a newer snapshot of it is committed; SQLite leaves a
  deleted row's bytes in free pages (and in its write-ahead log) until they are reused.

So when the dataflow applies an ``erase`` entry, the sink notes it in ``PENDING_KEY``, and
``ErasureFinisher`` dates the note with the recovery store's commit epoch at its next pass (at
least the epoch of the sink's write: a later one only waits longer). Once ``EPOCHS_PAST`` more
epochs are committed (the shard's snapshot without the customer, and the deletion of the older
rows), the finisher: deletes what still names the customer up to the entry (events and failed
events a dataflow busy with them could not see go, the ``erase`` entry too), and their
triggers, deliveries and segment moves again (ones the dataflow wrote from events it was
applying when the erasure came, and moves their trimmed transitions list no longer named);
compacts the recovery files (``VACUUM`` with ``secure_delete``, then a truncating WAL
checkpoint); and has Redis rewrite its append-only file. A pass that cannot finish (a rewrite
already under way, a busy WAL) is tried again; the notes are in Redis, so a restarted dataflow
carries on. The finisher runs in the dataflow's process, so it reads and compacts the recovery
files through a child process (``pipelines.recovery_files``: two copies of SQLite in one
process break each other's locks).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from app.dispatch.erasure import forget_customers
from app.profiles import moves
from app.profiles.erasure import delete_failed_events, delete_naming
from app.redis_client import AOF_BUSY, async_redis, rewrite_aof
from app.streams import EVENT_FIELD, stream_key
from pipelines.recovery_files import NO_RECOVERY, committed_epoch_apart, compact_apart

log = logging.getLogger(__name__)

PENDING_KEY = "erasures:pending"  # hash: "<partition>/<entry id>" -> commit epoch when applied
UNDATED = "applied"  # a note the sink made and the finisher has not dated yet
_UNDATED_BYTES = UNDATED.encode()  # as the hash gives it back
EPOCHS_PAST = 3  # the snapshot without the customer committed, and the older rows deleted
POLL_S = 1.0


def pending_field(partition: int, entry_id: str) -> str:
    return f"{partition}/{entry_id}"


class ErasureFinisher:
    """A thread of the dataflow process that finishes the noted erasures when they are due."""

    def __init__(self, redis_url: str, partitions: int, recovery_dir: Path | None) -> None:
        self._url = redis_url
        self._partitions = partitions
        self._recovery_dir = recovery_dir
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="erasure-finisher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while True:
            stopping = self._stop.wait(POLL_S)  # a last pass when the dataflow stops
            try:
                asyncio.run(self.finish_due())
            except Exception:  # the notes stay: the next pass (or run) tries again
                log.exception("erasure: finishing erasures failed; trying again")
            if stopping:
                return

    async def finish_due(self) -> int:
        """Finish the erasures due now; return how many were finished."""
        client = async_redis(self._url)
        try:
            pending: Any = await client.hgetall(PENDING_KEY)
            if not pending:
                return 0
            epoch = committed_epoch_apart(self._recovery_dir)
            undated = {field: epoch for field, noted in pending.items() if noted == _UNDATED_BYTES}
            if undated:  # dated now: at least the epoch committed when the sink noted them
                await client.hset(PENDING_KEY, mapping=undated)
                pending.update(undated)
            due = [
                field.decode()
                for field, noted in pending.items()
                if int(noted) == NO_RECOVERY or epoch >= int(noted) + EPOCHS_PAST
            ]
            if not due:
                return 0
            for field in due:
                await self._finish(client, field)
            if self._recovery_dir is not None and not compact_apart(self._recovery_dir):
                return 0
            if await rewrite_aof(client) == AOF_BUSY:
                return 0  # begun before these deletions: the next pass asks again
            await client.hdel(PENDING_KEY, *due)
            log.info("erasure: finished %d erasures (recovery compacted, AOF rewritten)", len(due))
            return len(due)
        finally:
            await client.aclose()

    async def _finish(self, client: aioredis.Redis, field: str) -> None:
        """Everything up to the ``erase`` entry that still names its customer, the entry too,
        and their triggers and deliveries."""
        partition, entry_id = field.split("/", 1)
        rows: Any = await client.xrange(stream_key(int(partition)), min=entry_id, max=entry_id)
        if not rows:
            return  # finished before (the note outlived a pass that stopped half-way)
        customer_id = str(orjson.loads(rows[0][1][EVENT_FIELD.encode()])["customer_id"])
        ids = {customer_id}
        await delete_naming(client, ids, self._partitions, set(), upto=entry_id, erase_entries=True)
        await delete_failed_events(client, ids, upto=entry_id)
        await forget_customers(client, ids)
        await moves.sweep(client, ids)
