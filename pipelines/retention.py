"""Trimming what the dataflow has read: the event streams behind its recovery state, and the
failed-events store to a count.

An entry of ``events:{p}`` may go once no snapshot in the recovery store would resume before
it (a restart re-reads from its partition's resume position, ``pipelines.sources``) and it
is older than the retention window, kept for ``segflow rebuild`` and inspection. The resume
positions are read from the recovery store itself, not from the running flow: a snapshot is
there only once Bytewax wrote it, and the oldest one of a partition is the oldest position a
restart can resume from (Bytewax deletes a snapshot only after a newer one is committed).
No snapshot of a partition (a fresh or rebuilt recovery store) means it may resume from the
start: nothing of it is trimmed.

``segflow pipeline`` runs a ``StreamTrimmer`` beside the dataflow it starts, as that process
knows the recovery directory.
"""

from __future__ import annotations

import io
import logging
import pickle
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from app.streams import FAILED_EVENTS_KEY, entry_order, stream_key

SOURCE_STEP = "segmentation.events"  # the flow's input step (``get_flow``)
TRIM_EVERY_S = 5.0

log = logging.getLogger(__name__)


class _PlainUnpickler(pickle.Unpickler):
    """Reads a pickled str (the source's resume state) and refuses anything that names a
    class or function: the recovery store is read, never trusted to run code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"a resume state naming {module}.{name}")


def _resume_state(blob: bytes | None) -> str | None:
    if blob is None:
        return None
    try:
        state = _PlainUnpickler(io.BytesIO(blob)).load()
    except (pickle.UnpicklingError, EOFError, ValueError):
        return None
    return state if isinstance(state, str) else None


def _recovery_rows(recovery: Path) -> Iterator[tuple[str, bytes | None]]:
    """(partition key, pickled resume state) of every source snapshot in the store."""
    for part in sorted(recovery.glob("part-*.sqlite3")):
        with sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=5) as db:
            yield from db.execute(
                "SELECT state_key, ser_change FROM snaps WHERE step_id = ?", (SOURCE_STEP,)
            )


def oldest_resume_positions(recovery: Path) -> dict[str, str]:
    """Per stream key, the oldest entry id any snapshot in ``recovery`` resumes after. A key
    that is missing, or whose snapshot cannot be read, may resume from its start."""
    oldest: dict[str, str] = {}
    unreadable: set[str] = set()
    for key, blob in _recovery_rows(recovery):
        position = _resume_state(blob)
        if position is None:
            unreadable.add(key)
        elif key not in oldest or entry_order(position) < entry_order(oldest[key]):
            oldest[key] = position
    return {key: position for key, position in oldest.items() if key not in unreadable}


def trim_floor(resume_after: str, now_ms: int, retention_ms: int) -> str:
    """The id below which a partition's entries may go: read by every snapshot that could be
    resumed from, and older than the retention window (``now_ms``: Redis's clock)."""
    window = f"{max(now_ms - retention_ms, 0)}-0"
    return min(resume_after, window, key=entry_order)


@dataclass
class TrimReport:
    """What one pass removed, per key."""

    removed: dict[str, int]


def trim_once(
    client: redis.Redis,
    *,
    recovery: Path | None,
    partitions: int,
    retention_ms: int,
    failed_events_kept: int,
) -> TrimReport:
    """One pass: every partition's stream behind its recovery (none without ``recovery``),
    and the failed events to the newest ``failed_events_kept``."""
    removed: dict[str, int] = {}
    if recovery is not None and recovery.exists():
        positions = oldest_resume_positions(recovery)
        seconds, micros = client.time()
        now = seconds * 1_000 + micros // 1_000
        for partition in range(partitions):
            key = stream_key(partition)
            if key not in positions:
                continue  # it may resume from the start of its stream
            floor = trim_floor(positions[key], now, retention_ms)
            removed[key] = int(client.xtrim(key, minid=floor, approximate=False))
    removed[FAILED_EVENTS_KEY] = int(
        client.xtrim(FAILED_EVENTS_KEY, maxlen=failed_events_kept, approximate=False)
    )
    return TrimReport(removed)


class StreamTrimmer:
    """``trim_once`` every ``TRIM_EVERY_S`` in a thread, until the block it guards ends.
    A Redis or recovery-store error is logged and the next pass tries again: trimming late
    costs memory, never an event."""

    def __init__(
        self,
        url: str,
        *,
        recovery: Path | None,
        partitions: int,
        retention_ms: int,
        failed_events_kept: int,
        every_s: float = TRIM_EVERY_S,
    ) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=10)
        self._options: dict[str, Any] = {
            "recovery": recovery,
            "partitions": partitions,
            "retention_ms": retention_ms,
            "failed_events_kept": failed_events_kept,
        }
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stream-trimmer", daemon=True)

    def __enter__(self) -> StreamTrimmer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._client.close()

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self._every_s):
            try:
                report = trim_once(self._client, **self._options)
            except (redis.RedisError, OSError, sqlite3.Error) as error:
                if not failing:  # once per outage, not every pass
                    log.warning("retention: streams not trimmed this time: %s", error)
                failing = True
                continue
            failing = False
            trimmed = {key: n for key, n in report.removed.items() if n}
            if trimmed:
                log.debug("retention: trimmed %s", trimmed)
