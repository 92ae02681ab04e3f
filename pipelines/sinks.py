"""Redis sinks. Bytewax recovery replays output after a crash, so every write is idempotent:
a profile is overwritten whole, recent events are sorted-set members (the same event twice is
one member), and a late event enters failed events once per messageId (a marker key in the
stream's slot guards the append)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hiredis
import orjson
import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA

from app.clustering.columns import inputs
from app.clustering.model import CLUSTER_PREFIX
from app.clustering.store import (
    MOVES_KEY,
    SNAPSHOT_ENTRIES_KEPT,
    SNAPSHOT_ROWS_PER_ENTRY,
    SNAPSHOTS_KEY,
)
from app.events import StreamEntry
from app.profiles import moves
from app.profiles.keys import (
    MOVES_INDEX_KEY,
    TRIGGERS_KEY,
    corrections_key,
    members_key,
    moves_key,
    profile_key,
    recent_events_key,
    retracted_key,
    transitions_key,
    trigger_id,
    trigger_marker_key,
)
from app.streams import (
    DELAY_MARKS_KEY,
    DELAY_SAMPLES_KEPT,
    DELAY_SAMPLES_KEY,
    EVENT_FIELD,
    FAILED_EVENTS_KEY,
    PROGRESS_KEY,
    relay_marker_key,
    stats_key,
    stream_key,
)
from pipelines.erasure import PENDING_KEY, UNDATED, ErasureFinisher, pending_field
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
from pipelines.recovery_files import NO_RECOVERY

RECENT_EVENTS = 20
TRANSITIONS_KEPT = 1_000  # per customer, the newest
CORRECTIONS_KEPT = 100  # per customer, the newest
TRIGGER_MARKER_TTL_S = 7 * 86_400
FAILED_MARKER_TTL_S = 86_400
RELAY_MARKER_TTL_S = 7 * 86_400

# One entry appended to a stream once (replayed output finds the marker); with a third key,
# a partition's stats, it is counted as accepted like the collector's entries.
# KEYS: stream, marker[, stats]; ARGV: marker TTL, then field, value, ...
_APPEND_ONCE = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
  if KEYS[3] then redis.call('HINCRBY', KEYS[3], 'accepted', 1) end
end
return 1
"""

# One call per written batch with live events, at most one every MEASURE_EVERY_S per sink,
# after its writes on the same connection (so Redis runs it once they are applied): a shard's
# newest accept time that is newer than the one measured before (not output replayed after a
# crash, nor streams read again) is measured, and the delay from the newest of those to now
# (Redis's clock) is kept with that instant.
# KEYS: samples, marks; ARGV: samples kept, then (shard, newest received_at) per shard.
# Live, the dataflow writes a batch every few events: measuring each cost Redis about 3.7 us
# of CPU per event at 5,000 events/s (an HGET and an HSET per shard of the batch), and kept
# only the last few seconds of the status page's 5 minutes in its 1,000 samples.
MEASURE_EVERY_S = 0.1
_MEASURE_DELAY = """
local newest = nil
for i = 2, #ARGV, 2 do
  local accepted = tonumber(ARGV[i + 1])
  local mark = redis.call('HGET', KEYS[2], ARGV[i])
  if not mark or accepted > tonumber(mark) then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    if not newest or accepted > newest then newest = accepted end
  end
end
if newest then
  local now = redis.call('TIME')
  local done = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  redis.call('LPUSH', KEYS[1], string.format('%d:%d', done, done - newest))
  redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[1]) - 1)
end
return 1
"""


_REPLY_BUFFER = 65_536  # bytes of replies taken off the socket at a time


