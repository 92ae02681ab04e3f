"""``segflow replay``: historical events from a file, through the collector's validation, into the
event streams in event-time order.

Readers turn each row into a Segment-spec message with a messageId derived from the row, so
replaying the same file twice stores nothing twice. Rows are validated as they stream in, sorted
by event time in bounded chunks on disk, merged, and appended in pipelined batches: a file of
millions of rows never sits in memory whole.

A replay is a lane of its own: its events carry its id (``replay``), and after each batch every
partition is told how far in event time the replay has come, then that it ended
(``app.streams.lane_markers``). The dataflow fires its customers' deadlines by that progress,
never by the wall clock or by other traffic, so replays and backfills run beside live events
without disturbing them.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import heapq
import io
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

import orjson
import redis

from app.clock import now_ms
from app.events import InvalidMessage, canonical_fields
from app.ingest.service import FailedEvent, raw_text
from app.streams import (
    APPEND_SCRIPT,
    EVENT_FIELD,
    FAILED_EVENTS_KEY,
    SerializedEvent,
    lane_markers,
    plan_appends,
    stored_flags,
)

Format = Literal["segment", "retailrocket", "rees46"]
FORMATS: tuple[str, ...] = ("segment", "retailrocket", "rees46")

SORT_CHUNK_ROWS = 200_000
APPEND_BATCH = 500

RETAILROCKET_EVENTS = {
    "view": "Product Viewed",
    "addtocart": "Product Added",
    "transaction": "Order Completed",
}
REES46_EVENTS = {
    "view": "Product Viewed",
    "cart": "Product Added",
    "remove_from_cart": "Product Removed",
    "purchase": "Order Completed",
}


class ReplayError(RuntimeError):
    """The file cannot be replayed at all (missing, unknown layout)."""


@dataclass
class ReplaySummary:
    rows: int = 0
    accepted: int = 0
    duplicates: int = 0
    failed: int = 0
    reasons: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class Row:
    """One row of the file as a Segment message, or the reason it could not become one."""

    line: int
    message: dict[str, Any] | None
    raw: str
    error: str | None = None


def _open_text(path: Path) -> IO[str]:
    # A byte that is not UTF-8 becomes a lone surrogate instead of stopping the whole file;
    # the row holding it is then refused on its own (see _undecodable). A BOM is skipped.
    if path.suffix == ".gz":
        return io.TextIOWrapper(
            gzip.open(path, "rb"), encoding="utf-8-sig", errors="surrogateescape", newline=""
        )
    return path.open("r", encoding="utf-8-sig", errors="surrogateescape", newline="")


_UNDECODABLE = re.compile("[\udc80-\udcff]")


def _undecodable(text: str) -> bool:
    return _UNDECODABLE.search(text) is not None


def _printable(text: str) -> str:
    """``text`` with undecodable bytes shown as U+FFFD, so it can be stored and shown."""
    return _UNDECODABLE.sub("\ufffd", text)


def _row_id(prefix: str, raw: str) -> str:
    return f"{prefix}-{hashlib.blake2b(raw.encode(), digest_size=12).hexdigest()}"


def detect_format(path: Path) -> Format:
    """From the name (``.jsonl``, ``.json``) or the CSV header."""
    name = path.name.removesuffix(".gz")
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "segment"
    with _open_text(path) as handle:
        header = handle.readline(4096).strip().lower()
    columns = {column.strip() for column in header.split(",")}
    if {"visitorid", "event", "itemid"} <= columns:
        return "retailrocket"
    if {"event_time", "event_type", "product_id", "user_id"} <= columns:
        return "rees46"
    raise ReplayError(
        f"{path}: cannot tell the format from its name or header; pass --format "
        + "|".join(FORMATS)
    )


def read_segment(path: Path) -> Iterator[Row]:
    """One Segment-spec message per line (as Segment's own exports write them)."""
    with _open_text(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            text = line.strip()
            if not text:
                continue
            if _undecodable(text):
                yield Row(line_no, None, _printable(text), f"line {line_no}: not valid UTF-8")
                continue
            try:
                message = orjson.loads(text)
            except orjson.JSONDecodeError as error:
                yield Row(line_no, None, text, f"line {line_no}: not JSON ({error})")
                continue
            if not isinstance(message, dict):
                yield Row(line_no, None, text, f"line {line_no}: not a JSON object")
                continue
            if "messageId" not in message:
                message["messageId"] = _row_id("replay", text)
            yield Row(line_no, message, text)


def _iso_from_ms(text: str) -> str:
    return datetime.fromtimestamp(int(text) / 1000, tz=UTC).isoformat()


def read_retailrocket(path: Path) -> Iterator[Row]:
    """RetailRocket's events.csv: timestamp (ms), visitorid, event, itemid, transactionid.

    A transaction has one row per item; all rows of one transaction become one
    ``Order Completed`` (its messageId is the transaction's), so later rows count as duplicates.
    """
    return _read_csv(path, _retailrocket_message)


def _retailrocket_message(record: dict[str, Any], raw: str) -> dict[str, Any]:
    name = RETAILROCKET_EVENTS[record["event"]]
    properties: dict[str, Any] = {"product_id": record["itemid"]}
    message_id = _row_id("rr", raw)
    if name == "Order Completed":
        order = record.get("transactionid") or ""
        properties = {"order_id": order, "products": [{"product_id": record["itemid"]}]}
        if order:
            message_id = f"rr-order-{record['visitorid']}-{order}"
    return {
        "type": "track",
        "userId": record["visitorid"],
        "event": name,
        "timestamp": _iso_from_ms(record["timestamp"]),
        "properties": properties,
        "messageId": message_id,
    }


def read_rees46(path: Path) -> Iterator[Row]:
    """REES46's e-commerce behaviour CSV: event_time, event_type, product_id, category_id,
    category_code, brand, price, user_id, user_session."""
    return _read_csv(path, _rees46_message)


def _rees46_message(record: dict[str, Any], raw: str) -> dict[str, Any]:
    name = REES46_EVENTS[record["event_type"]]
    price = float(record["price"]) if record.get("price") else None
    product: dict[str, Any] = {
        "product_id": record["product_id"],
        "category_id": record.get("category_id") or None,
        "category": record.get("category_code") or None,
        "brand": record.get("brand") or None,
        "price": price,
        "quantity": 1,
    }
    properties = dict(product)
    if name == "Order Completed":
        properties = {"products": [product], "revenue": price}
    when = record["event_time"].strip().removesuffix(" UTC").replace(" ", "T")
    return {
        "type": "track",
        "userId": record["user_id"],
        "event": name,
        "timestamp": when + ("Z" if when[-6] not in "+-" else ""),
        "properties": properties,
        "context": {"session_id": record.get("user_session") or None},
        "messageId": _row_id("rees46", raw),
    }


def _read_csv(
    path: Path, to_message: Callable[[dict[str, Any], str], dict[str, Any]]
) -> Iterator[Row]:
    """Each CSV record through ``to_message``; a record it cannot map becomes an error row."""
    with _open_text(path) as handle:
        reader = csv.DictReader(handle)
        for record in reader:
            line_no, raw, problem = _csv_row(reader, record)
            if problem:
                yield Row(line_no, None, raw, problem)
                continue
            try:
                message = to_message(record, raw)
            except (KeyError, ValueError, TypeError, IndexError, OverflowError) as error:
                yield Row(line_no, None, raw, f"line {line_no}: {_row_problem(error)}")
                continue
            yield Row(line_no, message, raw)


def _csv_row(reader: csv.DictReader[str], record: dict[str, Any]) -> tuple[int, str, str | None]:
    """The row's physical line (blank lines are skipped, so not a count), its text, and a
    problem that stops it before mapping: bytes that are not UTF-8."""
    raw = ",".join(str(value) for value in record.values())
    line_no = reader.line_num
    if _undecodable(raw):
        return line_no, _printable(raw), f"line {line_no}: not valid UTF-8"
    return line_no, raw, None


def _row_problem(error: Exception) -> str:
    if isinstance(error, KeyError):
        return f"unknown value or missing column {error}"
    return str(error)


READERS: dict[str, Callable[[Path], Iterator[Row]]] = {
    "segment": read_segment,
    "retailrocket": read_retailrocket,
    "rees46": read_rees46,
}


class _SortedSpill:
    """Event-time order over any number of rows: sorted chunks on disk, merged lazily."""

    def __init__(self, directory: Path, chunk_rows: int) -> None:
        self._directory = directory
        self._chunk_rows = chunk_rows
        self._buffer: list[tuple[int, bytes]] = []
        self._chunks: list[Path] = []

    def add(self, event: dict[str, Any]) -> None:
        """``event``: the canonical fields (``app.events.canonical_fields``)."""
        # orjson's bytes keep their whole output buffer (about 4 KB) however short the JSON;
        # a compact copy keeps a chunk of 200,000 events at tens of MB instead of GBs.
        compact = memoryview(orjson.dumps(event)).tobytes()
        self._buffer.append((event["timestamp"], compact))
        if len(self._buffer) >= self._chunk_rows:
            self._spill()

    def _spill(self) -> None:
        self._buffer.sort(key=lambda item: item[0])
        path = self._directory / f"chunk-{len(self._chunks):05d}.jsonl"
        with path.open("wb") as handle:
            for _, payload in self._buffer:
                handle.write(payload + b"\n")
        self._chunks.append(path)
        self._buffer = []

    def __iter__(self) -> Iterator[tuple[int, SerializedEvent]]:
        """(event time, event), in event-time order."""
        if self._buffer:
            self._spill()
        files = [path.open("rb") for path in self._chunks]
        try:
            streams = [(_read_spilled(line) for line in handle) for handle in files]
            yield from heapq.merge(*streams, key=lambda item: item[0])
        finally:
            for handle in files:
                handle.close()


def _read_spilled(line: bytes) -> tuple[int, SerializedEvent]:
    payload = line.rstrip(b"\n")
    fields = orjson.loads(payload)
    return fields["timestamp"], SerializedEvent(
        fields["customer_id"], fields["message_id"], payload, fields["source"]
    )


def replay_file(
    path: Path,
    *,
    client: redis.Redis,
    partitions: int,
    dedup_ttl_s: int,
    file_format: Format | None = None,
    on_progress: Callable[[int], None] | None = None,
    chunk_rows: int = SORT_CHUNK_ROWS,
    rate: float | None = None,
) -> ReplaySummary:
    """Replay ``path`` into the event streams; ``on_progress`` gets the count of rows read;
    ``rate``: append at most that many events per second."""
    if not path.is_file():
        raise ReplayError(f"{path}: no such file")
    file_format = file_format or detect_format(path)
    # messageIds are deduplicated per source: one per format, not per file name, so the same
    # rows from a renamed or decompressed copy are stored once; failed rows name the file
    source = f"replay:{file_format}"
    failed_source = f"replay:{path.name}"
    lane = replay_lane(path)
    received_at = now_ms()
    summary = ReplaySummary()
    script = client.register_script(APPEND_SCRIPT)
    failed: list[FailedEvent] = []

    def fail(reason: str, raw: str) -> None:
        summary.failed += 1
        summary.reasons[reason.split(": ", 1)[-1][:120]] += 1
        failed.append(FailedEvent(received_at, reason, failed_source, raw))
        if len(failed) >= APPEND_BATCH:
            _flush_failed(client, failed)

    with tempfile.TemporaryDirectory(prefix="segflow-replay-") as scratch:
        spill = _SortedSpill(Path(scratch), chunk_rows)
        for row in READERS[file_format](path):
            summary.rows += 1
            if on_progress is not None and summary.rows % 10_000 == 0:
                on_progress(summary.rows)
            if row.message is None:
                fail(row.error or "unreadable row", row.raw)
                continue
            try:
                fields = canonical_fields(row.message, received_at=received_at, source=source)
            except InvalidMessage as error:
                fail(f"line {row.line}: {error}", raw_text(row.message))
            else:
                fields["replay"] = lane
                spill.add(fields)
        _flush_failed(client, failed)
        if on_progress is not None:
            on_progress(summary.rows)

        batch: list[SerializedEvent] = []
        appended = 0  # batches appended: each is followed by the lane's progress marker
        sent = 0  # events appended
        # at ``rate``, batches of a tenth of a second's events, each sent when it is due
        size = APPEND_BATCH if rate is None else max(1, min(APPEND_BATCH, int(rate / 10)))
        started = time.monotonic()
        for at, event in spill:
            if rate is not None and not batch:  # the next one's first event: wait till due
                time.sleep(max(0.0, started + sent / rate - time.monotonic()))
            batch.append(event)
            if len(batch) >= size:
                appended += 1
                sent += len(batch)
                markers = lane_markers(lane, at, partitions=partitions, seq=appended)
                _append(client, script, batch, markers, partitions, dedup_ttl_s, summary)
        # the end: the lane's customers go over to the wall clock, and their due timers fire
        end = lane_markers(lane, received_at, partitions=partitions, seq=appended + 1, end=True)
        _append(client, script, batch, end, partitions, dedup_ttl_s, summary)
    return summary


def replay_lane(path: Path) -> str:
    """The lane of a replay of ``path``: the same file (name, size, time) gets the same lane, so
    a replay stopped half-way and run again carries on where it was."""
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()
    return f"replay-{hashlib.sha256(key).hexdigest()[:12]}"


def _append(
    client: redis.Redis,
    script: Any,
    batch: list[SerializedEvent],
    markers: list[tuple[str, bytes]],
    partitions: int,
    dedup_ttl_s: int,
    summary: ReplaySummary,
) -> None:
    """Append ``batch`` (each event once), then the lane's ``markers`` behind it."""
    plans = plan_appends(batch, partitions=partitions, dedup_ttl_s=dedup_ttl_s)
    pipe = client.pipeline(transaction=False)
    for plan in plans:
        script(keys=plan.keys, args=plan.args, client=pipe)
    for stream, entry in markers:
        pipe.xadd(stream, {EVENT_FIELD: entry})
    results = pipe.execute()
    flags = stored_flags(plans, results[: len(plans)], len(batch))
    stored = sum(flags)
    summary.accepted += stored
    summary.duplicates += len(flags) - stored
    batch.clear()


def _flush_failed(client: redis.Redis, failed: list[FailedEvent]) -> None:
    if not failed:
        return
    pipe = client.pipeline(transaction=False)
    for item in failed:
        pipe.xadd(FAILED_EVENTS_KEY, item.fields())  # type: ignore[arg-type]
    pipe.execute()
    failed.clear()
