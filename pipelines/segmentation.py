"""The segmentation dataflow: Redis Streams -> per-customer features -> profiles in Redis.

    python -m bytewax.run "pipelines.segmentation:flow_from_env()" [-w N] [-r DIR -s S -b B]

Customers are sharded into ``SHARDS`` keys (crc32 of the customer id) with a dict of customers
per shard: Bytewax's recovery snapshots each changed key per interval, and a few large keys
cost far less than a million small ones (DEPENDENCY-FACTS.md).
"""

from __future__ import annotations

import hashlib
import heapq
import os
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import bytewax.operators as op
import orjson
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic

from pipelines.features import Catalogue, CustomerFeatures, event_name
from pipelines.sinks import ProfileSink
from pipelines.sources import RedisStreamSource, StreamItem

SHARDS = 64


@dataclass
class ProfileUpdate:
    """A customer's features changed (by an event or a deadline): what the sinks write."""

    customer_id: str
    at: int  # event time of the change, ms
    features: dict[str, Any]
    traits: dict[str, Any]
    event: dict[str, Any] | None = None  # the event that caused it, if any


@dataclass
class LateEvent:
    event: dict[str, Any]
    newest: int


@dataclass
class ShardProgress:
    """How many stream entries a shard has applied, and the newest event time among them.

    Part of the shard's recovered state, so after a crash it rewinds and advances with the
    source positions: the sum over shards is exactly the number of entries processed.
    """

    shard: str
    processed: int
    newest: int | None


@dataclass
class ShardState:
    customers: dict[str, CustomerFeatures] = field(default_factory=dict)
    deadlines: list[tuple[int, str]] = field(default_factory=list)  # heap: (event time, id)
    # a digest of the last profile emitted per customer, so only changes go downstream
    emitted: dict[str, bytes] = field(default_factory=dict)
    processed: int = 0
    newest: int | None = None


def shard_of(event: dict[str, Any]) -> str:
    return str(zlib.crc32(str(event["customer_id"]).encode()) % SHARDS)


class FeatureShard(StatefulBatchLogic[StreamItem, Any, ShardState]):
    """Applies a shard's events and fires its customers' deadlines.

    Live, a deadline is an event-time instant mapped onto the wall clock (event time and wall
    time coincide for live events); Bytewax calls ``on_notify`` then.
    """

    def __init__(self, catalogue: Catalogue, state: ShardState | None) -> None:
        self.catalogue = catalogue
        self.state = state or ShardState()

    def on_batch(self, values: list[StreamItem]) -> tuple[Iterable[Any], bool]:
        out: list[ProfileUpdate | LateEvent | ShardProgress] = []
        touched: dict[str, int] = {}
        for _entry_id, event in values:
            customer_id = str(event["customer_id"])
            customer = self.state.customers.get(customer_id)
            if customer is None:
                customer = self.state.customers[customer_id] = CustomerFeatures(self.catalogue)
            when = int(event["timestamp"])
            if customer.is_late(when, self.catalogue.allowed_lateness_ms):
                out.append(LateEvent(event, customer.newest or when))
                continue
            customer.apply(event)
            touched[customer_id] = customer.newest or when
            update = self._changed(customer_id, customer.newest or when)
            if update is not None:
                update.event = event if event_name(event) or event["type"] == "identify" else None
                out.append(update)
        for customer_id, newest in touched.items():
            self._schedule(customer_id, newest)
        self.state.processed += len(values)
        batch_newest = max(int(event["timestamp"]) for _, event in values)
        self.state.newest = max(self.state.newest or batch_newest, batch_newest)
        out.append(ShardProgress("", self.state.processed, self.state.newest))
        return out, StatefulBatchLogic.RETAIN

    def _changed(self, customer_id: str, now: int) -> ProfileUpdate | None:
        customer = self.state.customers[customer_id]
        features = customer.snapshot(now)
        seen = orjson.dumps([features, customer.traits], option=orjson.OPT_SORT_KEYS)
        digest = hashlib.blake2b(seen, digest_size=8).digest()
        if self.state.emitted.get(customer_id) == digest:
            return None
        self.state.emitted[customer_id] = digest
        return ProfileUpdate(customer_id, now, features, dict(customer.traits))

    def _schedule(self, customer_id: str, now: int) -> None:
        deadline = self.state.customers[customer_id].next_change(now)
        if deadline is not None:
            heapq.heappush(self.state.deadlines, (deadline, customer_id))

    def fire(self, now: int) -> list[ProfileUpdate]:
        """Take new snapshots of every customer whose deadline is at or before ``now``."""
        out = []
        while self.state.deadlines and self.state.deadlines[0][0] <= now:
            deadline, customer_id = heapq.heappop(self.state.deadlines)
            if customer_id not in self.state.customers:
                continue
            update = self._changed(customer_id, deadline)
            if update is not None:
                out.append(update)
            self._schedule(customer_id, deadline)
        return out

    def on_notify(self) -> tuple[Iterable[Any], bool]:
        return self.fire(time.time_ns() // 1_000_000), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if not self.state.deadlines:
            return None
        return datetime.fromtimestamp(self.state.deadlines[0][0] / 1000, tz=UTC)

    def on_eof(self) -> tuple[Iterable[Any], bool]:
        return [], StatefulBatchLogic.RETAIN

    def snapshot(self) -> ShardState:
        return self.state


def _name_progress(item: tuple[str, Any]) -> Any:
    shard, value = item
    if isinstance(value, ShardProgress):
        value.shard = shard
    return value


def get_flow(
    *,
    redis_url: str,
    partitions: int,
    catalogue: Catalogue,
    stop_at_end: bool = False,
) -> Dataflow:
    """source -> features -> profile sink; ``stop_at_end`` for runs over a finished stream."""
    flow = Dataflow("segmentation")
    events = op.input(
        "events", flow, RedisStreamSource(redis_url, partitions, stop_at_end=stop_at_end)
    )
    # (stream entry id, event fields)
    keyed = op.key_on("by_shard", events, lambda item: shard_of(item[1]))
    # (shard, (entry id, event))
    updates = op.stateful_batch("features", keyed, lambda state: FeatureShard(catalogue, state))
    # (shard, ProfileUpdate | LateEvent | ShardProgress)
    named = op.map("name_progress", updates, _name_progress)
    # ProfileUpdate | LateEvent | ShardProgress (with its shard)
    op.output("profiles", named, ProfileSink(redis_url))
    return flow


def flow_from_env() -> Dataflow:
    """The flow `segflow up` runs, configured like every Segflow process."""
    from app.settings import get_settings
    from pipelines.catalogue import default_catalogue

    settings = get_settings()
    url = settings.redis_url or os.environ["REDIS_URL"]
    return get_flow(
        redis_url=url,
        partitions=settings.partitions,
        catalogue=default_catalogue(settings.allowed_lateness_ms),
        stop_at_end=os.environ.get("SEGFLOW_STOP_AT_END") == "1",
    )
