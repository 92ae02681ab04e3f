"""Redis key names shared by every stage, and the atomic append of events to their partition.

Every key of one partition carries the hash tag ``{p}`` (``events:{3}``, ``stats:{3}``), so a
Redis Cluster would keep each partition's keys in one slot. The dedup keys are per source, not
per partition (the contract deduplicates a ``messageId`` per source, whichever customer it
names), so the append script touches keys of more than one slot: one Redis server, as today.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

FAILED_EVENTS_KEY = "failed-events"
ERASE = "erase"  # the type of the stream entry that tells the dataflow to forget a customer
# Identity merges (pipelines.segmentation): the anonymous customer's shard is told to hand its
# state over (MERGE), and the known customer's shard takes it in (ABSORB).
MERGE = "merge"
ABSORB = "absorb"
# A replay's own clock (see "How time works" in pipelines/segmentation.py): after each batch it
# appends, ``segflow replay`` tells every partition how far it has come (PROGRESS: every event of
# the replay before ``timestamp`` is in the streams), and when it is done (REPLAY_END).
PROGRESS = "progress"
REPLAY_END = "replay-end"
CONTROL_TYPES = frozenset({ERASE, MERGE, ABSORB, PROGRESS, REPLAY_END})
LIVE = ""  # the lane of events from the collector; a replay's lane is its id
ALIVE_KEY = "dataflow-alive"  # set by the running dataflow's source, expiring: /readyz reads it
ALIVE_TTL_S = 10
# hash: shard -> [entries processed, newest event time, partition, last entry applied]
PROGRESS_KEY = "dataflow-progress"
EVENT_FIELD = "e"
# Accept-to-membership delay (``app.ingest.status``), measured by the dataflow's sink: its
# newest samples ("<done ms>:<delay ms>", newest first), and per shard the newest accept time
# measured, so output replayed after a crash or streams read again add no sample.
DELAY_SAMPLES_KEY = "{membership-delay}:samples"
DELAY_MARKS_KEY = "{membership-delay}:marks"
DELAY_SAMPLES_KEPT = 1_000


def stream_key(partition: int) -> str:
    return f"events:{{{partition}}}"


def stats_key(partition: int) -> str:
    return f"stats:{{{partition}}}"


def dedup_key(source: str, message_id: str) -> str:
    """Marks ``message_id`` as seen from ``source`` (the write key's name, or a replay's). The
    source's length comes first, so no source and id can spell another's."""
    return f"dedup:{len(source)}:{source}:{message_id}"


def entry_order(entry_id: str | bytes) -> tuple[int, int]:
    """A stream entry id (``<ms>-<seq>``) as what orders it: (ms, seq)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    millis, _, seq = text.partition("-")
    return int(millis), int(seq or 0)


def partition_of(customer_id: str, partitions: int) -> int:
    """Stable across processes and machines (``hash()`` is not): crc32 of the customer id."""
    return zlib.crc32(customer_id.encode("utf-8", "surrogatepass")) % partitions


# Marks each messageId and appends its event in one step, so a crash can never leave an id
# marked as seen whose event was not stored (a retry would then be lost as a "duplicate").
# KEYS: stream, stats, dedup keys...; ARGV: dedup TTL in seconds, payloads... (one per dedup key)
APPEND_SCRIPT = """
local accepted = 0
local out = {}
for i = 3, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[1]) then
    redis.call('XADD', KEYS[1], '*', 'e', ARGV[i - 1])
    accepted = accepted + 1
    out[i - 2] = 1
  else
    out[i - 2] = 0
  end
end
if accepted > 0 then redis.call('HINCRBY', KEYS[2], 'accepted', accepted) end
if accepted < #KEYS - 2 then redis.call('HINCRBY', KEYS[2], 'duplicates', #KEYS - 2 - accepted) end
return out
"""


@dataclass(frozen=True, slots=True)
class PartitionAppend:
    """One script call: the events of one partition, and their positions in the caller's list."""

    keys: list[str]
    args: list[bytes | int]
    positions: list[int]


@dataclass(frozen=True, slots=True)
class SerializedEvent:
    """What the append needs of an event: where it goes, its id, and its JSON."""

    customer_id: str
    message_id: str
    payload: bytes
    source: str  # deduplication is per source


def plan_appends(
    events: Sequence[SerializedEvent], *, partitions: int, dedup_ttl_s: int
) -> list[PartitionAppend]:
    """Group events by partition into one script call each (pure: no I/O)."""
    groups: dict[int, PartitionAppend] = {}
    prefixes: dict[str, str] = {}  # per source (a request has one)
    for position, event in enumerate(events):
        partition = partition_of(event.customer_id, partitions)
        group = groups.get(partition)
        if group is None:
            group = groups[partition] = PartitionAppend(
                keys=[stream_key(partition), stats_key(partition)],
                args=[dedup_ttl_s],
                positions=[],
            )
        prefix = prefixes.get(event.source)
        if prefix is None:
            prefix = prefixes[event.source] = dedup_key(event.source, "")
        group.keys.append(prefix + event.message_id)  # hot loop: no call per key
        group.args.append(event.payload)
        group.positions.append(position)
    return list(groups.values())


def stored_flags(
    plans: Sequence[PartitionAppend], results: Sequence[Sequence[int]], total: int
) -> list[bool]:
    """Per event, in the caller's order: True if appended, False if it was a duplicate."""
    flags = [False] * total
    for plan, result in zip(plans, results, strict=True):
        for position, stored in zip(plan.positions, result, strict=True):
            flags[position] = bool(stored)
    return flags


def lane_markers(
    lane: str, at: int, *, partitions: int, seq: int, end: bool = False
) -> list[tuple[str, bytes]]:
    """(stream, entry) for each partition: replay ``lane`` has appended every event before
    ``at`` (or, with ``end``, every event it has). Markers are not events: no stats count
    them and the dataflow turns them into its lane's ticks."""
    kind = REPLAY_END if end else PROGRESS
    return [
        (
            stream_key(partition),
            orjson.dumps(
                {
                    "type": kind,
                    "customer_id": "",
                    "replay": lane,
                    "timestamp": at,
                    "message_id": f"{kind}:{lane}:{seq}:{partition}",
                }
            ),
        )
        for partition in range(partitions)
    ]


def relay_marker_key(partition: int, marker: str) -> str:
    """Set once the dataflow appended an entry of its own to the partition."""
    return f"relay:{{{partition}}}:{marker}"
