"""Validate messages, append the good ones to their partitions, keep the bad ones with reasons.

Nothing is claimed before Redis has it: ``ingest`` returns only after the append script ran;
if Redis cannot be reached it raises ``StoreUnavailable`` and the caller answers 503.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis import RedisError
from redis.exceptions import NoScriptError, OutOfMemoryError, ResponseError

from app.events import MAX_MESSAGE_BYTES, InvalidMessage, canonical_fields
from app.streams import (
    APPEND_SCRIPT,
    FAILED_EVENTS_KEY,
    PartitionAppend,
    SerializedEvent,
    plan_appends,
    stored_flags,
)

APPEND_SCRIPT_SHA = hashlib.sha1(APPEND_SCRIPT.encode()).hexdigest()  # noqa: S324 - Redis's id
# orjson writes at most this many levels of objects and arrays (it reads 1,024): a message
# nested deeper is refused on its own, and the rest of its batch is stored.
MAX_NESTING = 254
MAX_FAILED_RAW_CHARS = 600 * 1024  # a whole request body fits; nothing the collector read is cut


class StoreUnavailable(RuntimeError):
    """Redis did not take the write; nothing of this request may be reported as stored."""


class StoreFull(StoreUnavailable):
    """Redis refused the write for its ``maxmemory``: it answers again once memory is freed
    (streams trimmed, or the limit raised), so SDKs retry as for an outage."""


def _unavailable(error: Exception) -> StoreUnavailable:
    """What a failed write says: a full Redis (its OOM reply, which a script's write inside
    the append passes on as a plain error) or one that is not there."""
    full = isinstance(error, OutOfMemoryError) or (
        isinstance(error, ResponseError) and "OOM command not allowed" in str(error)
    )
    return (StoreFull if full else StoreUnavailable)(str(error))


@dataclass
class MessageError:
    index: int
    message_id: str | None
    error: str
    too_large: bool = False  # past Segment's 32 KB per message (a single call answers 413)


class MessageTooLarge(InvalidMessage):
    """A message past Segment's per-message size limit."""


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    errors: list[MessageError] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class FailedEvent:
    received_at: int
    reason: str
    source: str
    raw: str

    def fields(self) -> dict[str, str | int]:
        return {
            "received_at": self.received_at,
            "reason": self.reason,
            "source": self.source,
            "raw": self.raw[:MAX_FAILED_RAW_CHARS],
        }


# a write key a body carries (``"writeKey": "..."``): failed events keep the rest of it
_WRITE_KEY_IN_TEXT = re.compile(r'("writeKey"\s*:\s*")(?:[^"\\]|\\.)*(")')
HIDDEN = "(hidden)"


def raw_text(raw: Any) -> str:
    """The message as JSON text for the failed-events store, whatever it was, without the
    write key it may carry (a secret: failed events are shown in the admin API and UI)."""
    if isinstance(raw, str):
        return _WRITE_KEY_IN_TEXT.sub(rf"\g<1>{HIDDEN}\g<2>", raw)
    if isinstance(raw, dict) and "writeKey" in raw:
        raw = {**raw, "writeKey": HIDDEN}
    try:
        return orjson.dumps(raw).decode()
    except (TypeError, orjson.JSONEncodeError):
        pass
    try:  # nested deeper than orjson writes, or not JSON's types
        return json.dumps(raw, ensure_ascii=False, default=repr)
    except (RecursionError, ValueError):
        return f"(a {type(raw).__name__} nested too deeply to show)"


@dataclass
class ValidatedBatch:
    """A request's messages split into storable events and failures (pure, no I/O)."""

    serialized: list[SerializedEvent]
    errors: list[MessageError]
    failed: list[FailedEvent]


def validate_batch(
    messages: Sequence[Any],
    *,
    source: str,
    received_at: int,
    forced_type: str | None = None,
    defaults: dict[str, Any] | None = None,
) -> ValidatedBatch:
    batch = ValidatedBatch([], [], [])
    for index, raw in enumerate(messages):
        try:
            event = canonical_fields(
                raw,
                received_at=received_at,
                source=source,
                forced_type=forced_type,
                defaults=defaults,
            )
            try:
                payload = orjson.dumps(event)
            except orjson.JSONEncodeError:  # its only failure on parsed JSON: the depth
                raise InvalidMessage(
                    f"message is nested more than {MAX_NESTING} levels deep"
                ) from None
            if len(payload) > MAX_MESSAGE_BYTES:
                raise MessageTooLarge(f"message is larger than {MAX_MESSAGE_BYTES // 1024} KB")
        except InvalidMessage as error:
            message_id = raw.get("messageId") if isinstance(raw, dict) else None
            batch.errors.append(
                MessageError(
                    index,
                    message_id if isinstance(message_id, str) else None,
                    str(error),
                    too_large=isinstance(error, MessageTooLarge),
                )
            )
            batch.failed.append(FailedEvent(received_at, str(error), source, raw_text(raw)))
            continue
        batch.serialized.append(
            SerializedEvent(event["customer_id"], event["message_id"], payload, source)
        )
    return batch


class EventStore:
    """The async writer the API uses: one round trip to Redis per request."""

    def __init__(self, client: aioredis.Redis, *, partitions: int, dedup_ttl_s: int) -> None:
        self._client = client
        self._partitions = partitions
        self._dedup_ttl_s = dedup_ttl_s

    async def store(self, batch: ValidatedBatch) -> IngestResult:
        plans = plan_appends(
            batch.serialized, partitions=self._partitions, dedup_ttl_s=self._dedup_ttl_s
        )
        try:
            try:
                results = await self._execute(plans, batch.failed)
            except NoScriptError:  # redis-py's pipeline re-raises the reply's own class
                # Redis restarted and forgot the script; the append is idempotent, so run it
                # again. The failed-events entries went through the first time: not twice.
                await self._client.script_load(APPEND_SCRIPT)
                results = await self._execute(plans, [])
        except (RedisError, OSError) as error:
            raise _unavailable(error) from error
        flags = stored_flags(plans, results, len(batch.serialized))
        accepted = sum(flags)
        return IngestResult(
            accepted=accepted, duplicates=len(flags) - accepted, errors=batch.errors
        )

    async def _execute(
        self, plans: list[PartitionAppend], failed: list[FailedEvent]
    ) -> list[list[int]]:
        pipe = self._client.pipeline(transaction=False)
        for plan in plans:
            pipe.evalsha(APPEND_SCRIPT_SHA, len(plan.keys), *plan.keys, *plan.args)
        for item in failed:
            pipe.xadd(FAILED_EVENTS_KEY, item.fields())  # type: ignore[arg-type]
        replies = await pipe.execute()
        return [list(reply) for reply in replies[: len(plans)]]

    async def record_failed(self, item: FailedEvent) -> None:
        try:
            await self._client.xadd(FAILED_EVENTS_KEY, item.fields())  # type: ignore[arg-type]
        except (RedisError, OSError) as error:
            raise _unavailable(error) from error
