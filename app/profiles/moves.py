"""A segment's recent moves: who entered it and who left it, when, newest first, and how many
did in the last hour and the last day.

The dataflow's sink writes each transition twice: to the customer's own list (``keys.
transitions_key``) and to its segment's moves, one sorted set per kind (``keys.moves_key``:
enters, exits) scored by the transition's instant in event time, each member
``<at>:<rule version>:<customer id>``. The same transition always gives the same member, so
output the dataflow replays after a crash writes nothing twice, and a late event's retraction
removes exactly what was written. A count is one ZCOUNT, whatever the number of profiles.

Rule segments only: a cluster's pseudo-segment (``cluster:<id>``) has no moves here. Nothing
reads them per cluster (cluster turnover counts the customers who moved by
``keys.CLUSTER_MOVES_KEY``), and with a cluster model they were most of the sink's writes of
moves: every customer enters a cluster, and most move when their first visit ends.

Bounds. Each set keeps the moves of the ``KEEP_MS`` (2 days) of event time before its newest,
and at most ``KEPT`` (50,000) of them, the oldest going first, trimmed as they are written: a
segment holds at most 2 x 50,000 moves (about 12 MB of Redis: 120 bytes a move with a short
customer id). A day's count is exact below ``KEPT``; a count of ``KEPT`` means at least that
many.

Merges and erasure. An identity merge gives the anonymous customer's moves to the known id
(the sink re-keys the moves its list names). Erasing a customer removes the moves their list
names (``forget_listed``), and once the dataflow has passed the erasure, ``sweep`` removes any
other member naming them from every segment's sets (their list keeps only their newest 1,000
transitions, and the dataflow may have written one while the erasure ran).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from pydantic import BaseModel

from app.profiles.keys import CLUSTER_PREFIX, MOVES_INDEX_KEY, moves_key

KINDS = ("enter", "exit")
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
KEEP_MS = 2 * DAY_MS  # of event time, before a set's newest move
KEPT = 50_000  # per segment and kind, the newest
SWEEP_CHUNK = 1_000
_CURSOR = re.compile(r"^(\d{1,16})-(\d{1,9})$")


def member(customer_id: str, at: int, rule_version: int) -> str:
    """A move as its set holds it (the kind is the set's)."""
    return f"{at}:{rule_version}:{customer_id}"


def parse(found: bytes | str) -> tuple[int, int, str]:
    """A member's instant, rule version and customer id."""
    text = found.decode() if isinstance(found, bytes) else found
    at, version, customer_id = text.split(":", 2)
    return int(at), int(version), customer_id


def kept(segment: str) -> bool:
    """Whether the segment's moves are kept here (a rule's segment, not a cluster's)."""
    return not segment.startswith(CLUSTER_PREFIX)


def moves_of(customer_id: str, listed: Iterable[bytes | str]) -> dict[str, list[str]]:
    """The members, by set, of the moves a customer's own transitions list names (its JSON
    members, ``TransitionOut``): what to remove when they are erased."""
    found: dict[str, list[str]] = {}
    for raw in listed:
        shown = orjson.loads(raw)
        if not kept(shown["segment"]):
            continue
        key = moves_key(shown["segment"], shown["kind"])
        found.setdefault(key, []).append(member(customer_id, shown["at"], shown["rule_version"]))
    return found


class MoveCounts(BaseModel):
    """How many customers entered and left a segment in the last hour and day of wall-clock
    time (transitions dated in ``(now - W, now]``); ``KEPT`` means at least that many."""

    entered_1h: int = 0
    exited_1h: int = 0
    entered_24h: int = 0
    exited_24h: int = 0


class SegmentMove(BaseModel):
    customer_id: str
    kind: str  # "enter" | "exit"
    at: int  # event time, ms
    rule_version: int


class MovePage(BaseModel):
    items: list[SegmentMove]  # newest first
    next_cursor: str | None


async def counts(client: aioredis.Redis, segments: Sequence[str], *, now: int) -> list[MoveCounts]:
    """Each segment's enters and exits in the last hour and day before ``now`` (ms), in the
    order given: four ZCOUNTs a segment, in one round trip."""
    pipe = client.pipeline(transaction=False)
    for segment in segments:
        for span in (HOUR_MS, DAY_MS):
            for kind in KINDS:
                pipe.zcount(moves_key(segment, kind), f"({now - span}", now)
    found: list[int] = await pipe.execute()
    return [
        MoveCounts(entered_1h=a, exited_1h=b, entered_24h=c, exited_24h=d)
        for a, b, c, d in (found[i : i + 4] for i in range(0, len(found), 4))
    ]


def valid_cursor(cursor: str | None) -> bool:
    return cursor is None or _CURSOR.match(cursor) is not None


async def page(client: aioredis.Redis, segment: str, *, limit: int, cursor: str | None) -> MovePage:
    """The segment's moves, newest first (ties in a fixed order), a page at a time.

    ``cursor`` is ``<at>-<n>``: the page goes on from the moves at or before ``at``, past the
    first ``n`` of those at ``at`` (shown already). Moves added since, newer than ``at``, do not
    shift the pages still to read."""
    top: int | str = "+inf"
    skip = 0
    if cursor is not None:
        matched = _CURSOR.match(cursor)
        if matched is None:
            raise ValueError(f"cursor {cursor!r}: not <at>-<n>")
        top, skip = int(matched[1]), int(matched[2])
    pipe = client.pipeline(transaction=False)
    for kind in KINDS:
        key = moves_key(segment, kind)
        pipe.zrevrangebyscore(key, top, "-inf", start=0, num=skip + limit + 1, withscores=True)
    found: list[list[tuple[bytes, float]]] = await pipe.execute()
    # each set answers by score, then member, both descending: merged in that order too
    merged = sorted(
        (
            (int(score), kind, found_member)
            for kind, rows in zip(KINDS, found, strict=True)
            for found_member, score in rows
        ),
        reverse=True,
    )
    rest = merged[skip:]
    shown = rest[:limit]
    items = []
    for at, kind, found_member in shown:
        _, version, customer_id = parse(found_member)
        items.append(SegmentMove(customer_id=customer_id, kind=kind, at=at, rule_version=version))
    next_cursor = None
    if len(rest) > limit:
        last = shown[-1][0]
        same = sum(1 for at, _, _ in shown if at == last) + (skip if last == top else 0)
        next_cursor = f"{last}-{same}"
    return MovePage(items=items, next_cursor=next_cursor)


async def forget_listed(
    client: aioredis.Redis, customer_id: str, listed: Iterable[bytes | str]
) -> int:
    """Remove the moves the customer's transitions list (``listed``) names: how many went."""
    pipe = client.pipeline(transaction=False)  # each segment's sets are in their own slot
    doomed = moves_of(customer_id, listed)
    for key, members in doomed.items():
        pipe.zrem(key, *members)
    return sum(await pipe.execute()) if doomed else 0


async def sweep(client: aioredis.Redis, customer_ids: set[str]) -> int:
    """Remove every move naming one of ``customer_ids`` from every segment's sets (a scan of
    them all: for erasures, once the dataflow is past them); how many went."""
    if not customer_ids:
        return 0
    match = f"*:{_glob_escaped(next(iter(customer_ids)))}" if len(customer_ids) == 1 else None
    segments = cast(set[bytes], await client.smembers(MOVES_INDEX_KEY))
    removed = 0
    for segment in sorted(segments):
        for kind in KINDS:
            key = moves_key(segment.decode(), kind)
            doomed: list[Any] = []
            async for found_member, _ in client.zscan_iter(key, match=match, count=SWEEP_CHUNK):
                if parse(found_member)[2] in customer_ids:
                    doomed.append(found_member)
            for start in range(0, len(doomed), SWEEP_CHUNK):
                removed += await client.zrem(key, *doomed[start : start + SWEEP_CHUNK])
    return removed


def _glob_escaped(text: str) -> str:
    """``text`` matched literally by a Redis glob pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)