class PackedPipeline:
    """Commands sent as one write packed by hiredis, on one connection, in order; the replies
    are read when the next batch is sent (or at ``flush``), so the sink does not wait for Redis
    to run a batch before the dataflow computes the next one.

    redis-py's pipeline spends about 20 us of Python per command packing arguments and parsing
    replies; this takes a fraction of that, and the sink is on the dataflow's hot path. An error
    reply surfaces one batch late, which is fine: the dataflow stops, and recovery replays the
    output since its last snapshot (every write here is idempotent)."""

    def __init__(self, client: redis.Redis, *scripts: str) -> None:
        self._client = client
        self._scripts = {
            source: hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
            for source in scripts
        }
        self._queued: list[bytes] = []
        self._sent: list[bytes] = []  # sent, replies not read yet
        self._buffer = bytearray(_REPLY_BUFFER)  # what the socket holds of their replies
        self._connection: Any = None
        # Loaded now: an EVALSHA the server does not know fails, and its reply is read only
        # with the next batch (one that may never come while the flow is idle).
        for source in self._scripts:
            client.script_load(source)

    def command(self, *args: Any) -> None:
        self._queued.append(hiredis.pack_command(args))

    def script(self, source: str, keys: list[str], args: list[Any]) -> None:
        self.command("EVALSHA", self._scripts[source], len(keys), *keys, *args)

    def send(self) -> None:
        """Read the previous batch's replies, then send what is queued."""
        self.flush()
        if not self._queued:
            return
        self._connection = self._client.connection_pool.get_connection()
        self._sent, self._queued = self._queued, []
        self._connection.send_packed_command([b"".join(self._sent)])

    def flush(self) -> None:
        """Wait for every reply to what was sent; load the scripts and send it again if the
        server lost them (a restart), which is safe as every write here is idempotent."""
        if self._connection is None:
            return
        connection, self._connection = self._connection, None
        pool = self._client.connection_pool
        try:
            _read_replies(connection, len(self._sent), self._buffer)  # raises on an error reply
        except redis.exceptions.NoScriptError:
            connection.disconnect()  # replies may be left unread: never reuse it
            for source in self._scripts:
                self._client.script_load(source)
            self._queued[:0] = self._sent
            self._sent = []
            self.send()
            self.flush()
        except BaseException:
            connection.disconnect()
            raise
        finally:
            pool.release(connection)
        self._sent = []


def _read_replies(connection: Any, count: int, buffer: bytearray) -> None:
    """Read ``count`` replies off ``connection``, raising the first error reply.

    redis-py's ``read_response`` spends about 0.7 us of Python on each reply (checks for
    pushes, disconnects from other threads, timeouts), this loop about 0.2: it feeds what the
    socket holds (through ``buffer``) to the connection's own hiredis reader and takes the
    replies out (the connection's ``_parser._reader`` and ``_sock``: redis-py's internals, at
    its pinned version). Should they change, ``read_response`` as before."""
    reader = getattr(connection._parser, "_reader", None)
    sock = connection._sock
    if not isinstance(reader, hiredis.Reader) or sock is None:
        for _ in range(count):
            connection.read_response()
        return
    read = 0
    while read < count:
        reply = reader.gets()
        if reply is _NOT_ENOUGH_DATA or reply is False:  # more bytes to come
            size = sock.recv_into(buffer)
            if size == 0:
                raise redis.exceptions.ConnectionError("Redis closed the connection")
            reader.feed(buffer, 0, size)  # type: ignore[arg-type]  # a bytearray, as redis-py feeds it
            continue
        read += 1
        if isinstance(reply, redis.exceptions.ResponseError):
            raise reply


def failed_marker_key(reason: str, message_id: str) -> str:
    """The marker that keeps one event in failed events once for ``reason`` (``late``, as
    the dataflow's markers always were, or ``unprocessable``)."""
    return f"{{{FAILED_EVENTS_KEY}}}:{reason}:{message_id}"


class _Batch:
    """What a run of sink items changes, per customer: a customer changes many times in a
    batch, and only their last profile is written, with every event of the batch in their
    recent events (unless they were erased after it)."""

    def __init__(self, accepted: dict[str, int] | None = None) -> None:
        self.profiles: dict[str, ProfileUpdate | None] = {}  # None: erased
        self.recent: dict[str, dict[bytes, int]] = {}
        # per customer, each transition member's last word: added (with it) or retracted
        self.transitions: dict[str, dict[bytes, tuple[Transition, bool]]] = {}
        self.corrections: dict[str, list[Correction]] = {}
        self.left: dict[str, frozenset[str]] = {}  # erased customers' segments
        self.progress: dict[str, bytes] = {}
        # per shard, its newest live event's received_at (shared by a call's batches)
        self.accepted: dict[str, int] = {} if accepted is None else accepted

    def add(self, item: ProfileUpdate | Erased) -> None:
        customer_id = item.customer_id
        if isinstance(item, Erased):
            self.profiles[customer_id] = None
            self.recent.pop(customer_id, None)
            self.transitions.pop(customer_id, None)
            self.corrections.pop(customer_id, None)
            self.left[customer_id] = item.segments
            return
        self.profiles[customer_id] = item
        if item.corrections or item.transitions:
            changes = self.transitions.setdefault(customer_id, {})
            # in their order: a correction's retractions, then the transitions (a late event's
            # added ones are among them)
            for correction in item.corrections:
                self.corrections.setdefault(customer_id, []).append(correction)
                for gone in correction.retracted:
                    changes[orjson.dumps(gone.shown())] = (gone, False)
            for transition in item.transitions:
                changes[orjson.dumps(transition.shown())] = (transition, True)
        if item.events:
            recent = self.recent.setdefault(customer_id, {})
            newest = self.accepted.get(item.shard, 0)
            for event in item.events:
                recent[_shown(event)] = int(event["timestamp"])
                if not event.get("replay"):  # the collector's (a replay's names its lane)
                    newest = max(newest, event.get("received_at") or 0)
            if newest:
                self.accepted[item.shard] = newest


