"""The segmentation dataflow: Redis Streams -> per-customer features -> profiles in Redis.

    python -m bytewax.run "pipelines.segmentation:flow_from_env()" [-w N] [-r DIR -s S -b B]

Customers are sharded into a few keys with a dict of customers per shard: Bytewax's recovery
snapshots each changed key per interval, and a few large keys cost far less than a million
small ones (DEPENDENCY-FACTS.md). A shard belongs to one stream partition, and its key is
placed on the worker that reads that partition (``pipelines.placement``): an event does not
cross between workers.

How time works
--------------
Every value, and so every membership, is a function of a customer's events and an instant of
event time; a transition is dated at the instant it happens, never when it is processed. A
customer changes at two kinds of instants: their own events, and their *deadlines* (a view
leaving a window, a session ending, a rule's "at least 30 min ago" turning). A deadline may
fire once no event of the customer before it can still come: that is the job of a clock, and a
customer's deadlines depend only on the customer's own events and on the clock of their *lane*:

- The live lane (events from the collector): the wall clock, as the source reads it (a little
  behind, and while catching up, the time Redis appended what it has read). Event time never
  runs ahead of arrival (the collector takes a timestamp far ahead as its arrival), so no
  sender's clock, no other customer and no pause in reading moves it wrongly.
- A replay's lane (``segflow replay``): the replay's own progress, which it appends to every
  partition behind its events (``app.streams.lane_markers``); an empty read proves nothing, so
  it never jumps to today in the middle of a replay. When the replay ends, its customers go
  over to the live lane and the deadlines now due fire, dated at their own instants. A replay
  or a backfill beside live traffic disturbs neither: each lane keeps its own clock.

A customer belongs to the lane of their newest event. Before one of their events applies, their
own deadlines before it fire (their events prove their own timeline); events at one instant
apply together and are evaluated once the instant is complete (a live customer's at the end of
the read that brought them, a replay's once its lane's clock passes the instant).
"""

from __future__ import annotations

import base64
import collections
import contextlib
import gc
import heapq
import itertools
import logging
import math
import os
import pickle
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import bytewax.operators as op
import redis
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from app.clustering.columns import INPUTS as CLUSTER_INPUTS
from app.clustering.columns import steady_inputs
from app.clustering.model import CLUSTER_PREFIX, ClusterModel, membership
from app.clustering.watch import ModelWatcher
from app.db import make_engine
from app.events import StreamEntry
from app.features import event_name
from app.migrate import migrated_session
from app.rules.active import RuleSet, RuleWatcher, seed
from app.rules.compiler import CompiledRules
from app.rules.engine import Rulesets
from app.settings import Settings, get_settings
from app.streams import ABSORB, ERASE, LIVE, MERGE, partition_of
from pipelines.features import Catalogue, CustomerFeatures, Watch, default_catalogue
from pipelines.placement import SHARDS_PER_PARTITION, shard_keys
from pipelines.records import (
    Correction,
    Erased,
    ErasureSeen,
    LateEvent,
    Merged,
    ProfileUpdate,
    Relay,
    ShardProgress,
    Transition,
    Unprocessable,
)
from pipelines.rewind import Anchor, Rewind, RewindBook, differences
from pipelines.sinks import ProfileSink
from pipelines.sources import (
    IDLE_TICK_MS,
    MALFORMED,
    RedisStreamSource,
    SourceItem,
    StreamEvent,
    Tick,
)

_NO_CLUSTERS: frozenset[str] = frozenset()
_NOT_YET = object()
JOINED_KEPT = 10_000  # memberships with a cluster remembered per shard (``_with_cluster``)
# What a shard emits: the sink writes each kind (``pipelines.records``).
# set by `segflow pipeline` for the flow it runs: the recovery store (`bytewax.run -r`)
RECOVERY_DIR_ENV = "SEGFLOW_RECOVERY_DIR"
ShardOutput = (
    ProfileUpdate
    | LateEvent
    | Unprocessable
    | Erased
    | ErasureSeen
    | Merged
    | Relay
    | ShardProgress
)
log = logging.getLogger(__name__)


class ShardState:
    """A shard's customers, pending deadlines and progress.

    Recovery snapshots a shard whenever any of its customers changed, so pickling every
    customer each time would cost in proportion to all customers, not the active ones. Each
    customer's serialized form is kept instead (``frozen``) and only the customers changed
    since the last snapshot are serialized again. A customer idle for ``IDLE_SNAPSHOTS``
    snapshots is held only in that compact form until their next event or deadline.
    """

    def __init__(self) -> None:
        self.catalogue: Catalogue | None = None  # set by the shard: customers are saved without
        self.live: dict[str, CustomerFeatures] = {}
        self.frozen: dict[str, bytes] = {}  # every customer, as of the last snapshot
        self.changed: set[str] = set()  # live customers changed since the last snapshot
        self.idle: dict[str, int] = {}  # live customer -> snapshots since they last changed
        self.lanes: dict[str, LaneClock] = {LIVE: LaneClock()}  # by lane: its clock, deadlines
        self.lane_of: dict[str, str] = {}  # customer -> their replay lane (absent: live)
        # per customer, the deadline already in their lane's heap (an instant is queued once)
        self.scheduled: dict[str, int] = {}
        self.processed = 0
        self.newest: int | None = None
        self.revision: int | None = None  # the rule set's revision the customers are in under
        self.cluster_version: int | None = None  # the cluster model's they are assigned by
        self.stale: list[str] = []  # customers not yet re-evaluated under that revision
        # customers with events applied at one instant, evaluated once that instant is complete
        self.pending: dict[str, _Pending] = {}
        self.merged: dict[str, str] = {}  # anonymous id -> the customer it was merged into
        # live customers' recent history, to correct late events from (not in snapshots:
        # after a restart, late events count from their customer's newest instant for a while)
        self.rewinds = RewindBook()

    def customer(self, customer_id: str) -> CustomerFeatures | None:
        """The customer's state, to be changed (None: unknown here)."""
        found = self.live.get(customer_id)
        if found is None:
            blob = self.frozen.get(customer_id)
            if blob is None:
                return None
            assert self.catalogue is not None
            found = self.live[customer_id] = CustomerFeatures.restore(blob, self.catalogue)
        self.changed.add(customer_id)
        return found

    def saved(self, customer_id: str) -> bytes | None:
        """The customer as the last snapshot serialized them, if unchanged since (a sparse
        customer's usually are: their saved state for corrections costs nothing then)."""
        return None if customer_id in self.changed else self.frozen.get(customer_id)

    def add(self, customer_id: str, customer: CustomerFeatures) -> None:
        self.live[customer_id] = customer
        self.changed.add(customer_id)

    def forget(self, customer_id: str) -> None:
        self.live.pop(customer_id, None)
        self.frozen.pop(customer_id, None)
        self.changed.discard(customer_id)
        self.idle.pop(customer_id, None)

    def drop_mentions(self, customer_id: str) -> None:
        """Take the customer's id out of the deadline heaps and the customers still to be
        re-evaluated, which would otherwise carry it (skipped when reached) into the recovery
        snapshots of an erased customer. Erasures are rare: a pass over each is fine."""
        for lane in self.lanes.values():
            kept = [entry for entry in lane.heap if entry[1] != customer_id]
            if len(kept) != len(lane.heap):
                heapq.heapify(kept)
                lane.heap = kept
        if customer_id in self.stale:
            self.stale = [other for other in self.stale if other != customer_id]

    def __len__(self) -> int:
        return len(self.frozen.keys() | self.live.keys())

    def customer_ids(self) -> list[str]:
        return sorted(self.frozen.keys() | self.live.keys())

    def freeze(self) -> None:
        """Serialize the changed customers; let go of the live form of long-idle ones."""
        for customer_id in list(self.live):
            if customer_id in self.changed:
                self.frozen[customer_id] = pickle.dumps(
                    self.live[customer_id], pickle.HIGHEST_PROTOCOL
                )
                self.idle[customer_id] = 0
            else:
                self.idle[customer_id] = idle = self.idle.get(customer_id, 0) + 1
                if idle >= IDLE_SNAPSHOTS:
                    del self.live[customer_id], self.idle[customer_id]
        self.changed.clear()

    def __getstate__(self) -> dict[str, Any]:
        self.freeze()
        kept = (
            "frozen",
            "lanes",
            "lane_of",
            "scheduled",
            "processed",
            "newest",
            "revision",
            "cluster_version",
            "stale",
            "pending",
            "merged",
        )
        return {name: getattr(self, name) for name in kept}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]
        if "deadlines" in state:  # a snapshot from before lanes: one clock, the live one's
            live = self.lanes[LIVE]
            live.heap, live.at = state.pop("deadlines"), state.pop("clock", None)
        self.__dict__.update(state)

    def lane(self, name: str) -> LaneClock:
        found = self.lanes.get(name)
        if found is None:
            found = self.lanes[name] = LaneClock()
        return found

    def clock_of(self, customer_id: str) -> LaneClock:
        """The clock the customer's deadlines fire by: their lane's."""
        return self.lane(self.lane_of.get(customer_id, LIVE))


