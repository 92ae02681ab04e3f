"""Segment size history against a real Redis and over real HTTP: one sample per interval
whatever the number of recorders, trimmed by age, an hourly series beside it, and the API's
own recorder sampling while it runs."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import redis
import redis.asyncio as aioredis

from app.main import create_app
from app.profiles import history
from app.profiles.history import DAY_MS, HOUR_MS, MINUTE_MS, history_key
from app.profiles.keys import members_key
from app.settings import Settings
from tests.helpers import ServerThread, wait_for

T0 = 1_780_000_000_000 - 1_780_000_000_000 % HOUR_MS  # an hour's start


def record(settings: Settings, at: int, segments: tuple[str, ...] = ("loyal",)) -> bool:
    async def run() -> bool:
        client = aioredis.Redis.from_url(settings.redis_url or "")
        try:
            return await history.record(client, segments, now_ms=at)
        finally:
            await client.aclose()

    return asyncio.run(run())


def read(settings: Settings, segment: str, **options: Any) -> list[tuple[int, int]]:
    async def run() -> list[tuple[int, int]]:
        client = aioredis.Redis.from_url(settings.redis_url or "")
        try:
            found = await history.read(client, segment, **options)
        finally:
            await client.aclose()
        return [(s.at - T0, s.size) for s in found]

    return asyncio.run(run())


def test_one_sample_per_interval_at_its_start_with_the_size_then(
    settings: Settings, redis_client: redis.Redis
):
    redis_client.sadd(members_key("loyal"), "a", "b")
    assert record(settings, T0 + 5_000)
    assert not record(settings, T0 + 30_000)  # another recorder, the same minute: nothing
    redis_client.sadd(members_key("loyal"), "c")
    assert record(settings, T0 + MINUTE_MS + 2)
    redis_client.srem(members_key("loyal"), "a", "b", "c")
    assert record(settings, T0 + 3 * MINUTE_MS)  # a minute with no recorder is a gap
    assert read(settings, "loyal") == [(0, 2), (MINUTE_MS, 3), (3 * MINUTE_MS, 0)]
    assert read(settings, "loyal", resolution="hour") == [(0, 2)]  # the hour's first sample
    assert read(settings, "loyal", since=T0 + MINUTE_MS, until=T0 + 2 * MINUTE_MS) == [
        (MINUTE_MS, 3)
    ]


def test_each_series_is_trimmed_by_age_as_it_is_written(
    settings: Settings, redis_client: redis.Redis
):
    redis_client.sadd(members_key("loyal"), "a")
    assert record(settings, T0)
    assert record(settings, T0 + 7 * DAY_MS - MINUTE_MS)
    assert [at for at, _ in read(settings, "loyal")] == [0, 7 * DAY_MS - MINUTE_MS]
    assert record(settings, T0 + 7 * DAY_MS + MINUTE_MS)  # the first is now 7 days old
    assert [at for at, _ in read(settings, "loyal")] == [
        7 * DAY_MS - MINUTE_MS,
        7 * DAY_MS + MINUTE_MS,
    ]
    assert [at for at, _ in read(settings, "loyal", resolution="hour")] == [
        0,
        7 * DAY_MS - HOUR_MS,
        7 * DAY_MS,
    ]
    assert record(settings, T0 + 91 * DAY_MS)  # the hour series keeps 90 days
    assert [at for at, _ in read(settings, "loyal", resolution="hour")] == [
        7 * DAY_MS - HOUR_MS,
        7 * DAY_MS,
        91 * DAY_MS,
    ]


def test_the_api_records_while_it_runs_and_answers_oldest_first(
    services: Any, redis_client: redis.Redis, settings: Settings, credentials: dict[str, str]
):
    fast = services.settings(SEGFLOW_SEGMENT_HISTORY_INTERVAL_S=1)
    headers = {"Authorization": f"Bearer {credentials['admin_token']}"}
    redis_client.sadd(members_key("cart-abandoners"), "a")
    with ServerThread(create_app(fast)) as api:
        url = f"{api.url}/api/segments/cart-abandoners/history"

        def items() -> list[dict[str, Any]]:
            answer = httpx.get(url, headers=headers, timeout=30)
            assert answer.status_code == 200, answer.text
            return list(answer.json()["items"])

        wait_for(lambda: len(items()) >= 1, timeout_s=60, what="a first sample")
        redis_client.sadd(members_key("cart-abandoners"), "b", "c")
        wait_for(lambda: items()[-1]["size"] == 3, timeout_s=60, what="the new size sampled")
        found = items()
        assert [p["at"] for p in found] == sorted({p["at"] for p in found})  # oldest first
        assert all(p["at"] % 1_000 == 0 for p in found)  # each at its interval's start
        assert found[0]["size"] == 1
        assert all(p["anomaly"] is False for p in found)
        answer = httpx.get(url, headers=headers, params={"resolution": "hour"}, timeout=30)
        assert answer.json()["interval_ms"] == HOUR_MS
        assert len(answer.json()["items"]) == 1
        missing = httpx.get(f"{api.url}/api/segments/no-such/history", headers=headers)
        assert missing.status_code == 404


def test_a_sample_is_judged_when_it_is_written(settings: Settings, redis_client: redis.Redis):
    for minute in range(15):
        redis_client.sadd(members_key("loyal"), f"m{minute}")  # one more a minute: ordinary
        assert record(settings, T0 + minute * MINUTE_MS)
    redis_client.sadd(members_key("loyal"), *(f"new{n}" for n in range(200)))  # a jump
    assert record(settings, T0 + 15 * MINUTE_MS)
    stored = redis_client.zrange(history_key("loyal", "minute"), -2, -1)
    assert stored == [
        f"{T0 + 14 * MINUTE_MS}:15:0".encode(),
        f"{T0 + 15 * MINUTE_MS}:215:1".encode(),
    ]
    flags = [anomaly for _, anomaly in read_flags(settings, "loyal")]
    assert flags == [False] * 15 + [True]


def read_flags(settings: Settings, segment: str) -> list[tuple[int, bool]]:
    async def run() -> list[tuple[int, bool]]:
        client = aioredis.Redis.from_url(settings.redis_url or "")
        try:
            return [(s.at, s.anomaly) for s in await history.read(client, segment)]
        finally:
            await client.aclose()

    return asyncio.run(run())


def anomaly_counts(settings: Settings, segments: list[str], since: int, until: int) -> list[int]:
    async def run() -> list[int]:
        client = aioredis.Redis.from_url(settings.redis_url or "")
        try:
            return await history.anomaly_counts(client, segments, since=since, until=until)
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_a_days_anomalies_are_counted_from_the_index_the_recorder_keeps(
    settings: Settings, redis_client: redis.Redis
):
    for minute in range(15):
        redis_client.sadd(members_key("loyal"), f"m{minute}")
        assert record(settings, T0 + minute * MINUTE_MS, ("loyal", "quiet"))
    redis_client.sadd(members_key("loyal"), *(f"new{n}" for n in range(200)))  # a jump
    assert record(settings, T0 + 15 * MINUTE_MS, ("loyal", "quiet"))
    # samples written by other means (no index): counted from the samples themselves
    for minute in range(16):
        size = 100 + minute % 2 if minute < 15 else 900
        at = T0 + minute * MINUTE_MS
        redis_client.zadd(history_key("other", "minute"), {f"{at}:{size}": at})
    day = (T0 + 15 * MINUTE_MS - DAY_MS, T0 + 15 * MINUTE_MS)
    assert anomaly_counts(settings, ["loyal", "quiet", "other"], *day) == [1, 0, 1]
    assert anomaly_counts(settings, ["loyal"], T0, T0 + 14 * MINUTE_MS) == [0]  # before it
    assert redis_client.zrange(history.anomalies_key("loyal"), 0, -1) == [
        str(T0 + 15 * MINUTE_MS).encode(),
        history.RECORDED.encode(),
    ]
