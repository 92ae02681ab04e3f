"""``GET /api/status``: how far the dataflow is behind the collector."""

from __future__ import annotations

import orjson
import redis.asyncio as aioredis
from pydantic import BaseModel, Field

from app.streams import PROGRESS_KEY, stats_key


class PipelineStatus(BaseModel):
    events_accepted: int = Field(description="Events the collector stored in the streams.")
    events_processed: int = Field(description="Stream entries the dataflow has applied.")
    lag: int = Field(description="Accepted but not yet processed; 0 once caught up.")
    watermark: int | None = Field(
        description="The newest event time (ms) the dataflow has processed."
    )


async def pipeline_status(client: aioredis.Redis, *, partitions: int) -> PipelineStatus:
    pipe = client.pipeline(transaction=False)
    for partition in range(partitions):
        pipe.hget(stats_key(partition), "accepted")
    pipe.hvals(PROGRESS_KEY)
    *accepted, progress = await pipe.execute()
    shards = [orjson.loads(value) for value in progress]
    events_accepted = sum(int(value or 0) for value in accepted)
    processed = sum(count for count, _ in shards)
    newest = [time for _, time in shards if time is not None]
    return PipelineStatus(
        events_accepted=events_accepted,
        events_processed=processed,
        lag=max(0, events_accepted - processed),
        watermark=max(newest) if newest else None,
    )