class LaneClock:
    """One lane's clock in a shard, and the deadlines of the lane's customers (a heap of
    (instant, customer id), stale entries skipped when popped)."""

    __slots__ = ("at", "heap", "inclusive", "seen")

    def __init__(self) -> None:
        self.at: int | None = None  # every event of the lane before it has been read
        self.inclusive = False  # ... and at it
        self.heap: list[tuple[int, str]] = []
        self.seen: int | None = None  # the live clock when the lane last moved (replays)

    def advance(self, at: int, inclusive: bool) -> None:
        if self.at is None or at > self.at:
            self.at, self.inclusive = at, inclusive
        elif at == self.at:
            self.inclusive = self.inclusive or inclusive

    def passed(self, instant: int) -> bool:
        """Whether the clock is past ``instant`` (no event of the lane at it can come)."""
        return self.at is not None and (
            instant < self.at or (self.inclusive and instant == self.at)
        )

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.at, self.inclusive, self.heap, self.seen)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.at, self.inclusive, self.heap, self.seen = state


IDLE_SNAPSHOTS = 30
# A replay lane that has not moved for this long (its replay was stopped and not run again) ends,
# so its customers' deadlines fire by the wall clock instead of waiting for ever.
REPLAY_STALL_MS = 10 * 60_000
# Every event allocates a few dozen short-lived objects next to millions of long-lived ones
# (customer state): the default thresholds spent a third of the time in the collector. The
# source collects between reads (``collect_between_reads``); Python's own collector is a
# backstop, for a flow whose source is not called for a long while.
FLOW_GC_THRESHOLD = (1_000_000, 50, 100)
REEVALUATED_PER_BATCH = 2_000
# A profile record carries the changes of at most this many future instants, within this long
# of its own instant (``_settle``): a 30-day window's exits are evaluated if the customer is
# still quiet then, instead of being worked out in every record.
CHANGE_INSTANTS_KEPT = 16
CHANGES_AHEAD_MS = 60 * 60_000
# A cluster model's next move is looked for through at most this many instants at which a
# column's input can change (a 30-day window's exits), each a few microseconds where an
# evaluation, its record and its writes cost tens (``FeatureShard._next_move``).
MOVE_LOOKAHEAD = 32
# ... once the customer has been quiet this long (a rule's 10 minutes or a cart's 30 are not
# a month's exits, and a walk is lost when the customer comes back before its end)
QUIET_BEFORE_LOOKING_MS = 24 * 60 * 60_000
# A customer whose event or evaluation makes the shard raise is set aside (``_quarantine``),
# not the flow stopped for everyone (restarted, it would fail on the same entry again); more
# than this many in a shard within this long is no one customer's doing (a bug that every
# customer meets, a rule set the engine refuses): the shard raises, as any error stops a flow.
QUARANTINED_MOST = 20
QUARANTINE_WINDOW_S = 60.0
# A live customer's history is kept to correct late events from while the live clock is within
# this much (at least; the allowed lateness if longer) of their last event, and saved states
# are taken at most this often per customer's activity (``pipelines.rewind``).
REWIND_MIN_MS = 60_000


_CATALOGUES: dict[tuple[str, int], Catalogue] = {}


def catalogue_for(rules: CompiledRules, allowed_lateness_ms: int) -> Catalogue:
    """The catalogue for a rule set, one per process (its plan is built once, not per shard)."""
    key = (rules.fingerprint, allowed_lateness_ms)
    found = _CATALOGUES.get(key)
    if found is None:
        found = _CATALOGUES[key] = default_catalogue(allowed_lateness_ms, rules.feature_specs())
    return found