class _SegmentMoves:
    """A batch's transitions of rule segments (``moves.kept``) by segment and kind, written to
    the segments' moves (``app.profiles.moves``) with a few commands a segment: those
    retracted removed, the others added, then each set trimmed to its bounds."""

    def __init__(self) -> None:
        # (segment, kind) -> (members removed, (at, member) added)
        self._changes: dict[tuple[str, str], tuple[list[str], list[tuple[int, str]]]] = {}

    def add(self, customer_id: str, transition: Transition, kept: bool) -> None:
        if not moves.kept(transition.segment):
            return  # a cluster's: counted by MOVES_KEY
        removed, added = self._changes.setdefault((transition.segment, transition.kind), ([], []))
        member = moves.member(customer_id, transition.at, transition.rule_version)
        if kept:
            added.append((transition.at, member))
        else:
            removed.append(member)

    def write(self, pipeline: PackedPipeline) -> None:
        if not self._changes:
            return
        for (segment, kind), (removed, added) in self._changes.items():
            key = moves_key(segment, kind)
            if removed:
                pipeline.command("ZREM", key, *removed)
            if added:
                pipeline.command("ZADD", key, *(x for pair in added for x in pair))
                # kept: the moves of the 2 days of event time before the newest written here
                # (a replay's old ones too, for as long), and the newest KEPT of those
                newest = max(at for at, _ in added)
                pipeline.command("ZREMRANGEBYSCORE", key, "-inf", f"({newest - moves.KEEP_MS}")
                pipeline.command("ZREMRANGEBYRANK", key, 0, -moves.KEPT - 1)
        pipeline.command("SADD", MOVES_INDEX_KEY, *{segment for segment, _ in self._changes})


class _Members:
    """A batch's changes of segment membership, one ``SADD`` and one ``SREM`` a segment (not
    one a customer and segment: a read's customers mostly enter and leave the same few), and
    the customers who moved between clusters in one ``ZADD`` (``MOVES_KEY``). A customer has
    one record in a batch, so each customer is named once per set."""

    def __init__(self) -> None:
        self._sets: dict[tuple[str, str], list[str]] = {}  # (verb, segment) -> customers
        self._moved: list[int | str] = []  # at, customer, at, customer, ...

    def add(self, customer_id: str, segment: str, inside: bool) -> None:
        self._sets.setdefault(("SADD" if inside else "SREM", segment), []).append(customer_id)

    def moved(self, customer_id: str, at: int) -> None:
        self._moved += (at, customer_id)

    def write(self, pipeline: PackedPipeline) -> None:
        for (verb, segment), customers in self._sets.items():
            pipeline.command(verb, members_key(segment), *customers)
        if self._moved:
            pipeline.command("ZADD", MOVES_KEY, *self._moved)


