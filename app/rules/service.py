"""What the rules API answers beyond storage: segments with their sizes, previews over current
profiles, explanations."""

from __future__ import annotations

from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from pydantic import BaseModel

from app.clock import now_ms
from app.features import profile_features
from app.profiles import moves, segments
from app.profiles.keys import profile_key
from app.rules.explain import Evaluation, feature_keys
from app.rules.schema import Rule

PREVIEW_SAMPLE = 20
_PROFILE_PATTERN = profile_key("*")


class SegmentOut(BaseModel):
    """A segment, its size now, and how many entered and left it in the last hour and day
    (``app.profiles.moves.MoveCounts``)."""

    id: str
    name: str
    description: str
    size: int
    entered_1h: int
    exited_1h: int
    entered_24h: int
    exited_24h: int


class SegmentPage(BaseModel):
    items: list[SegmentOut]
    next_cursor: str | None = None


async def list_segments(client: aioredis.Redis, *, rules: list[Rule]) -> SegmentPage:
    """Every rule's segment, with its size now and its recent moves (counters: no profile is
    read)."""
    ids = [rule.id for rule in rules]
    sizes = await segments.sizes(client, ids)
    counts = await moves.counts(client, ids, now=now_ms())
    return SegmentPage(
        items=[
            SegmentOut(
                id=rule.id,
                name=rule.name,
                description=rule.description,
                size=size,
                **counted.model_dump(),
            )
            for rule, size, counted in zip(rules, sizes, counts, strict=True)
        ]
    )


class Preview(BaseModel):
    id: str
    matched: int  # of the profiles scanned, how many the rule holds for now
    scanned: int
    complete: bool  # every profile was scanned (else ``limit`` stopped the scan)
    sample: list[str]  # some matching customers' ids
    as_of: int  # the instant (ms) it was evaluated at
    not_yet_computed: list[str]  # features no scanned profile has: they count from saving


class Explanation(BaseModel):
    customer_id: str
    segment: str
    rule_version: int
    in_segment: bool  # the membership the dataflow keeps
    holds: bool  # the condition, evaluated now from the stored values
    as_of: int
    features_at: int | None  # the instant of the customer's last change
    condition: dict[str, Any]


def _evaluation(rule: Rule, fields: dict[bytes, bytes], now: int) -> Evaluation:
    """The rule's view of a stored profile at ``now`` (its features as of then)."""
    return Evaluation(
        rule,
        profile_features(fields, now),
        orjson.loads(fields.get(b"traits", b"{}")),
        orjson.loads(fields.get(b"segments", b"[]")),
    )


async def preview(client: aioredis.Redis, rule: Rule, *, limit: int) -> Preview:
    """How many current profiles the rule would hold for now, scanning at most ``limit``."""
    now = now_ms()
    wanted = feature_keys(rule)
    seen: set[str] = set()
    matched, scanned = 0, 0
    sample: list[str] = []
    cursor = 0
    while True:
        cursor, found = await client.scan(cursor, match=_PROFILE_PATTERN, count=500)
        keys = found[: limit - scanned]
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        for key, fields in zip(keys, await pipe.execute(), strict=True):
            if not fields:
                continue  # erased meanwhile
            scanned += 1
            evaluation = _evaluation(rule, fields, now)
            seen |= wanted & evaluation.features.keys()
            if evaluation.holds():
                matched += 1
                if len(sample) < PREVIEW_SAMPLE:
                    sample.append(_customer_id(key))
        complete = cursor == 0 and len(keys) == len(found)
        if complete or scanned >= limit:
            break
    return Preview(
        id=rule.id,
        matched=matched,
        scanned=scanned,
        complete=complete,
        sample=sorted(sample),
        as_of=now,
        not_yet_computed=sorted(wanted - seen) if scanned else sorted(wanted),
    )


def _customer_id(key: bytes | str) -> str:
    text = key.decode() if isinstance(key, bytes) else key
    return text[text.index("{") + 1 : text.rindex("}")]


async def explain(
    client: aioredis.Redis, customer_id: str, rule: Rule, version: int
) -> Explanation | None:
    """The rule's tree for the customer now; None when the customer has no profile."""
    fields = cast(dict[bytes, bytes], await client.hgetall(profile_key(customer_id)))
    if not fields:
        return None
    now = now_ms()
    evaluation = _evaluation(rule, fields, now)
    tree = evaluation.tree()
    return Explanation(
        customer_id=customer_id,
        segment=rule.id,
        rule_version=version,
        in_segment=rule.id in evaluation.segments,
        holds=tree["holds"],
        as_of=now,
        features_at=int(fields[b"at"]) if b"at" in fields else None,
        condition=tree,
    )