def shard_of(customer_id: str, partition: int, partitions: int) -> str:
    """The shard of a customer of ``partition`` (which is crc32 % partitions): its key is on the
    worker that reads the partition (``pipelines.placement``)."""
    sub = (zlib.crc32(customer_id.encode()) // partitions) % SHARDS_PER_PARTITION
    return shard_keys(partition, partitions)[sub]


def route_read(
    items: list[SourceItem], partitions: int, ticks: TickSpread | None = None
) -> list[tuple[str, list[SourceItem]]]:
    """What the source read, as one item per shard: its events in order, each tick (of a
    partition) in its place in every shard of that partition (with ``ticks``, a live tick in
    the shards it reaches: ``TickSpread``). Bytewax then carries a shard's part of a read as
    one item, not one item per event."""
    by_shard: dict[str, list[SourceItem]] = {}
    for item in items:
        if isinstance(item, Tick):
            shards: Iterable[str] = (
                shard_keys(item.partition, partitions) if ticks is None else ticks.reach(item)
            )
        else:
            shard = shard_of(item.event["customer_id"], item.partition, partitions)
            if ticks is not None:
                ticks.touched(item.partition, shard)
            shards = (shard,)
        for shard in shards:
            found = by_shard.get(shard)
            if found is None:
                by_shard[shard] = [item]
            else:
                found.append(item)
    return list(by_shard.items())


class TickSpread:
    """Which shards a live tick reaches. A live partition's every read ends with a tick, and
    each tick made each of its 16 shards run (the clock, due deadlines, stalled lanes): live at
    a few events per read, most of the flow's CPU went to shards with nothing read (138 us per
    event at 5,000 events/s against 64 catching up; 0.13 of a core at 100 events/s). Now a
    live tick reaches the shards that took events since the partition's last tick (they
    evaluate them at it) and, at most every ``IDLE_TICK_MS`` (as often as an idle partition
    ticks), every shard: their deadlines fire as soon as when idle. Replay and end ticks
    reach every shard. One per process; a partition is read by one worker, so the workers
    touch disjoint entries."""

    def __init__(self, partitions: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._partitions = partitions
        self._clock = clock  # seconds
        self._spread_at: dict[int, float] = {}  # per partition: when a tick last reached all
        self._touched: dict[int, set[str]] = {}  # per partition: shards with events since

    def touched(self, partition: int, shard: str) -> None:
        found = self._touched.get(partition)
        if found is None:
            self._touched[partition] = {shard}
        else:
            found.add(shard)

    def reach(self, tick: Tick) -> Iterable[str]:
        partition = tick.partition
        touched = self._touched.pop(partition, ())
        if tick.lane == LIVE and not tick.end:
            now = self._clock()
            if now - self._spread_at.get(partition, -math.inf) < IDLE_TICK_MS / 1000:
                return touched  # each already has its part of the read: no order to keep
            self._spread_at[partition] = now
        return shard_keys(partition, self._partitions)


class FeatureShard(StatefulBatchLogic[SourceItem | list[SourceItem], Any, ShardState]):
    """Applies a shard's events and fires its customers' deadlines as their lanes' clocks pass
    them (see "How time works" above). A deadline's snapshot is taken at the deadline's own
    instant, so live runs and replays emit the same changes at the same event times."""

    def __init__(
        self,
        catalogue: Catalogue,
        rules: CompiledRules | None,
        state: ShardState | None,
        watcher: RuleWatcher | None = None,
        partitions: int = 1,
        clusters: ModelWatcher | None = None,
        *,
        every_deadline: bool = False,
    ) -> None:
        """``every_deadline``: evaluate at every instant a feature changes, not only where a
        segment, a cluster or a trigger can (``_watch``): what records carry is the same."""
        self.catalogue = catalogue
        self.every_deadline = every_deadline
        self.partitions = partitions
        self.rules = rules
        self.watcher = watcher
        self.clusters = clusters
        self.model: ClusterModel | None = None
        # per cluster of the model (by index): its pseudo-segment, and what a rule's
        # ``cluster:`` condition may name it by (id, name)
        self._cluster_members: list[str] = []
        self._cluster_names: list[frozenset[str]] = []
        # (rule segments, cluster pseudo-segment) -> both: one set object per combination, so
        # an unchanged membership is found by identity (the rules' answers are remembered)
        self._joined: dict[tuple[frozenset[str], str], frozenset[str]] = {}
        # (rule segments, segments before) -> both, with the cluster kept (``_with_kept_cluster``)
        self._kept: dict[tuple[frozenset[str], frozenset[str]], frozenset[str]] = {}
        # whether every snapshot is assigned (a rule reads clusters), or each record only
        # (``_assign``), and the rules that answer was found for
        self._assign_each = True
        self._assign_each_of: object = _NOT_YET
        self.state = state or ShardState()
        self.state.catalogue = catalogue
        # per customer changed in the batch, what its one record carries (``_settle``)
        self._drafts: dict[str, _Draft] = {}
        # the rules they are for, and the watches of the rules, of the rules and the cluster
        # model's columns, and of the columns alone (``_watch``, ``_next_move``)
        self._watching: tuple[CompiledRules | None, Watch, Watch, Watch] | None = None
        # customers set aside (``_quarantine``): when (``time.monotonic``), and the events
        # kept aside in this batch; those set aside since their last snapshot, by id
        self._quarantined_at: collections.deque[float] = collections.deque()
        self._set_aside: list[Unprocessable] = []
        self._quarantined: set[str] = set()

    def on_batch(
        self, values: Sequence[SourceItem | list[SourceItem]]
    ) -> tuple[Iterable[Any], bool]:
        """The shard's part of reads of the partition (``route_read``: a list per read, its
        stream entries then the tick that closes it), or single items (tests, rule examples)."""
        out: list[ShardOutput] = []
        if self.watcher is not None:
            self._follow(self.watcher.current())
        if self.clusters is not None:
            model = self.clusters.current()
            if model is not self.model:  # (checked here: a shard takes thousands of reads a
                self._follow_model(model)  # second, most of them ticks)
        if self._assign_each_of is not self.rules:
            self._assign_each_of = self.rules
            self._assign_each = self.rules is not None and reads_clusters(self.rules)
        if self.state.stale:
            self._reevaluate(REEVALUATED_PER_BATCH)
        events = 0
        newest = self.state.newest
        last: StreamEvent | None = None
        for value in values:
            for item in value if isinstance(value, list) else (value,):
                if isinstance(item, Tick):
                    self._on_tick(item, out)
                    continue
                entry = item.event
                events += 1
                last = item
                when = int(entry["timestamp"])
                newest = when if newest is None else max(newest, when)
                customer_id = entry["customer_id"]
                kind = entry["type"]
                if kind == MALFORMED:  # (the source could not read it: ``sources.malformed``)
                    said = cast(dict[str, Any], entry)["error"]
                    self._set_aside.append(Unprocessable(entry, said))
                    continue
                if kind == ERASE:
                    self._on_erase(customer_id, out)
                    out.append(ErasureSeen(item.partition, item.entry_id))
                    continue
                try:
                    if customer_id in self.state.merged:
                        self._on_merged_away(entry, self.state.merged[customer_id], out)
                    elif kind == MERGE:
                        self._on_merge(customer_id, entry, out)
                    elif kind == ABSORB:
                        self._on_absorb(customer_id, entry, out)
                    else:
                        self._on_event(customer_id, entry, when, out)
                except Exception as error:
                    self._quarantine(customer_id, error, entry)
        self._settle(out)
        if self._set_aside:
            out += self._set_aside
            self._set_aside.clear()
        if events:
            self.state.processed += events
            self.state.newest = newest
            assert last is not None
            out.append(
                ShardProgress("", self.state.processed, newest, last.partition, last.entry_id)
            )
        return out, StatefulBatchLogic.RETAIN

    # Events at the same instant apply together: a customer's events are evaluated once their
    # instant is complete: their next event is later, a deadline of theirs fires, or their
    # lane's clock passes it (a tick), even if a read of the stream split them.

    def _on_tick(self, tick: Tick, out: list[ShardOutput]) -> None:
        """A lane's clock moved to ``tick.at``: the lane's instants before it are complete (and
        the one at it, when ``inclusive``), and its deadlines up to it fire. A live tick ends
        each read: the live customers' instants read so far are evaluated now."""
        if tick.end:
            self._end_lane(tick.lane, out)
            return
        lane = self.state.lane(tick.lane)
        lane.advance(tick.at, tick.inclusive)
        live = tick.lane == LIVE
        lane_of = self.state.lane_of
        for customer_id, waiting in list(self.state.pending.items()):
            if lane_of.get(customer_id, LIVE) == tick.lane and (live or lane.passed(waiting.at)):
                try:
                    self._flush(customer_id)
                except Exception as error:
                    self._quarantine(customer_id, error)
        self.fire(tick.lane, tick.at, inclusive=tick.inclusive)
        if live:
            self._end_stalled_lanes(tick.at, out)
            self.state.rewinds.expire(tick.at, self._rewind_ms)
        else:
            lane.seen = self.state.lanes[LIVE].at

    def _end_lane(self, name: str, out: list[ShardOutput]) -> None:
        """A replay is done: its customers go over to the live clock, and what is due fires."""
        if name == LIVE or self.state.lanes.pop(name, None) is None:
            return
        live = self.state.lanes[LIVE]
        for customer_id in [c for c, lane in self.state.lane_of.items() if lane == name]:
            if customer_id in self.state.pending:
                try:
                    self._flush(customer_id)
                except Exception as error:
                    self._quarantine(customer_id, error)
            del self.state.lane_of[customer_id]
            deadline = self.state.scheduled.get(customer_id)
            if deadline is not None:
                heapq.heappush(live.heap, (deadline, customer_id))
        if live.at is not None:
            self.fire(LIVE, live.at, inclusive=live.inclusive)

    def _end_stalled_lanes(self, now: int, out: list[ShardOutput]) -> None:
        for name, lane in list(self.state.lanes.items()):
            if name != LIVE and lane.seen is not None and now - lane.seen > REPLAY_STALL_MS:
                self._end_lane(name, out)

    def _on_event(
        self, customer_id: str, event: StreamEntry, when: int, out: list[ShardOutput]
    ) -> None:
        """A customer's event: what was due before it fires, then it applies (a late one goes
        to failed events), and an identity it links is asked to merge into this customer."""
        state = self.state
        saved = state.saved(customer_id)
        customer = state.customer(customer_id)
        if customer is None:
            customer = CustomerFeatures(self.catalogue)
            state.add(customer_id, customer)
        if customer.is_late(when, self.catalogue.allowed_lateness_ms):
            out.append(self._on_late(event, customer.newest or when))
            return
        lane = event.get("replay") or LIVE
        behind = lane == LIVE and _behind(customer, when)
        if behind:
            if self._correct(customer_id, event):
                self._ask_merge(customer_id, event, when, out)
                return
            state.rewinds.drop(customer_id)  # no saved state before it: counted as of now
        if (customer.newest is None or when >= customer.newest) and state.lane_of.get(
            customer_id, LIVE
        ) != lane:
            self._join_lane(customer_id, lane)
        pending = state.pending
        waiting = pending.get(customer_id)
        if waiting is not None and waiting.at != max(when, customer.newest or when):
            self._flush(customer_id)  # before its deadlines up to now fire
            waiting = None
        deadline = state.scheduled.get(customer_id)
        if deadline is not None and deadline < when:
            self._fire_own(customer_id, when)  # what was due before this event
        rewind = None
        if lane != LIVE:  # a replay's event: the replay has come to its instant
            clock = state.lane(lane)
            if clock.heap and clock.heap[0][0] < when:
                self.fire(lane, when, inclusive=False)
            clock.seen = state.lanes[LIVE].at
        elif not behind:
            rewind = self._rewind_for(customer_id, customer, waiting, saved)
        name = customer.apply(event)
        if rewind is not None:
            rewind.applied(event, customer.newest or when, self.catalogue.allowed_lateness_ms)
        if waiting is None:
            waiting = pending[customer_id] = _Pending(customer.newest or when)
        if name or event["type"] == "identify":
            waiting.events.append(event)
        if event["type"] in ("identify", "alias"):
            self._ask_merge(customer_id, event, when, out)

    def _ask_merge(
        self, customer_id: str, event: StreamEntry, when: int, out: list[ShardOutput]
    ) -> None:
        """An identity the event links to this customer is asked to merge into them."""
        other = _merged_by(event)
        if other is not None:
            request: StreamEntry = {
                "type": MERGE,
                "customer_id": other,
                "into": customer_id,
                "timestamp": when,
                "message_id": f"merge:{event['message_id']}",
            }
            out.append(self._relay(request, request["message_id"]))

    def _join_lane(self, customer_id: str, lane: str) -> None:
        """The customer's newest event came in ``lane``: their deadlines follow its clock."""
        lane_of = self.state.lane_of
        if lane_of.get(customer_id, LIVE) == lane:
            return
        if lane == LIVE:
            del lane_of[customer_id]
        else:
            lane_of[customer_id] = lane
            self.state.rewinds.drop(customer_id)  # a replay's events come in time order
        deadline = self.state.scheduled.get(customer_id)
        if deadline is not None:
            heapq.heappush(self.state.lane(lane).heap, (deadline, customer_id))

    # --- late events: a live customer's history replayed with it in its place ---------------

    @property
    def _rewind_ms(self) -> int:
        return max(self.catalogue.allowed_lateness_ms, REWIND_MIN_MS)

    def _rewind_for(
        self,
        customer_id: str,
        customer: CustomerFeatures,
        waiting: _Pending | None,
        saved: bytes | None,
    ) -> Rewind | None:
        """A live customer's rewind, about to take an in-order event: the state as evaluated
        so far is saved first when one is due (and none of their events wait); ``saved`` is
        that state serialized already, when the last snapshot has it unchanged."""
        if customer_id in self.state.lane_of:
            return None  # a replay's customer
        saving = waiting is None
        book = self.state.rewinds
        rewind = book.get(customer_id)
        if rewind is None:
            if customer.newest is None:
                rewind = Rewind([Anchor(None, None, frozenset(), None)])
            elif saving:
                rewind = Rewind([self._anchor(customer_id, customer, saved)])
            else:
                return None
        elif saving and rewind.due_anchor(customer.evaluated, self._rewind_ms):
            rewind.add_anchor(self._anchor(customer_id, customer, saved))
        book.touch(customer_id, rewind)
        return rewind

    def _anchor(self, customer_id: str, customer: CustomerFeatures, saved: bytes | None) -> Anchor:
        blob = saved if saved is not None else pickle.dumps(customer, pickle.HIGHEST_PROTOCOL)
        deadline = self.state.scheduled.get(customer_id)
        return Anchor(customer.evaluated, blob, customer.segments, deadline, customer.newest)

    def _correct(self, customer_id: str, event: StreamEntry) -> bool:
        """An event behind what the customer has been evaluated through: their history is
        replayed with it in its place, and what changed is a correction. False when that
        cannot be done (it then counts from the customer's newest instant).

        After the customer's newest event (a deadline of theirs fired past its instant), their
        state now is their state then: the timelines with and without it are stepped from
        there. Behind an event of theirs, the replay starts from a saved state
        (``pipelines.rewind``), if one before it is still kept."""
        when = int(event["timestamp"])
        rewind = self.state.rewinds.get(customer_id)
        if customer_id in self.state.pending:
            self._flush(customer_id)
        customer = self.state.live[customer_id]
        until = max(customer.evaluated or when, customer.newest or when)
        if customer.newest is not None and when > customer.newest:
            blob = pickle.dumps(customer, pickle.HIGHEST_PROTOCOL)
            start = CustomerFeatures.restore(blob, self.catalogue)
            _, deadline, _ = self._evaluate(start, when - 1)  # the segments just before it
            anchor = Anchor(when - 1, blob, start.segments, deadline, customer.newest)
            _, _, before = self._replay(start, anchor, [], until)
            replayed = CustomerFeatures.restore(blob, self.catalogue)
            events = [event]
            if rewind is None and customer_id not in self.state.lane_of:
                # Their history was let go (a quiet spell): it starts again here, so a second
                # late event, before this one, is replayed with it and not counted as of now.
                rewind = Rewind([anchor])
            if rewind is not None:
                rewind.late(event)
        else:
            if rewind is None:
                return False
            found = rewind.late(event)
            if found is not None:
                anchor, before = found, rewind.emitted_since(found)
            else:
                stepped = self._step_back(rewind, when)
                if stepped is None:
                    return False
                anchor, before = stepped
            if anchor.blob is None:
                replayed = CustomerFeatures(self.catalogue)
            else:
                replayed = CustomerFeatures.restore(anchor.blob, self.catalogue)
            events = rewind.since(anchor)
        replayed.segments, replayed.evaluated = anchor.segments, anchor.at
        self.state.live[customer_id] = replayed
        self.state.changed.add(customer_id)
        _, deadline, after = self._replay(replayed, anchor, events, until)
        retracted, kept, added = differences(before, after)
        if rewind is not None:
            rewind.replace_since(anchor.at, kept)
            self.state.rewinds.touch(customer_id, rewind)
        self._schedule(customer_id, deadline)
        draft = self._draft(customer_id, until)
        if event_name(event) is not None or event["type"] == "identify":
            draft.events.append(event)
        if retracted:  # one this batch emitted is never written (the sink retracts first)
            draft.transitions = [t for t in draft.transitions if t not in retracted]
        draft.transitions += added
        if retracted or added:
            draft.corrections.append(
                Correction(event["message_id"], when, tuple(retracted), tuple(added))
            )
        return True

    def _step_back(self, rewind: Rewind, when: int) -> tuple[Anchor, list[Transition]] | None:
        """No saved state is from before ``when``, but one holds no event after it: the
        customer was quiet, and deadlines of theirs fired past ``when`` (a rewind started
        after a quiet spell saves the state as evaluated through the wall clock). That state
        evaluated again just before ``when`` is one to replay from; it replaces the saved
        ones from there. Also the transitions written since: from the deadlines stepped over
        (before the rewind kept what it emitted) and the ones the rewind kept after."""
        index = rewind.holding_none_after(when)
        if index is None:
            return None
        found = rewind.anchors[index]
        assert found.blob is not None, "an anchor with an event before it has a state"
        assert found.at is not None
        start = CustomerFeatures.restore(found.blob, self.catalogue)
        _, deadline, _ = self._evaluate(start, when - 1)  # the segments just before it
        anchor = Anchor(when - 1, found.blob, start.segments, deadline, found.newest)
        _, _, stepped = self._replay(start, anchor, [], found.at)
        rewind.anchors[index:] = [anchor]
        return anchor, stepped + [t for t in rewind.emitted if t.at > found.at]

    def _replay(
        self, customer: CustomerFeatures, anchor: Anchor, events: list[StreamEntry], until: int
    ) -> tuple[dict[str, Any], int | None, list[Transition]]:
        """Apply ``events`` (in event-time order) after ``anchor`` as an in-order stream would,
        deadlines firing between them, through ``until``: the features then, the next
        deadline after it, and every transition on the way."""
        deadline, found = anchor.deadline, list[Transition]()
        for instant, together in itertools.groupby(events, key=lambda e: int(e["timestamp"])):
            deadline = self._fire_replayed(customer, deadline, instant, found)
            for event in together:
                customer.apply(event)
            _, deadline, changes = self._evaluate(customer, instant)
            found += changes
        deadline = self._fire_replayed(customer, deadline, until + 1, found)
        features, deadline, changes = self._evaluate(customer, until)
        found += changes
        return features, deadline, found

    def _fire_replayed(
        self, customer: CustomerFeatures, deadline: int | None, before: int, found: list[Transition]
    ) -> int | None:
        """In a replay, the deadlines before ``before`` fire (their transitions into ``found``);
        the next one after them."""
        while deadline is not None and deadline < before:
            customer.expire(customer.newest or deadline)
            _, deadline, changes = self._evaluate(customer, deadline)
            found += changes
        return deadline

    def _fire_own(self, customer_id: str, before: int) -> None:
        """The customer's own deadlines before ``before`` (an event of theirs at it)."""
        scheduled = self.state.scheduled
        while (deadline := scheduled.get(customer_id)) is not None and deadline < before:
            self._fire_deadline(customer_id, deadline)

    def _fire_deadline(self, customer_id: str, deadline: int) -> None:
        """The customer's deadline fires: their snapshot at its own instant."""
        del self.state.scheduled[customer_id]
        customer = self.state.customer(customer_id)
        assert customer is not None, "a deadline outlived its customer"
        customer.expire(customer.newest or deadline)
        self._changed(customer_id, deadline, customer.read(deadline), look_ahead=True)

    @staticmethod
    def _on_late(event: StreamEntry, newest: int) -> LateEvent:
        """An event more than the allowed lateness behind its customer's newest: refused, to
        failed events (reason ``late``)."""
        return LateEvent(event, newest)

    def _on_erase(self, customer_id: str, out: list[ShardOutput]) -> None:
        """Forget the customer (GDPR): their state, deadlines and what waits to be evaluated."""
        self.state.pending.pop(customer_id, None)
        self.state.merged.pop(customer_id, None)
        self._drafts.pop(customer_id, None)  # never written: the sink deletes them
        out.append(Erased(customer_id, self._erase(customer_id)))

    def _on_merged_away(self, entry: StreamEntry, into: str, out: list[ShardOutput]) -> None:
        """An entry for a customer merged away: it is the other's now, forwarded there.

        A state moving to its owner (an absorb) carries the ids it passed (``path``). Two
        identities that name each other before either merge is done (``alias x -> y`` and
        ``alias y -> x`` in one batch) are each merged into the other: their states would go
        round for ever, with no one left to take them. A state that comes to a customer whose
        own merge points back along its path has found such a cycle: its member with the
        least id takes every state of the cycle (each member finds the same cycle and the same
        owner, whatever the order), and what the others' keys hold moves to it."""
        if entry["type"] == MERGE:
            return
        customer_id = entry["customer_id"]
        forwarded: StreamEntry = {**entry, "customer_id": into}
        marker = f"forward:{entry['message_id']}"
        if entry["type"] == ABSORB:
            path = [*entry.get("path", [entry["from"]]), customer_id]
            if into in path and min(path[path.index(into) :]) == customer_id:  # its owner
                del self.state.merged[customer_id]
                self._on_absorb(customer_id, entry, out)
                return
            forwarded["path"] = path
            marker = f"forward:{len(path)}:{entry['message_id']}"  # one per hop
        out.append(self._relay(forwarded, marker))

    def _relay(self, entry: StreamEntry, marker: str) -> Relay:
        partition = partition_of(entry["customer_id"], self.partitions)
        return Relay(partition, entry, marker)

    def _on_merge(self, customer_id: str, request: StreamEntry, out: list[ShardOutput]) -> None:
        """Hand this (anonymous) customer's state to ``request["into"]`` through its partition
        (an ``absorb`` entry), forget it here, and forward whatever still comes for it; the
        sink moves their recent events and transitions to the other's lists."""
        into = request["into"]
        if into == customer_id:
            return
        if customer_id in self.state.pending:
            self._flush(customer_id)
        self._settle(out)  # what they did is written before it moves to ``into``
        self.state.merged[customer_id] = into
        customer = self.state.customer(customer_id)
        if customer is None:
            return  # nothing known yet: later events are forwarded
        blob = pickle.dumps(customer, pickle.HIGHEST_PROTOCOL)
        out.append(Merged(customer_id, into, self._erase(customer_id)))
        absorb: StreamEntry = {
            "type": ABSORB,
            "customer_id": into,
            "from": customer_id,
            "timestamp": request["timestamp"],
            "message_id": f"absorb:{request['message_id']}",
            "state": base64.b64encode(blob).decode(),
        }
        out.append(self._relay(absorb, absorb["message_id"]))

    def _on_absorb(self, customer_id: str, entry: StreamEntry, out: list[ShardOutput]) -> None:
        """Merge another identity's state into this customer: the features are as if every
        event had carried this customer's id (``CustomerFeatures.merge``), and so are the
        segments from here on."""
        if customer_id in self.state.pending:
            self._flush(customer_id)
        other = CustomerFeatures.restore(base64.b64decode(entry["state"]), self.catalogue)
        path = entry.get("path")
        if path and len(path) > 1 and path[1] != customer_id:
            # the state came through customers merged away (a chain, or a cycle): the sink
            # moved what the other had (events, transitions, memberships) to the first of
            # them; from there it is this customer's
            out.append(Merged(path[1], customer_id, other.segments))
        self.state.rewinds.drop(customer_id)  # their history is two histories now
        customer = self.state.customer(customer_id)
        if customer is None:
            customer = other
            self.state.add(customer_id, customer)
        else:
            customer.merge(other)
            # In the segments either was in (the sink moved the other's transitions and
            # memberships here): what the merged history changes is a transition now.
            customer.segments |= other.segments
        now = customer.newest or int(entry["timestamp"])  # like an event of theirs: deadlines
        self._changed(customer_id, now, customer.read(now))  # after it fire

    def _follow(self, current: RuleSet) -> None:
        """Run ``current`` from now on; every customer is re-evaluated under it (a few
        thousand per batch), entering and leaving segments at each customer's clock.

        Features a new rule reads start counting now: the state keeps only what the rules it
        ran under asked for. A recovered shard already under this revision changes nothing."""
        if current.revision == self.state.revision:
            return
        if self.state.revision is not None or len(self.state):
            self.state.stale = self.state.customer_ids()
        self.state.revision = current.revision
        self.state.rewinds.clear()  # saved states are evaluated under the rules before
        if current.compiled is self.rules:
            return
        self.rules = current.compiled
        self.catalogue = catalogue_for(current.compiled, self.catalogue.allowed_lateness_ms)
        self.state.catalogue = self.catalogue
        for customer in self.state.live.values():
            customer.adopt(self.catalogue)
        self.state.changed.update(self.state.live)  # their snapshots are not what they are

    def _follow_model(self, model: ClusterModel | None) -> None:
        """Assign by ``model`` from now on; every customer is re-assigned under it (with the
        re-evaluation of the rules, a few thousand per batch), at their own clock."""
        if model is self.model:
            return
        self.model = model
        clusters = [] if model is None else model.clusters
        self._cluster_members = [membership(c.id) for c in clusters]
        self._cluster_names = [frozenset((c.id, c.name)) for c in clusters]
        version = None if model is None else model.version
        if version == self.state.cluster_version:
            return  # a recovered shard already assigned under it
        self.state.cluster_version = version
        waiting = set(self.state.stale)
        self.state.stale += [c for c in self.state.customer_ids() if c not in waiting]

    def _reevaluate(self, most: int) -> None:
        """Re-evaluate the next ``most`` stale customers; a record is written for those whose
        segments or outlier flag changed."""
        chunk, self.state.stale = self.state.stale[:most], self.state.stale[most:]
        for customer_id in chunk:
            try:
                self._reevaluate_one(customer_id)
            except Exception as error:
                self._quarantine(customer_id, error)

    def _reevaluate_one(self, customer_id: str) -> None:
        customer = self.state.customer(customer_id)
        if customer is None:
            return  # erased since
        at = max(self.state.clock_of(customer_id).at or 0, customer.newest or 0)
        outlier = customer.outlier
        observed = customer.read(at)
        self._changed(customer_id, at, observed, quiet=True)
        if self.model is not None and not self._assign_each:
            moved = self._assign(customer, at, observed[0])
            if moved:
                self._draft(customer_id, at).transitions += moved
        if customer.outlier != outlier and self.model is not None:
            self._draft(customer_id, at)
        if (
            self.model is not None
            and not self._assign_each
            and customer_id not in self._drafts  # (its record schedules it: ``_settle``)
            and customer_id not in self.state.pending
        ):
            self._schedule_move(customer_id, customer, at)

    def _flush(self, customer_id: str) -> None:
        """Evaluate a customer's events applied at one instant, recomputing what they feed."""
        pending = self.state.pending[customer_id]
        customer = self.state.customer(customer_id)
        assert customer is not None, "pending events outlived their customer"
        draft = self._changed(customer_id, pending.at, customer.read(pending.at))
        assert draft is not None
        del self.state.pending[customer_id]  # (after: an error keeps them, ``_quarantine``)
        draft.events += pending.events

    def _quarantine(
        self, customer_id: str, error: Exception, entry: StreamEntry | None = None
    ) -> None:
        """Applying ``entry`` to the customer, or evaluating them, raised ``error``: the rest
        of the shard goes on. Their state goes back to their last snapshot's (what they did
        since is left out of their features), or starts afresh when they were set aside
        before since that snapshot or have none; it keeps the segments the sink last wrote
        for them, and is evaluated again as a stale customer's is, so what it changes comes
        out as transitions (no exit is lost, no enter doubled). The entry, and the events
        applied but not yet evaluated, are kept in failed events (``Unprocessable``). Too many
        within ``QUARANTINE_WINDOW_S`` in the shard, or memory running out, is no one
        customer's doing: raised on."""
        if isinstance(error, MemoryError):
            raise error
        now = time.monotonic()
        times = self._quarantined_at
        while times and now - times[0] > QUARANTINE_WINDOW_S:
            times.popleft()
        times.append(now)
        if len(times) > QUARANTINED_MOST:
            raise RuntimeError(
                f"{len(times)} customers set aside within {QUARANTINE_WINDOW_S:.0f} s: "
                "not one customer's events"
            ) from error
        state = self.state
        was = state.live.pop(customer_id, None)
        draft = self._drafts.pop(customer_id, None)
        written = None if was is None else _undone(was.segments, draft)
        state.changed.discard(customer_id)
        state.idle.pop(customer_id, None)
        waiting = state.pending.pop(customer_id, None)
        state.scheduled.pop(customer_id, None)
        state.rewinds.drop(customer_id)
        blob = None if customer_id in self._quarantined else state.frozen.get(customer_id)
        restored = None
        if blob is not None:
            with contextlib.suppress(Exception):  # (the snapshot itself may be what fails)
                restored = CustomerFeatures.restore(blob, self.catalogue)
        outcome = "went back to their last snapshot's"
        if restored is None:
            restored, outcome = CustomerFeatures(self.catalogue), "starts afresh"
        if written is not None:
            restored.segments = written
        state.add(customer_id, restored)
        self._quarantined.add(customer_id)
        state.stale.append(customer_id)  # evaluated again: deadlines, segments
        log.error(
            "customer %r set aside: %s while %s; their state %s",
            customer_id,
            type(error).__name__,
            "applying their event" if entry is not None else "evaluating them",
            outcome,
            exc_info=error,
        )
        said = f"{f'{type(error).__name__}: {error}'[:500]}; the customer's state {outcome}"
        kept = [] if waiting is None else [e for e in waiting.events if e is not entry]
        if entry is not None:
            kept.insert(0, entry)
        self._set_aside += [Unprocessable(event, said) for event in kept]

    def _erase(self, customer_id: str) -> frozenset[str]:
        """Forget the customer: state and pending deadlines; return the segments they left."""
        customer = self.state.customer(customer_id)
        segments = customer.segments if customer is not None else frozenset()
        self.state.forget(customer_id)
        self.state.scheduled.pop(customer_id, None)
        self.state.lane_of.pop(customer_id, None)
        self.state.rewinds.drop(customer_id)
        self.state.drop_mentions(customer_id)
        return segments

    def _changed(
        self,
        customer_id: str,
        now: int,
        observed: tuple[dict[str, Any], int | None],
        *,
        quiet: bool = False,
        look_ahead: bool = False,
    ) -> _Draft | None:
        """The customer evaluated at ``now``: the segments they are in then, their next
        deadline put on the heap, and the transitions into their record of the batch (which
        is returned; a ``quiet`` re-evaluation that changed nothing makes none).

        Every applied event and every deadline changes a value (a deadline is, by
        construction, an instant at which a value the rules or the cluster model read can
        move them: ``_watch``; a rule's time-since threshold turning; the model's next move,
        or the end of a look for it: ``_next_move``). ``look_ahead``: a deadline's
        evaluation (the customer quiet since), which looks for the model's next move."""
        customer = self.state.live[customer_id]
        _, deadline, transitions = self._segment(customer, now, observed, look_ahead=look_ahead)
        if transitions:
            rewind = self.state.rewinds.get(customer_id)
            if rewind is not None:
                rewind.emitted += transitions
        if deadline is not None:
            queued = self.state.scheduled.get(customer_id)
            if queued is None or deadline < queued or queued <= now:
                self.state.scheduled[customer_id] = deadline
                heapq.heappush(self.state.clock_of(customer_id).heap, (deadline, customer_id))
        draft = self._drafts.get(customer_id)
        if draft is None:
            if quiet and not transitions:
                return None  # a re-evaluation that changed nothing writes nothing
            draft = self._drafts[customer_id] = _Draft(now)
        elif now > draft.at:
            draft.at = now
        draft.transitions += transitions
        return draft

    def _draft(self, customer_id: str, at: int) -> _Draft:
        """The customer's record of this batch, as of ``at`` or later."""
        draft = self._drafts.get(customer_id)
        if draft is None:
            draft = self._drafts[customer_id] = _Draft(at)
        elif at > draft.at:
            draft.at = at
        return draft

    def _settle(self, out: list[ShardOutput]) -> None:
        """The batch's profile records, one per changed customer, as of their last
        evaluation: the sink writes a customer's last profile only, so the values of the
        evaluations before it are never copied (every transition is kept, with its instant)."""
        if not self._drafts:
            return
        live, with_model = self.state.live, self.model is not None
        at_record = with_model and not self._assign_each
        scheduled, pending = self.state.scheduled, self.state.pending
        drafts, self._drafts = self._drafts, {}
        for customer_id, draft in drafts.items():
            customer = live.get(customer_id)
            if customer is None:
                continue  # merged away, its records before were settled
            try:
                # the changes until the customer's next evaluation (events waiting for their
                # instant are evaluated at it); at the first one left out, an evaluation refreshes
                next_evaluation = scheduled.get(customer_id)
                until: float = math.inf if next_evaluation is None else next_evaluation
                waiting = pending.get(customer_id)
                if waiting is not None:  # their evaluation comes at its instant, with a record:
                    until = min(until, waiting.at - 1)  # no refresh may come before it (its
                    # events are applied already, and a deadline of theirs fires before them)
                features, changes, left_out = customer.record_at(
                    draft.at, min(until, draft.at + CHANGES_AHEAD_MS), CHANGE_INSTANTS_KEPT
                )
                if (
                    waiting is None
                    and left_out is not None
                    and left_out <= until
                    and left_out != next_evaluation
                ):
                    self._schedule(customer_id, left_out)
                if at_record:
                    draft.transitions += self._assign(customer, draft.at, features)
                    if waiting is None:
                        self._schedule_move(customer_id, customer, draft.at)
                out.append(
                    ProfileUpdate(
                        customer_id,
                        draft.at,
                        features,
                        dict(customer.traits),
                        events=tuple(draft.events),
                        segments=customer.segments,
                        transitions=tuple(draft.transitions),
                        outlier=customer.outlier if with_model else None,
                        corrections=tuple(draft.corrections),
                        changes=tuple(changes),
                    )
                )
            except Exception as error:
                self._quarantine(customer_id, error)

    def _evaluate(
        self, customer: CustomerFeatures, now: int
    ) -> tuple[dict[str, Any], int | None, tuple[Transition, ...]]:
        return self._segment(customer, now, customer.read(now))

    def _segment(
        self,
        customer: CustomerFeatures,
        now: int,
        observed: tuple[dict[str, Any], int | None],
        *,
        look_ahead: bool = False,
    ) -> tuple[dict[str, Any], int | None, tuple[Transition, ...]]:
        """The segments the customer is in at ``now`` (changed in place, with the transitions),
        and the next instant anything can change: a feature's deadline or a rule's flip."""
        features, deadline = observed
        transitions: tuple[Transition, ...] = ()
        member, clusters, kept = None, _NO_CLUSTERS, False
        before = customer.segments
        if self.model is not None:
            if self._assign_each:
                assigned = customer.assignment = self.model.follow(features, customer.assignment)
                customer.outlier = assigned.outlier
                if assigned.index is not None:
                    member = self._cluster_members[assigned.index]
                    clusters = self._cluster_names[assigned.index]
            else:  # assigned at the record (``_assign``): the cluster they are in stays
                kept = True
        if self.rules is not None:
            segments = Rulesets.for_thread(self.rules).segments(features, customer.traits, clusters)
        else:
            segments = frozenset(s for s in before if not s.startswith(CLUSTER_PREFIX))
        if member is not None:
            segments = self._with_cluster(segments, member)
        elif kept:  # most evaluations: the same two sets as a recent one's (``_kept``)
            joined = self._kept.get((segments, before))  # (empty for most: not ``or``)
            segments = self._with_kept_cluster(segments, before) if joined is None else joined
        if segments is not before and segments != before:
            transitions = self._transitions(before, segments, now)
            customer.segments = segments
        # an active customer's next event likely comes before the model would move them:
        # every change of its columns is watched, as the rules' are; at the deadline of one
        # quiet for a while the model's next move is looked for ahead
        walk = (
            look_ahead
            and self.model is not None
            and (customer.newest is None or now - customer.newest >= QUIET_BEFORE_LOOKING_MS)
        )
        watch = self._watch(with_model=self.model is not None and not walk)
        if watch is not None:  # the other deadlines only change what records carry
            deadline = customer.watched_deadline(now, watch)
        if self.rules is not None:
            flip = self.rules.next_flip(now, features)
            if flip is not None and (deadline is None or flip < deadline):
                deadline = flip
        if walk and watch is not None:
            move = self._next_move(customer, now, features, deadline)
            if move is not None:
                deadline = move
        elif self._assign_each and self.model is not None:
            # recency grows with the clock, unwatched: the model's move by it alone is solved
            until = math.inf if deadline is None else deadline
            move = self.model.recency_move(customer.assignment, now, until)
            if move is not None:
                deadline = move
        if customer.evaluated is None or now > customer.evaluated:
            customer.evaluated = now
        return features, deadline, transitions

    def _watch(self, *, with_model: bool) -> Watch | None:
        """The deadlines that can change a segment or a trigger: of the windowed and session
        features the rules compare (a count only where it crosses a threshold, ``Watch``);
        ``with_model``: and every change of what the cluster model's columns read (a move of
        the model is otherwise found by looking ahead: ``_next_move``)."""
        if self.every_deadline:
            return None
        found = self._watching
        if found is None or found[0] is not self.rules:
            found = self._watches()
        return found[2] if with_model else found[1]

    def _watches(self) -> tuple[CompiledRules | None, Watch, Watch, Watch]:
        """The watches for the current rules (and so the catalogue's plan): the rules', the
        rules' and the cluster model's columns', the columns' alone."""
        found = self._watching
        if found is None or found[0] is not self.rules:
            watched = {} if self.rules is None else self.rules.watched()
            columns = dict.fromkeys(CLUSTER_INPUTS)
            plan = self.catalogue.plan
            found = self._watching = (
                self.rules,
                Watch.of(plan, watched),
                Watch.of(plan, {**watched, **columns}),
                Watch.of(plan, columns),
            )
        return found

    def _next_move(
        self,
        customer: CustomerFeatures,
        now: int,
        features: dict[str, Any],
        before: int | None,
    ) -> int | None:
        """The first instant after ``now`` (and before ``before``, the customer's next
        evaluation) at which the model would assign them otherwise than at ``now`` (another
        cluster, or the outlier flag turned) with no new event: their values walked through
        the instants at which a column's input can change (its own window's exits, not those
        of the other windows of its log: ``CustomerFeatures.first_change``), assigned where
        one but recency did, and between them recency's own move solved
        (``ClusterModel.recency_move``). After ``MOVE_LOOKAHEAD`` instants without a move, the
        next one, to walk on from: a quiet customer is evaluated once in that many changes,
        not at each (only a deadline of a customer quiet for ``QUIET_BEFORE_LOOKING_MS`` looks
        ahead: ``_segment``)."""
        model = self.model
        assert model is not None
        until = math.inf if before is None else before
        here = customer.assignment = model.follow(features, customer.assignment)
        at_now = (here.index, here.outlier)
        inputs_before = steady_inputs(features)
        walking = here  # copied (``scratch``) before the walk first changes it
        read_at = now  # the instant ``walking``'s inputs were read at

        def moved(at: int, values: dict[str, Any], bound: float) -> int | None:
            nonlocal walking, inputs_before, read_at
            given = steady_inputs(values)  # (recency moves at every instant)
            if given != inputs_before:
                inputs_before, read_at = given, at
                own = walking is here
                walking = model.follow(values, model.scratch(here) if own else walking)
                if (walking.index, walking.outlier) != at_now:
                    return at
            return model.recency_move(walking, read_at, bound)

        by_recency = model.recency_move(here, now, until)
        if by_recency is not None:
            until = by_recency  # the walk looks for an earlier move
        found = customer.first_change(now, self._watches()[3], until, MOVE_LOOKAHEAD, moved)
        return by_recency if found is None else found

    def _with_cluster(self, segments: frozenset[str], member: str) -> frozenset[str]:
        key = (segments, member)
        joined = self._joined.get(key)
        if joined is None:
            if len(self._joined) >= JOINED_KEPT:
                self._joined.clear()
            joined = self._joined[key] = segments | {member}
        return joined

    def _with_kept_cluster(
        self, segments: frozenset[str], before: frozenset[str]
    ) -> frozenset[str]:
        """``segments`` with the cluster pseudo-segment of ``before`` (``before`` itself when
        that is the same: unchanged memberships are found by identity)."""
        key = (segments, before)
        joined = self._kept.get(key)
        if joined is None:
            if len(self._kept) >= JOINED_KEPT:
                self._kept.clear()
            member = _cluster_member(before)
            joined = segments if member is None else self._with_cluster(segments, member)
            if joined == before:
                joined = before
            self._kept[key] = joined
        return joined

    def _assign(
        self, customer: CustomerFeatures, now: int, features: dict[str, Any]
    ) -> tuple[Transition, ...]:
        """Assign the customer at ``now`` by the model when no rule reads clusters: once per
        record, at its instant (the customer's last evaluation in the read), not at every
        snapshot; a move is a transition at that instant."""
        assert self.model is not None
        assigned = customer.assignment = self.model.follow(features, customer.assignment)
        customer.outlier = assigned.outlier
        member = None if assigned.index is None else self._cluster_members[assigned.index]
        before = customer.segments
        if _cluster_member(before) == member:
            return ()
        segments = frozenset(s for s in before if not s.startswith(CLUSTER_PREFIX))
        if member is not None:
            segments = self._with_cluster(segments, member)
        customer.segments = segments
        return self._transitions(before, segments, now)

    def _schedule_move(self, customer_id: str, customer: CustomerFeatures, at: int) -> None:
        """The customer's move by recency alone (assigned at ``at``, at a record: ``_assign``)
        is their next evaluation when it comes before the one queued."""
        assert self.model is not None
        queued = self.state.scheduled.get(customer_id)
        until = math.inf if queued is None or queued <= at else queued
        move = self.model.recency_move(customer.assignment, at, until)
        if move is not None:
            self._schedule(customer_id, move)

    def _schedule(self, customer_id: str, deadline: int | None) -> None:
        """The customer's next deadline is ``deadline``, whatever was queued."""
        if deadline is None:
            self.state.scheduled.pop(customer_id, None)
            return
        self.state.scheduled[customer_id] = deadline
        heapq.heappush(self.state.clock_of(customer_id).heap, (deadline, customer_id))

    def _transitions(
        self, before: frozenset[str], after: frozenset[str], now: int
    ) -> tuple[Transition, ...]:
        found = []
        for kind, segments in (("exit", before - after), ("enter", after - before)):
            for segment in sorted(segments):
                if segment.startswith(CLUSTER_PREFIX):
                    version = 0 if self.model is None else self.model.version
                    found.append(Transition(segment, kind, now, version))
                    continue
                active = None if self.rules is None else self.rules.rules.get(segment)
                if active is None:  # a rule since disabled or deleted: its segment is left
                    found.append(Transition(segment, kind, now, 0))
                else:
                    actions = active.actions[kind]
                    found.append(Transition(segment, kind, now, active.version, actions))
        return tuple(found)

    def fire(self, lane: str, now: int, *, inclusive: bool) -> None:
        """Snapshot every customer of ``lane`` whose deadline is before ``now`` (or at it:
        ``inclusive``), at the deadline's own instant."""
        heap = self.state.lane(lane).heap
        scheduled, lane_of = self.state.scheduled, self.state.lane_of
        while heap and (heap[0][0] < now or (inclusive and heap[0][0] == now)):
            deadline, customer_id = heapq.heappop(heap)
            if lane_of.get(customer_id, LIVE) != lane:
                continue  # gone over to another lane (its entry is in that lane's heap)
            try:
                if customer_id in self.state.pending:  # its changes come first, may move it
                    self._flush(customer_id)
                if scheduled.get(customer_id) != deadline:
                    continue  # erased, or an instant already fired
                self._fire_deadline(customer_id, deadline)
            except Exception as error:
                self._quarantine(customer_id, error)

    def on_eof(self) -> tuple[Iterable[Any], bool]:
        return [], StatefulBatchLogic.RETAIN

    def snapshot(self) -> ShardState:
        self._quarantined.clear()  # set aside since this snapshot: none yet
        return self.state


class _Draft:
    """A customer's changes in one batch, written as one record when the batch ends."""

    __slots__ = ("at", "corrections", "events", "transitions")

    def __init__(self, at: int) -> None:
        self.at = at  # the instant of their last evaluation
        self.events: list[StreamEntry] = []
        self.transitions: list[Transition] = []
        self.corrections: list[Correction] = []


class _Pending:
    """A customer's events applied at one instant, not yet evaluated."""

    __slots__ = ("at", "events")

    def __init__(self, at: int) -> None:
        self.at = at
        self.events: list[StreamEntry] = []


def _undone(segments: frozenset[str], draft: _Draft | None) -> frozenset[str]:
    """``segments`` with the transitions of ``draft`` (not written yet) taken back: what the
    sink last wrote."""
    if draft is None:
        return segments
    found = set(segments)
    for transition in reversed(draft.transitions):
        if transition.kind == "enter":
            found.discard(transition.segment)
        else:
            found.add(transition.segment)
    return frozenset(found)


def _behind(customer: CustomerFeatures, when: int) -> bool:
    """Whether an event at ``when`` comes after the customer's later events, or after their
    evaluation past its instant (a deadline fired, or its instant was evaluated already)."""
    newest, evaluated = customer.newest, customer.evaluated
    return (newest is not None and when < newest) or (evaluated is not None and when <= evaluated)


def _cluster_member(segments: frozenset[str]) -> str | None:
    """The cluster pseudo-segment among ``segments`` (``membership``), if any."""
    for segment in segments:
        if segment.startswith(CLUSTER_PREFIX):
            return segment
    return None


def reads_clusters(rules: CompiledRules) -> bool:
    """Whether a rule of ``rules`` has a ``cluster:`` condition."""
    return any(
        source.kind == "cluster"
        for layer in rules.layers
        for ruleset in layer
        for source in ruleset.layout.fields
    )


def _merged_by(event: StreamEntry) -> str | None:
    """The other id an identify carrying both ids, or an alias, merges into this customer."""
    kind = event["type"]
    other = (
        event.get("anonymous_id")
        if kind == "identify" and event.get("user_id")
        else event.get("previous_id")
        if kind == "alias"
        else None
    )
    return other if other and other != event["customer_id"] else None


def _name_progress(item: tuple[str, Any]) -> Any:
    """The shard's output, its progress and profile updates named with the shard."""
    shard, value = item
    if isinstance(value, ShardProgress | ProfileUpdate):
        value.shard = shard
    return value


def get_flow(
    *,
    redis_url: str,
    partitions: int,
    catalogue: Catalogue,
    rules: CompiledRules | None = None,
    watcher: RuleWatcher | None = None,
    stop_at_end: bool = False,
    sink: Sink[Any] | None = None,
    recovery_dir: Path | None = None,
    clusters: ModelWatcher | None = None,
    cluster_snapshots: bool = False,
) -> Dataflow:
    """source -> features -> profile sink; ``stop_at_end`` for runs over a finished stream;
    ``sink`` replaces the Redis sink (tests read every update in order through it);
    ``recovery_dir``: the recovery store the run snapshots into (compacted after erasures);
    ``clusters``: the cluster model to assign by; ``cluster_snapshots``: the sink feeds the
    stream clusterer (``SEGFLOW_CLUSTERING=stream``)."""
    flow = Dataflow("segmentation")
    items = op.input(
        "events", flow, RedisStreamSource(redis_url, partitions, stop_at_end=stop_at_end)
    )
    # StreamEvent | Tick
    ticks = TickSpread(partitions)
    keyed: Any = op.flat_map_batch(
        "route", items, lambda batch: route_read(batch, partitions, ticks)
    )
    # (shard, [StreamEvent | Tick, ...]): the shard's part of a read, in order
    updates = op.stateful_batch(
        "features",
        keyed,
        lambda state: FeatureShard(catalogue, rules, state, watcher, partitions, clusters),
    )
    # (shard, ProfileUpdate | LateEvent | ShardProgress)
    named = op.map("name_progress", updates, _name_progress)
    # ProfileUpdate | LateEvent | ShardProgress (progress and updates with their shard)
    sink = sink or ProfileSink(
        redis_url,
        partitions=partitions,
        recovery_dir=recovery_dir,
        cluster_snapshots=cluster_snapshots,
    )
    op.output("profiles", named, sink)
    return flow


def prepare_rules(settings: Settings) -> None:
    """The database migrated and the shipped rules seeded (once ever): before the processes
    of a cluster start, which would otherwise race to seed them."""
    with migrated_session(settings) as session:
        seed(session=session)


def active_rules(settings: Settings) -> RuleWatcher:
    """A watcher of the rule set saved for these settings (the shipped rules seeded once)."""
    prepare_rules(settings)
    return RuleWatcher(make_engine(settings, pooled=False))


def segmentation_flow(
    settings: Settings,
    *,
    stop_at_end: bool = False,
    sink: Sink[Any] | None = None,
    recovery_dir: Path | None = None,
) -> Dataflow:
    """The flow with the active rules and the features they read, for these settings; it
    follows the rules saved through the admin API as they change."""
    url = settings.redis_url or os.environ["REDIS_URL"]
    watcher = active_rules(settings)
    current = watcher.current()
    return get_flow(
        redis_url=url,
        partitions=settings.partitions,
        catalogue=catalogue_for(current.compiled, settings.allowed_lateness_ms),
        rules=current.compiled,
        watcher=watcher,
        stop_at_end=stop_at_end,
        sink=sink,
        recovery_dir=recovery_dir,
        clusters=None if settings.clustering == "off" else ModelWatcher(redis.Redis.from_url(url)),
        cluster_snapshots=settings.clustering == "stream",
    )


def flow_from_env() -> Dataflow:
    """The flow `segflow up` runs, configured like every Segflow process (`segflow pipeline`
    names its recovery store in ``RECOVERY_DIR_ENV``)."""
    gc.set_threshold(*FLOW_GC_THRESHOLD)
    recovery = os.environ.get(RECOVERY_DIR_ENV)
    return segmentation_flow(
        get_settings(),
        stop_at_end=os.environ.get("SEGFLOW_STOP_AT_END") == "1",
        recovery_dir=Path(recovery) if recovery else None,
    )
