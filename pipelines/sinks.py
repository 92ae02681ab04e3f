"""Redis sinks. Bytewax recovery replays output after a crash, so every write is idempotent:
a profile is overwritten whole, recent events are sorted-set members (the same event twice is
one member), and a late event enters failed events once per messageId (a marker key in the
stream's slot guards the append)."""

from __future__ import annotations

from typing import Any

import orjson
import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from app.profiles.keys import profile_key, recent_events_key
from app.streams import FAILED_EVENTS_KEY, PROGRESS_KEY
from pipelines.records import Erased, LateEvent, ProfileUpdate, ShardProgress

RECENT_EVENTS = 20
LATE_MARKER_TTL_S = 86_400

# KEYS: failed-events stream, marker; ARGV: marker TTL, then field, value, ...
_APPEND_ONCE = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
end
return 1
"""


def late_marker_key(message_id: str) -> str:
    return f"{{{FAILED_EVENTS_KEY}}}:late:{message_id}"


class _ProfilePartition(StatelessSinkPartition[Any]):
    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=10)
        self._append_once = self._client.register_script(_APPEND_ONCE)

    def write_batch(self, items: list[Any]) -> None:
        # A customer changes many times in a batch: only their last profile is written, with
        # every event of the batch in their recent events (unless they were erased after it).
        profiles: dict[str, ProfileUpdate | None] = {}  # None: erased
        recent: dict[str, dict[bytes, int]] = {}
        progress: dict[str, bytes] = {}
        pipe = self._client.pipeline(transaction=False)
        for item in items:
            if isinstance(item, ProfileUpdate):
                profiles[item.customer_id] = item
                if item.event is not None:
                    recent.setdefault(item.customer_id, {})[_shown(item.event)] = int(
                        item.event["timestamp"]
                    )
            elif isinstance(item, Erased):
                profiles[item.customer_id] = None
                recent.pop(item.customer_id, None)
            elif isinstance(item, LateEvent):
                self._keep_late(pipe, item)
            elif isinstance(item, ShardProgress):
                progress[item.shard] = orjson.dumps([item.processed, item.newest])
        for customer_id, update in profiles.items():
            if update is None:
                pipe.delete(profile_key(customer_id), recent_events_key(customer_id))
                continue
            pipe.hset(
                profile_key(customer_id),
                mapping={
                    "customer_id": customer_id,
                    "at": update.at,
                    "features": orjson.dumps(update.features),
                    "traits": orjson.dumps(update.traits),
                },
            )
        for customer_id, members in recent.items():
            key = recent_events_key(customer_id)
            pipe.zadd(key, members)
            pipe.zremrangebyrank(key, 0, -RECENT_EVENTS - 1)
        if progress:
            pipe.hset(PROGRESS_KEY, mapping=progress)  # type: ignore[arg-type]
        pipe.execute()

    def _keep_late(self, pipe: Any, item: LateEvent) -> None:
        fields = {
            "received_at": item.event.get("received_at", 0),
            "reason": "late: more than the allowed lateness behind the customer's "
            f"newest event ({item.newest})",
            "source": item.event.get("source", ""),
            "raw": orjson.dumps(item.event).decode(),
        }
        self._append_once(
            keys=[FAILED_EVENTS_KEY, late_marker_key(item.event["message_id"])],
            args=[LATE_MARKER_TTL_S, *(x for pair in fields.items() for x in pair)],
            client=pipe,
        )

    def close(self) -> None:
        self._client.close()


def _shown(event: dict[str, Any]) -> bytes:
    """An event as the profile lists it (the same event always gives the same member)."""
    return orjson.dumps(
        {
            "type": event["type"],
            "event": event.get("event"),
            "timestamp": event["timestamp"],
            "properties": event.get("properties") or {},
            "message_id": event["message_id"],
        }
    )


class ProfileSink(DynamicSink[Any]):
    def __init__(self, url: str) -> None:
        self._url = url

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ProfilePartition:
        return _ProfilePartition(self._url)