class _ProfilePartition(StatelessSinkPartition[Any]):
    def __init__(
        self,
        url: str,
        recovery_dir: Path | None,
        finisher: ErasureFinisher | None,
        cluster_snapshots: bool = False,
    ) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=10)
        self._redis = PackedPipeline(self._client, _APPEND_ONCE, _MEASURE_DELAY)
        self._recovery_dir = recovery_dir
        self._finisher = finisher
        self._cluster_snapshots = cluster_snapshots
        self._measured_at = -float("inf")  # time.monotonic() of the last delay measured

    def write_batch(self, items: list[Any]) -> None:
        batch = _Batch()
        accepted = batch.accepted  # the whole call's, across the batches it writes
        for item in items:
            if isinstance(item, ProfileUpdate | Erased):
                batch.add(item)
            elif isinstance(item, LateEvent):
                self._keep_late(item)
            elif isinstance(item, Unprocessable):
                self._keep_unprocessable(item)
            elif isinstance(item, Relay):
                self._redis.script(
                    _APPEND_ONCE,
                    [
                        stream_key(item.partition),
                        relay_marker_key(item.partition, item.marker),
                        stats_key(item.partition),
                    ],
                    [RELAY_MARKER_TTL_S, EVENT_FIELD, orjson.dumps(item.entry)],
                )
            elif isinstance(item, Merged):  # rare: what came before it is written first
                self._write(batch)
                batch = _Batch(accepted)
                self._move(item)
            elif isinstance(item, ShardProgress):
                batch.progress[item.shard] = orjson.dumps(
                    [item.processed, item.newest, item.partition, item.last_entry]
                )
            elif isinstance(item, ErasureSeen):  # finished once recovery is past it
                self._write(batch)  # after the profile's deletion
                batch = _Batch(accepted)
                field = pending_field(item.partition, item.entry_id)
                # the finisher dates it (this process never opens the recovery files)
                noted = NO_RECOVERY if self._recovery_dir is None else UNDATED
                self._redis.command("HSETNX", PENDING_KEY, field, noted)
        self._write(batch)
        now = time.monotonic()
        if accepted and now - self._measured_at >= MEASURE_EVERY_S:
            self._measured_at = now  # after the call's writes, on their connection
            self._redis.script(
                _MEASURE_DELAY,
                [DELAY_SAMPLES_KEY, DELAY_MARKS_KEY],
                [DELAY_SAMPLES_KEPT, *(x for pair in accepted.items() for x in pair)],
            )
        self._redis.send()

    def _write(self, batch: _Batch) -> None:
        erased = [customer_id for customer_id, update in batch.profiles.items() if update is None]
        listed = self._listed_transitions(erased) if erased else {}
        segment_moves, members = _SegmentMoves(), _Members()
        for customer_id, update in batch.profiles.items():
            if update is None:
                left = batch.left.get(customer_id, frozenset())
                self._forget(customer_id, left, listed.get(customer_id, ()))
                continue
            events = batch.recent.get(customer_id, {})
            changed = batch.transitions.get(customer_id)
            added: list[tuple[bytes, Transition]] = []
            retracted: list[tuple[bytes, Transition]] = []
            if changed:  # most customers of a batch have none
                for member, (transition, kept) in changed.items():
                    (added if kept else retracted).append((member, transition))
                    segment_moves.add(customer_id, transition, kept)
            self._write_profile(customer_id, update, events, retracted, added)
            if changed:
                for segment in {t.segment for t, _ in changed.values()}:  # where they are now
                    members.add(customer_id, segment, segment in update.segments)
                if _moved_cluster(added):
                    members.moved(customer_id, max(t.at for _, t in added))
            for _, transition in added:
                self._trigger(customer_id, transition)
            for _, transition in retracted:
                self._retract(customer_id, transition)
            for correction in batch.corrections.get(customer_id, ()):
                self._redis.command(
                    "ZADD",
                    corrections_key(customer_id),
                    correction.at,
                    orjson.dumps(correction.shown()),
                )
                self._trim(corrections_key(customer_id), CORRECTIONS_KEPT)
        members.write(self._redis)
        segment_moves.write(self._redis)
        if self._cluster_snapshots:
            self._snapshots(batch)
        if batch.progress:  # after the profiles, on the same connection: progress implies them
            progress = batch.progress.items()
            self._redis.command("HSET", PROGRESS_KEY, *(x for p in progress for x in p))

    def _write_profile(
        self,
        customer_id: str,
        update: ProfileUpdate,
        events: dict[bytes, int],
        retracted: list[tuple[bytes, Transition]],
        added: list[tuple[bytes, Transition]],
    ) -> None:
        """The profile, overwritten whole; the batch's events added to the recent events and
        the transitions late events retracted removed and the batch's added, each list in one
        command, then trimmed to its newest. Plain commands, not a script: Redis spent about
        11 us per call running one around the same commands, and every write here is
        idempotent, so a crash between them is mended when the dataflow replays its output."""
        redis_ = self._redis
        redis_.command(
            "HSET",
            profile_key(customer_id),
            "customer_id",
            customer_id,
            "at",
            update.at,
            "features",
            orjson.dumps(update.features),
            "traits",
            orjson.dumps(update.traits),
            "segments",
            orjson.dumps(sorted(update.segments)),
            "outlier",
            "" if update.outlier is None else "1" if update.outlier else "0",
            "changes",
            orjson.dumps(update.changes),
        )
        if events:
            recent = recent_events_key(customer_id)
            redis_.command(
                "ZADD", recent, *(x for member, at in events.items() for x in (at, member))
            )
            self._trim(recent, RECENT_EVENTS)
        if retracted or added:
            transitions = transitions_key(customer_id)
            if retracted:
                redis_.command("ZREM", transitions, *(member for member, _ in retracted))
            if added:
                redis_.command(
                    "ZADD", transitions, *(x for member, t in added for x in (t.at, member))
                )
                self._trim(transitions, TRANSITIONS_KEPT)

    def _snapshots(self, batch: _Batch) -> None:
        """The written profiles' column inputs, for the stream clusterer (``SNAPSHOTS_KEY``):
        a few rows an entry, the stream capped (replayed output adds rows again: a sample's
        weight, no harm)."""
        rows = [inputs(u.features) for u in batch.profiles.values() if u is not None]
        for start in range(0, len(rows), SNAPSHOT_ROWS_PER_ENTRY):
            self._redis.command(
                "XADD", SNAPSHOTS_KEY, "MAXLEN", "~", SNAPSHOT_ENTRIES_KEPT, "*",
                "rows", orjson.dumps(rows[start : start + SNAPSHOT_ROWS_PER_ENTRY]),
            )  # fmt: skip

    def _move(self, merged: Merged) -> None:
        """The anonymous customer's recent events, transitions and corrections join the known
        customer's lists (each transition marked ``merged_from``) and the known customer joins
        their segments' members, then their keys go.

        Their keys and the known customer's may be in different cluster slots, so this reads
        them (after what is queued is written) and writes the known customer's with plain
        commands. Replayed after a crash it moves again what was written again: the same
        members, so the lists are as before."""
        self._redis.send()
        self._redis.flush()
        anonymous, into = merged.customer_id, merged.into
        kept = (
            (recent_events_key, RECENT_EVENTS),
            (transitions_key, TRANSITIONS_KEPT),
            (corrections_key, CORRECTIONS_KEPT),
        )
        with self._client.pipeline(transaction=False) as pipe:
            for key, _ in kept:
                pipe.zrange(key(anonymous), 0, -1, withscores=True)
            found = pipe.execute()
        for (key, most), members in zip(kept, found, strict=True):
            if not members:
                continue
            if key is transitions_key:
                self._rekey_moves(anonymous, into, [member for member, _ in members])
                members = [(_moved(member, anonymous), score) for member, score in members]
            self._redis.command(
                "ZADD", key(into), *(x for member, score in members for x in (int(score), member))
            )
            self._trim(key(into), most)
        for segment in merged.segments:  # theirs too now: the absorb that follows this is
            self._redis.command("SADD", members_key(segment), into)  # evaluated from there
        self._forget(anonymous, merged.segments)

    def _rekey_moves(self, anonymous: str, into: str, listed: list[bytes]) -> None:
        """The segments' moves the anonymous customer's transitions list names become the
        known customer's (the same instants and rule versions)."""
        for key, members in moves.moves_of(anonymous, listed).items():
            self._redis.command("ZREM", key, *members)
            instants = [moves.parse(member)[:2] for member in members]
            renamed = [(at, moves.member(into, at, version)) for at, version in instants]
            self._redis.command("ZADD", key, *(x for pair in renamed for x in pair))

    def _listed_transitions(self, customer_ids: list[str]) -> dict[str, list[bytes]]:
        """The customers' transitions lists as written so far (what is queued is written
        first): erasures are rare, so reading here costs the flow nothing that matters."""
        self._redis.send()
        self._redis.flush()
        with self._client.pipeline(transaction=False) as pipe:
            for customer_id in customer_ids:
                pipe.zrange(transitions_key(customer_id), 0, -1)
            found: list[list[bytes]] = pipe.execute()
        return dict(zip(customer_ids, found, strict=True))

    def _trim(self, key: str, most: int) -> None:
        self._redis.command("ZREMRANGEBYRANK", key, 0, -most - 1)

    def _forget(
        self, customer_id: str, segments: frozenset[str], listed: Sequence[bytes] = ()
    ) -> None:
        """An erased customer: every key about them, one a call (they may be in different
        cluster slots), their place in every segment, and the segments' moves their
        transitions list (``listed``) names (``ErasureFinisher`` sweeps for any other)."""
        for key in (profile_key, recent_events_key, transitions_key, corrections_key):
            self._redis.command("DEL", key(customer_id))
        for segment in segments:
            self._redis.command("SREM", members_key(segment), customer_id)
        self._redis.command("ZREM", MOVES_KEY, customer_id)
        for moves_set, members in moves.moves_of(customer_id, listed).items():
            self._redis.command("ZREM", moves_set, *members)

    def _trigger(self, customer_id: str, transition: Transition) -> None:
        """Each action of an enter / exit, once in the triggers stream (replayed output finds
        its marker)."""
        for index, action in enumerate(transition.actions):
            send = action.get("send") or {}
            trigger = trigger_id(
                customer_id, transition.segment, transition.kind, transition.at, index
            )
            fields = {
                "trigger_id": trigger,
                "customer_id": customer_id,
                "segment": transition.segment,
                "kind": transition.kind,
                "at": transition.at,
                "rule_version": transition.rule_version,
                "destination": send.get("destination", ""),
                "template": send.get("template", ""),
                "send": orjson.dumps(send),  # and how: consent, caps, holdout, quiet hours
            }
            self._redis.script(
                _APPEND_ONCE,
                [TRIGGERS_KEY, trigger_marker_key(trigger)],
                [TRIGGER_MARKER_TTL_S, *(x for pair in fields.items() for x in pair)],
            )

    def _retract(self, customer_id: str, transition: Transition) -> None:
        """A late event retracted the transition: its actions' triggers are marked, and the
        dispatcher drops one still waiting (a rule's ``settle`` makes them wait)."""
        for index in range(len(transition.actions)):
            trigger = trigger_id(
                customer_id, transition.segment, transition.kind, transition.at, index
            )
            self._redis.command("SET", retracted_key(trigger), "1", "EX", TRIGGER_MARKER_TTL_S)

    def _keep_late(self, item: LateEvent) -> None:
        detail = (
            f"more than the allowed lateness behind the customer's newest event ({item.newest})"
        )
        self._keep_failed(item.event, "late", detail)

    def _keep_unprocessable(self, item: Unprocessable) -> None:
        self._keep_failed(item.event, "unprocessable", item.detail)

    def _keep_failed(self, event: StreamEntry, reason: str, detail: str) -> None:
        """``event`` into failed events, once (a replay after a restart emits it again)."""
        fields = {
            "received_at": event.get("received_at", 0),
            "reason": reason,
            "detail": detail,
            "source": event.get("source", ""),
            "raw": orjson.dumps(event).decode(),
        }
        self._redis.script(
            _APPEND_ONCE,
            [FAILED_EVENTS_KEY, failed_marker_key(reason, event["message_id"])],
            [FAILED_MARKER_TTL_S, *(x for pair in fields.items() for x in pair)],
        )

    def close(self) -> None:
        self._redis.flush()
        if self._finisher is not None:
            self._finisher.stop()
        self._client.close()


