"""Segment size history: each segment's size sampled at a fixed interval, kept bounded, with
sudden jumps and drops flagged.

Samples. Every ``interval_ms`` (a minute by default) one recorder, whichever API process takes
that interval's lock first (``SET NX``), reads every segment's size (``SCARD`` of its members)
and adds ``(at, size, anomaly)`` to the segment's ``minute`` series, ``at`` being the
interval's start and ``anomaly`` judged then (below), so that reading a week of history costs
no arithmetic.
The first sample of each hour also goes to the ``hour`` series. Each series is a sorted set
scored by ``at`` and trimmed by age as it is written: ``minute`` keeps 7 days, ``hour`` 90 days.
When no Segflow process runs there are no samples: readers see the gap as missing instants,
never as invented sizes.

Anomalies, by a robust z-score of the change. For a sample, the change is its size minus the
previous sample's. Its baseline is the changes of the ``BASELINE`` samples before it (at least
``MIN_BASELINE``, else it is never flagged): their median ``m`` and median absolute deviation
``MAD``. The sample is an anomaly when ``|change - m| > THRESHOLD * scale``, where ``scale`` is
``1.4826 * MAD`` (the standard deviation a normal distribution with that MAD has), but at least
``max(1, 1 % of the previous size)``: a segment that never moved is not flagged for one
customer more, and a large one not for its usual noise. Median and MAD ignore the odd spike in
the baseline, so one anomaly does not hide the next.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio as aioredis

from app.profiles.keys import members_key

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
Resolution = Literal["minute", "hour"]
KEEP_MS: dict[Resolution, int] = {"minute": 7 * DAY_MS, "hour": 90 * DAY_MS}
DEFAULT_SPAN_MS: dict[Resolution, int] = {"minute": DAY_MS, "hour": 90 * DAY_MS}  # what's read

BASELINE = 60  # changes before a sample that make its baseline
MIN_BASELINE = 10
THRESHOLD = 5.0
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class Sample:
    at: int  # ms since the epoch: the start of the interval it was taken in
    size: int
    anomaly: bool = False


def history_key(segment: str, resolution: Resolution) -> str:
    return f"segment-history:{{{segment}}}:{resolution}"


def anomalies_key(segment: str) -> str:
    """The instants of the segment's flagged minute samples (score and member: the instant),
    so a page counts a day's anomalies without reading a day of samples. Its member
    ``RECORDED`` (score +inf) says the recorder keeps it."""
    return f"segment-history:{{{segment}}}:anomalies"


RECORDED = "recorded"


def _tick_key(resolution: Resolution, at: int) -> str:
    return f"segment-history:tick:{resolution}:{at}"


async def record(
    client: aioredis.Redis, segments: Sequence[str], *, now_ms: int, interval_ms: int = MINUTE_MS
) -> bool:
    """Sample every segment's size for the interval ``now_ms`` falls in, unless another
    recorder already did; whether this call recorded. Each sample is judged (anomaly or not)
    as it is written, against the samples before it, so readers only read."""
    at = now_ms - now_ms % interval_ms
    if not await client.set(_tick_key("minute", at), 1, nx=True, px=2 * interval_ms + 60_000):
        return False
    hour = now_ms - now_ms % HOUR_MS
    hourly = bool(await client.set(_tick_key("hour", hour), 1, nx=True, px=2 * HOUR_MS))
    series: list[tuple[Resolution, int]] = [("minute", at)]
    if hourly:
        series.append(("hour", hour))
    pipe = client.pipeline(transaction=False)
    for segment in segments:
        pipe.scard(members_key(segment))
        for resolution, _ in series:
            pipe.zrevrange(history_key(segment, resolution), 0, BASELINE)
    found: list[Any] = await pipe.execute()
    pipe = client.pipeline(transaction=False)
    step = 1 + len(series)
    for n, segment in enumerate(segments):
        size = int(found[n * step])
        for k, (resolution, when) in enumerate(series):
            before = [_parse(member)[0] for member in reversed(found[n * step + 1 + k])]
            (judged,) = flag_anomalies([*before, Sample(when, size)])[-1:]
            key = history_key(segment, resolution)
            pipe.zadd(key, {f"{when}:{size}:{int(judged.anomaly)}": when})
            pipe.zremrangebyscore(key, "-inf", f"({when - KEEP_MS[resolution]}")
            if resolution == "minute":
                flagged = anomalies_key(segment)
                pipe.zadd(
                    flagged, {RECORDED: "+inf", **({str(when): when} if judged.anomaly else {})}
                )
                pipe.zremrangebyscore(flagged, "-inf", f"({when - KEEP_MS[resolution]}")
    await pipe.execute()
    return True


async def anomaly_counts(
    client: aioredis.Redis, segments: Sequence[str], *, since: int, until: int
) -> list[int]:
    """How many of each segment's minute samples in [since, until] were flagged, in one round
    trip where the recorder keeps the index; a segment whose samples it does not (written by
    other means) is counted from its samples."""
    pipe = client.pipeline(transaction=False)
    for segment in segments:
        pipe.zscore(anomalies_key(segment), RECORDED)
        pipe.zcount(anomalies_key(segment), since, until)
    found: list[Any] = await pipe.execute()
    counts = []
    for n, segment in enumerate(segments):
        if found[2 * n] is not None:
            counts.append(int(found[2 * n + 1]))
        else:
            samples = await read(client, segment, since=since, until=until)
            counts.append(sum(sample.anomaly for sample in samples))
    return counts


async def read(
    client: aioredis.Redis,
    segment: str,
    *,
    resolution: Resolution = "minute",
    since: int | None = None,
    until: int | None = None,
) -> list[Sample]:
    """The segment's samples from ``since`` to ``until`` (ms, inclusive), oldest first, with
    the flags they were given when written. A sample written without one is judged here,
    against the samples before it (those before ``since`` too)."""
    key = history_key(segment, resolution)
    low = "-inf" if since is None else since
    high = "+inf" if until is None else until
    pipe = client.pipeline(transaction=False)
    pipe.zrangebyscore(key, low, high)
    pipe.zrevrangebyscore(key, f"({low}", "-inf", start=0, num=BASELINE + 1)
    wanted, before = await pipe.execute()
    samples = [_parse(member) for member in wanted]
    if all(judged for _, judged in samples):
        return [sample for sample, _ in samples]
    earlier = [sample for sample, _ in map(_parse, reversed(before))]
    computed = flag_anomalies([*earlier, *(sample for sample, _ in samples)])[len(earlier) :]
    return [
        sample if judged else by_rule
        for (sample, judged), by_rule in zip(samples, computed, strict=True)
    ]


def _parse(member: bytes) -> tuple[Sample, bool]:
    """A member ``at:size:flag`` (or ``at:size``, not yet judged): the sample, and whether
    it carries its flag."""
    parts = member.decode().split(":")
    judged = len(parts) > 2
    return Sample(int(parts[0]), int(parts[1]), judged and parts[2] == "1"), judged


def flag_anomalies(samples: Sequence[Sample]) -> list[Sample]:
    """The samples, each flagged when its change stands out from the changes before it (see
    the module's docstring for the rule)."""
    changes = [b.size - a.size for a, b in itertools.pairwise(samples)]
    flagged = [Sample(samples[0].at, samples[0].size)] if samples else []
    for i, sample in enumerate(samples[1:]):
        baseline = changes[max(0, i - BASELINE) : i]
        flagged.append(
            Sample(sample.at, sample.size, _stands_out(changes[i], baseline, samples[i].size))
        )
    return flagged


def _stands_out(change: int, baseline: Sequence[int], previous_size: int) -> bool:
    if len(baseline) < MIN_BASELINE:
        return False
    middle = statistics.median(baseline)
    mad = statistics.median(abs(c - middle) for c in baseline)
    scale = max(MAD_TO_SIGMA * mad, 1.0, 0.01 * previous_size)
    return abs(change - middle) > THRESHOLD * scale
