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
        from pipelines.segmentation import Erased, LateEvent, ProfileUpdate, ShardProgress

        pipe = self._client.pipeline(transaction=False)
        trims: set[str] = set()
        for item in items:
            if isinstance(item, ProfileUpdate):
                pipe.hset(
                    profile_key(item.customer_id),
                    mapping={
                        "customer_id": item.customer_id,
                        "at": item.at,
                        "features": orjson.dumps(item.features),
                        "traits": orjson.dumps(item.traits),
                    },
                )
                if item.event is not None:
                    recent = recent_events_key(item.customer_id)
                    shown = {
                        "type": item.event["type"],
                        "event": item.event.get("event"),
                        "timestamp": item.event["timestamp"],
                        "properties": item.event.get("properties") or {},
                        "message_id": item.event["message_id"],
                    }
                    pipe.zadd(recent, {orjson.dumps(shown): int(item.event["timestamp"])})
                    trims.add(recent)
            elif isinstance(item, LateEvent):
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
            elif isinstance(item, Erased):
                recent = recent_events_key(item.customer_id)
                pipe.delete(profile_key(item.customer_id), recent)
                trims.discard(recent)
            elif isinstance(item, ShardProgress):
                pipe.hset(PROGRESS_KEY, item.shard, orjson.dumps([item.processed, item.newest]))
        for key in trims:
            pipe.zremrangebyrank(key, 0, -RECENT_EVENTS - 1)
        pipe.execute()

    def close(self) -> None:
        self._client.close()


class ProfileSink(DynamicSink[Any]):
    def __init__(self, url: str) -> None:
        self._url = url

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ProfilePartition:
        return _ProfilePartition(self._url)