def _moved_cluster(added: list[tuple[bytes, Transition]]) -> bool:
    """Whether these transitions move the customer from one cluster to another."""
    kinds = {t.kind for _, t in added if t.segment.startswith(CLUSTER_PREFIX)}
    return kinds == {"enter", "exit"}


def _moved(member: bytes, anonymous: str) -> bytes:
    """A transition as the known customer's list holds it after a merge: marked with the
    anonymous id it happened to (the first one, along a chain of merges)."""
    shown = orjson.loads(member)
    shown.setdefault("merged_from", anonymous)
    return orjson.dumps(shown)


def _shown(event: StreamEntry) -> bytes:
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
    """``recovery_dir``: the dataflow's recovery store, compacted when erasures finish (the
    first worker runs the ``ErasureFinisher``); ``cluster_snapshots``: also append each
    written profile's column inputs to the stream clusterer's stream (clusters kept on the
    stream)."""

    def __init__(
        self,
        url: str,
        *,
        partitions: int = 1,
        recovery_dir: Path | None = None,
        cluster_snapshots: bool = False,
    ) -> None:
        self._url = url
        self._partitions = partitions
        self._recovery_dir = recovery_dir
        self._cluster_snapshots = cluster_snapshots

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ProfilePartition:
        finisher = None
        if worker_index == 0:
            finisher = ErasureFinisher(self._url, self._partitions, self._recovery_dir)
            finisher.start()
        return _ProfilePartition(
            self._url, self._recovery_dir, finisher, cluster_snapshots=self._cluster_snapshots
        )
