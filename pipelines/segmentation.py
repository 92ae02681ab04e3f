"""The segmentation dataflow: Redis Streams -> per-customer features -> profiles in Redis.

    python -m bytewax.run "pipelines.segmentation:flow_from_env()" [-w N] [-r DIR -s S -b B]

Customers are sharded into a few keys with a dict of customers per shard: Bytewax's recovery
snapshots each changed key per interval, and a few large keys cost far less than a million
small ones (DEPENDENCY-FACTS.md). A shard belongs to one stream partition (``"<p>.<n>"``), so
the partition's ``Tick``s (see ``pipelines.sources``) say when its customers' deadlines may fire:
by event time while a partition is being read, by the wall clock once it has caught up.
"""

from __future__ import annotations

import heapq
import os
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from app.streams import ERASE
from pipelines.features import Catalogue, CustomerFeatures, event_name
from pipelines.records import Erased, LateEvent, ProfileUpdate, ShardProgress
from pipelines.sinks import ProfileSink
from pipelines.sources import RedisStreamSource, SourceItem, StreamEvent, Tick

SHARDS_PER_PARTITION = 16


@dataclass
class ShardState:
    customers: dict[str, CustomerFeatures] = field(default_factory=dict)
    deadlines: list[tuple[int, str]] = field(default_factory=list)  # heap: (event time, id)
    # per customer, the deadline already in the heap (so one instant is never queued twice)
    scheduled: dict[str, int] = field(default_factory=dict)
    processed: int = 0
    newest: int | None = None


def shard_of(customer_id: str, partition: int, partitions: int) -> str:
    """The shard of a customer of ``partition`` (which is crc32 % partitions)."""
    sub = (zlib.crc32(customer_id.encode()) // partitions) % SHARDS_PER_PARTITION
    return f"{partition}.{sub}"


def route(item: SourceItem, partitions: int) -> list[tuple[str, SourceItem]]:
    """An event to its customer's shard; a tick to every shard of its partition."""
    if isinstance(item, Tick):
        return [(f"{item.partition}.{n}", item) for n in range(SHARDS_PER_PARTITION)]
    return [(shard_of(str(item.event["customer_id"]), item.partition, partitions), item)]


class FeatureShard(StatefulBatchLogic[SourceItem, Any, ShardState]):
    """Applies a shard's events and fires its customers' deadlines as its partition's clock
    passes them. A deadline's snapshot is taken at the deadline's own instant, so live runs and
    replays emit the same changes at the same event times."""

    def __init__(self, catalogue: Catalogue, state: ShardState | None) -> None:
        self.catalogue = catalogue
        self.state = state or ShardState()

    def on_batch(self, values: list[SourceItem]) -> tuple[Iterable[Any], bool]:
        out: list[ProfileUpdate | LateEvent | Erased | ShardProgress] = []
        touched: dict[str, int] = {}
        events = 0
        for item in values:
            if isinstance(item, Tick):
                self._schedule_touched(touched)
                out += self.fire(item.at, inclusive=item.inclusive)
                continue
            event = item.event
            events += 1
            customer_id = str(event["customer_id"])
            if event["type"] == ERASE:
                touched.pop(customer_id, None)
                self._erase(customer_id)
                out.append(Erased(customer_id))
                continue
            when = int(event["timestamp"])
            self._schedule_touched(touched)
            out += self.fire(when, inclusive=False)  # what was due before this event
            customer = self.state.customers.get(customer_id)
            if customer is None:
                customer = self.state.customers[customer_id] = CustomerFeatures(self.catalogue)
            if customer.is_late(when, self.catalogue.allowed_lateness_ms):
                out.append(LateEvent(event, customer.newest or when))
                continue
            customer.apply(event)
            touched[customer_id] = customer.newest or when
            update = self._changed(customer_id, customer.newest or when)
            update.event = event if event_name(event) or event["type"] == "identify" else None
            out.append(update)
        self._schedule_touched(touched)
        if events:
            self.state.processed += events
            newest = max(int(i.event["timestamp"]) for i in values if isinstance(i, StreamEvent))
            self.state.newest = max(self.state.newest or newest, newest)
            out.append(ShardProgress("", self.state.processed, self.state.newest))
        return out, StatefulBatchLogic.RETAIN

    def _erase(self, customer_id: str) -> None:
        """Forget the customer: state and pending deadlines."""
        self.state.customers.pop(customer_id, None)
        self.state.scheduled.pop(customer_id, None)
        kept = [entry for entry in self.state.deadlines if entry[1] != customer_id]
        if len(kept) != len(self.state.deadlines):
            heapq.heapify(kept)
            self.state.deadlines = kept

    def _schedule_touched(self, touched: dict[str, int]) -> None:
        for customer_id, newest in touched.items():
            self._schedule(customer_id, newest)
        touched.clear()

    def _changed(self, customer_id: str, now: int) -> ProfileUpdate:
        # Every applied event and every deadline changes a value (a deadline is, by
        # construction, an instant at which a windowed value or the session changes).
        customer = self.state.customers[customer_id]
        return ProfileUpdate(customer_id, now, customer.snapshot(now), dict(customer.traits))

    def _schedule(self, customer_id: str, now: int) -> None:
        deadline = self.state.customers[customer_id].next_change(now)
        if deadline is None:
            return
        queued = self.state.scheduled.get(customer_id)
        if queued is None or deadline < queued:
            self.state.scheduled[customer_id] = deadline
            heapq.heappush(self.state.deadlines, (deadline, customer_id))

    def fire(self, now: int, *, inclusive: bool) -> list[ProfileUpdate]:
        """Snapshot every customer whose deadline is before ``now`` (or at it: ``inclusive``)."""
        out = []
        while self.state.deadlines and (
            self.state.deadlines[0][0] < now or (inclusive and self.state.deadlines[0][0] == now)
        ):
            deadline, customer_id = heapq.heappop(self.state.deadlines)
            if self.state.scheduled.get(customer_id) != deadline:
                continue  # erased, or an instant already fired
            del self.state.scheduled[customer_id]
            out.append(self._changed(customer_id, deadline))
            self._schedule(customer_id, deadline)
        return out

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
    sink: Sink[Any] | None = None,
) -> Dataflow:
    """source -> features -> profile sink; ``stop_at_end`` for runs over a finished stream;
    ``sink`` replaces the Redis sink (tests read every update in order through it)."""
    flow = Dataflow("segmentation")
    items = op.input(
        "events", flow, RedisStreamSource(redis_url, partitions, stop_at_end=stop_at_end)
    )
    # StreamEvent | Tick
    keyed: Any = op.flat_map("route", items, lambda item: route(item, partitions))
    # (shard, StreamEvent | Tick)
    updates = op.stateful_batch("features", keyed, lambda state: FeatureShard(catalogue, state))
    # (shard, ProfileUpdate | LateEvent | ShardProgress)
    named = op.map("name_progress", updates, _name_progress)
    # ProfileUpdate | LateEvent | ShardProgress (with its shard)
    op.output("profiles", named, sink or ProfileSink(redis_url))
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
