"""``GET /api/status``: how far the dataflow is behind the collector, and how long an accepted
event takes to show in segment memberships."""

from __future__ import annotations

import math
from collections.abc import Iterable

import orjson
import redis.asyncio as aioredis
from pydantic import BaseModel, Field

from app.streams import DELAY_SAMPLES_KEY, PROGRESS_KEY, stats_key

DELAY_WINDOW_MS = 5 * 60_000


class MembershipDelay(BaseModel):
    """Accept-to-membership delay: for each batch of live events the dataflow's sink wrote
    in the last ``window_s``, from the newest event's acceptance by the collector to the
    moment Redis had applied the batch's writes (profiles, memberships, transitions). Replays'
    events are not measured, nor output the dataflow writes again after a restart."""

    p50: int | None = Field(description="Median delay, ms (null without samples).")
    p95: int | None = Field(description="95th percentile delay, ms (null without samples).")
    samples: int = Field(description="Batches measured in the window (the newest 1,000 kept).")
    window_s: int = Field(description="How far back samples count, seconds.")


class PipelineStatus(BaseModel):
    events_accepted: int = Field(description="Events the collector stored in the streams.")
    events_processed: int = Field(description="Stream entries the dataflow has applied.")
    lag: int = Field(description="Accepted but not yet processed; 0 once caught up.")
    watermark: int | None = Field(
        description="The newest event time (ms) the dataflow has processed."
    )
    membership_delay_ms: MembershipDelay = Field(
        description="From the collector's accept to segment membership, recent live batches."
    )


async def pipeline_status(client: aioredis.Redis, *, partitions: int) -> PipelineStatus:
    pipe = client.pipeline(transaction=False)
    for partition in range(partitions):
        pipe.hget(stats_key(partition), "accepted")
    pipe.hvals(PROGRESS_KEY)
    pipe.time()  # the samples are dated by Redis's clock: the window is too
    pipe.lrange(DELAY_SAMPLES_KEY, 0, -1)
    *accepted, progress, (seconds, micros), samples = await pipe.execute()
    shards = [orjson.loads(value) for value in progress]
    events_accepted = sum(int(value or 0) for value in accepted)
    processed = sum(shard[0] for shard in shards)
    newest = [shard[1] for shard in shards if shard[1] is not None]
    return PipelineStatus(
        events_accepted=events_accepted,
        events_processed=processed,
        lag=max(0, events_accepted - processed),
        watermark=max(newest) if newest else None,
        membership_delay_ms=delay_summary(samples, now=seconds * 1000 + micros // 1000),
    )


def delay_summary(samples: Iterable[bytes | str], *, now: int) -> MembershipDelay:
    """p50 and p95 (nearest rank) of the samples (``<done ms>:<delay ms>``) done in the window
    before ``now``."""
    delays = []
    for sample in samples:
        text = sample.decode() if isinstance(sample, bytes) else sample
        done, delay = text.split(":")
        if int(done) > now - DELAY_WINDOW_MS:
            delays.append(int(delay))
    delays.sort()

    def rank(p: int) -> int | None:
        return delays[math.ceil(p / 100 * len(delays)) - 1] if delays else None

    return MembershipDelay(
        p50=rank(50), p95=rank(95), samples=len(delays), window_s=DELAY_WINDOW_MS // 1000
    )
