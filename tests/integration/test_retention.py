"""Redis does not only grow: `segflow pipeline` trims each partition's stream once every
snapshot its recovery could resume from has passed an entry and the retention window is over,
a crash after trimming resumes with nothing lost, the failed events stay at their count, the
dispatcher trims acknowledged triggers and finished deliveries, and a full Redis makes the
collector answer 503 with nothing lost."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
import redis.asyncio as aioredis

from app.clock import now_ms
from app.dispatch.deliveries import DUE_KEY, LOG_KEY, DeliveryStore, delivery_key, index_key
from app.dispatch.retention import prune_deliveries, trim_triggers
from app.dispatch.worker import GROUP, READ_COUNT, Dispatcher
from app.main import create_app
from app.profiles.keys import TRIGGERS_KEY
from app.redis_server import EmbeddedRedis
from app.settings import Settings
from app.streams import EVENT_FIELD, FAILED_EVENTS_KEY, entry_order, partition_of, stream_key
from pipelines.retention import oldest_resume_positions
from tests.conftest import Services
from tests.factories import append_events, processed_entries, shop_events, stored_events, track
from tests.helpers import ServerThread, customer_profiles, pipeline_env, wait_for

CUSTOMERS = 200
HOUR_MS = 3_600_000


@contextlib.contextmanager
def segflow_pipeline(env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """`segflow pipeline` in its own process group, SIGKILLed (a crash) when the block ends."""
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "pipeline"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def redis_now_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1_000 + int(micros) // 1_000


def stream_lengths(client: redis.Redis, partitions: int) -> int:
    return sum(int(client.xlen(stream_key(p))) for p in range(partitions))


def append_at(
    client: redis.Redis, events: list[dict[str, Any]], partitions: int, at_ms: int
) -> None:
    """Append as if Redis had taken them at ``at_ms`` (their ids say when: the retention)."""
    for seq, event in enumerate(events, start=1):
        key = stream_key(partition_of(event["customer_id"], partitions))
        client.xadd(key, {EVENT_FIELD: orjson.dumps(event)}, id=f"{at_ms}-{seq}")


def total_events(client: redis.Redis) -> int:
    profiles = customer_profiles(client, CUSTOMERS)
    return sum(orjson.loads(p[b"features"])["events_total"] for p in profiles.values())


@pytest.mark.backend_independent
def test_streams_are_trimmed_behind_recovery_and_kept_within_retention(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    assert settings.redis_url
    partitions = settings.partitions
    now = redis_now_ms(redis_client)
    # two hours old (past the one-hour retention), then fresh ones (within it)
    old = shop_events(1_200, customers=CUSTOMERS, now=now - 1_000, seed=3, spacing_ms=2)
    fresh = shop_events(800, customers=CUSTOMERS, now=now, seed=4, spacing_ms=1)
    fresh = [{**event, "message_id": f"fresh-{event['message_id']}"} for event in fresh]
    append_at(redis_client, old, partitions, now - 2 * HOUR_MS)
    append_events(redis_client, fresh, partitions)
    for n in range(120):  # more failed events than are kept
        redis_client.xadd(FAILED_EVENTS_KEY, {"reason": "test", "raw": str(n)})
    env = pipeline_env(
        settings.redis_url,
        tmp_path,
        partitions,
        SEGFLOW_SNAPSHOT_INTERVAL_S="1",
        SEGFLOW_TRIM_INTERVAL_S="1",
        SEGFLOW_STREAM_RETENTION="1h",
        SEGFLOW_FAILED_EVENTS_KEPT="50",
    )
    with segflow_pipeline(env):
        wait_for(lambda: processed_entries(redis_client) == 2_000, timeout_s=120, what="read")
        wait_for(
            lambda: stream_lengths(redis_client, partitions) == len(fresh),
            timeout_s=60,
            what="the old entries trimmed",
        )
        assert redis_client.xlen(FAILED_EVENTS_KEY) == 50
        newest: Any = redis_client.xrevrange(FAILED_EVENTS_KEY, count=1)
        assert newest[0][1][b"raw"] == b"119"  # the newest are the ones kept
        positions = oldest_resume_positions(tmp_path / "recovery")
    # every fresh entry is kept although recovery has read it: it is within the retention
    assert stream_lengths(redis_client, partitions) == len(fresh)
    for partition in range(partitions):  # and nothing a snapshot would resume before is gone
        first: Any = redis_client.xrange(stream_key(partition), count=1)
        if first:
            assert entry_order(first[0][0].decode()) <= entry_order(
                positions[stream_key(partition)]
            )
    assert total_events(redis_client) == 2_000


@pytest.mark.backend_independent
def test_a_crash_after_trimming_resumes_with_nothing_lost(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    assert settings.redis_url
    partitions = settings.partitions
    now = redis_now_ms(redis_client)
    first = shop_events(2_000, customers=CUSTOMERS, now=now - 1_000, seed=5, spacing_ms=1)
    then = shop_events(1_000, customers=CUSTOMERS, now=now, seed=6, spacing_ms=1)
    then = [{**event, "message_id": f"then-{event['message_id']}"} for event in then]
    env = pipeline_env(
        settings.redis_url,
        tmp_path,
        partitions,
        SEGFLOW_SNAPSHOT_INTERVAL_S="1",
        SEGFLOW_TRIM_INTERVAL_S="1",
        SEGFLOW_STREAM_RETENTION="0s",  # trim as soon as recovery allows
    )
    with segflow_pipeline(env):
        append_events(redis_client, first, partitions)
        wait_for(lambda: processed_entries(redis_client) == 2_000, timeout_s=120, what="read")
        wait_for(
            lambda: stream_lengths(redis_client, partitions) < 2_000 // 2,
            timeout_s=60,
            what="the streams trimmed behind recovery",
        )
        append_events(redis_client, then[:500], partitions)
    # SIGKILLed: the restart resumes from its last snapshot, re-reading what came after it
    with segflow_pipeline(env):
        append_events(redis_client, then[500:], partitions)
        wait_for(lambda: processed_entries(redis_client) == 3_000, timeout_s=120, what="resumed")
    assert total_events(redis_client) == 3_000  # nothing lost, nothing counted twice


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[redis.Redis]:
    """A Redis of its own (never the shared one) whose memory is nearly full."""
    server = EmbeddedRedis.ensure(tmp_path / "small-redis")
    client = redis.Redis.from_url(server.url)
    try:
        # made by the server (SETRANGE): a 4 MB argument would sit in a query buffer that
        # Redis frees a little later, and with it the memory that made it full
        client.setrange("filler", 4_000_000, "x")
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory-policy", "noeviction")  # as docker-compose.yml runs Redis
        client.config_set("maxmemory", used - 1_000_000)  # every write now answers OOM

        def refuses_writes() -> bool:
            try:
                client.set("probe", "1")
            except redis.exceptions.OutOfMemoryError:
                return True
            client.config_set("maxmemory", int(client.info("memory")["used_memory"]) // 2)
            return False

        wait_for(refuses_writes, what="the small Redis full")
        yield client
    finally:
        client.close()
        server.stop()


def test_a_full_redis_answers_503_and_loses_nothing(
    services: Services, credentials: dict[str, str], small_redis: redis.Redis
) -> None:
    url = small_redis.connection_pool.connection_kwargs
    password = url.get("password") or ""  # the embedded Redis wants its password
    settings = services.settings(REDIS_URL=f"redis://:{password}@127.0.0.1:{url['port']}/0")
    batch = [track(f"u{n}") for n in range(10)]
    key = credentials["write_key"]
    with ServerThread(create_app(settings)) as api:
        full = httpx.post(f"{api.url}/v1/batch", json={"batch": batch}, auth=(key, ""), timeout=10)
        single = httpx.post(f"{api.url}/v1/track", json=track("u0"), auth=(key, ""), timeout=10)
        for answer in (full, single):  # what an SDK sees: retry later, nothing was claimed
            assert answer.status_code == 503, answer.text
            assert answer.json()["code"] == "store_unavailable"
            assert "out of memory" in answer.json()["message"]
            assert answer.headers["retry-after"]
        assert stored_events(small_redis) == []

        small_redis.delete("filler")  # memory again (trimmed, or maxmemory raised)
        retried = httpx.post(
            f"{api.url}/v1/batch", json={"batch": batch}, auth=(key, ""), timeout=10
        )
    assert retried.status_code == 200
    assert (retried.json()["accepted"], retried.json()["duplicates"]) == (10, 0)
    assert sorted(e.message_id for e in stored_events(small_redis)) == sorted(
        m["messageId"] for m in batch
    )  # every event the SDK sent, once


def trigger_fields(n: int) -> dict[str, str | int]:
    return {
        "trigger_id": f"c{n}:cart-abandoners:enter:{n}:0",
        "customer_id": f"c{n % 7}",
        "segment": "cart-abandoners",
        "kind": "enter",
        "at": n,
        "rule_version": 1,
        "destination": "email",
        "template": "cart-reminder",
        "send": '{"destination": "email", "template": "cart-reminder"}',
    }


def test_triggers_and_finished_deliveries_stay_bounded(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """More triggers and deliveries than are kept: acknowledged triggers and finished
    deliveries past their retention go, with every index; unread or unacknowledged
    triggers and deliveries still due stay."""
    assert settings.redis_url
    for n in range(450):
        redis_client.xadd(TRIGGERS_KEY, trigger_fields(n))  # type: ignore[arg-type]

    async def scenario() -> tuple[int, int]:
        client = aioredis.Redis.from_url(settings.redis_url or "")
        dispatcher = Dispatcher(client, outbox=None)  # type: ignore[arg-type]  # no attempts
        await dispatcher._ensure_group()
        assert await dispatcher.intake() == READ_COUNT  # recorded, acknowledged
        assert await dispatcher.intake() == READ_COUNT
        # read by a dispatcher that died before acknowledging: must be read again
        await client.xreadgroup(GROUP, "died", {TRIGGERS_KEY: ">"}, count=20)
        store = DeliveryStore(client)
        for n in range(300):  # finished; the other 100 are still scheduled
            delivery = await store.get(f"c{n}:cart-abandoners:enter:{n}:0")
            assert delivery is not None
            await store.save(delivery.model_copy(update={"status": "delivered"}))
        trimmed = await trim_triggers(client, group=GROUP, retention_ms=0)
        month_on = now_ms() + 31 * 86_400_000
        pruned = await prune_deliveries(client, now=month_on, retention_ms=30 * 86_400_000)
        await client.aclose()
        return trimmed, pruned

    trimmed, pruned = asyncio.run(scenario())
    assert trimmed == 2 * READ_COUNT
    left: Any = redis_client.xrange(TRIGGERS_KEY)
    assert [fields[b"at"] for _, fields in left] == [str(n).encode() for n in range(400, 450)]
    assert pruned == 300
    assert redis_client.zcard(LOG_KEY) == 100
    assert (
        redis_client.exists(
            *(delivery_key(f"c{n}:cart-abandoners:enter:{n}:0") for n in range(400))
        )
        == 100
    )
    indexed = sum(int(redis_client.zcard(index_key("customer", f"c{n}"))) for n in range(7))
    assert indexed == 100
    assert redis_client.zcard(index_key("rule", "cart-abandoners")) == 100
    assert redis_client.zcard(index_key("destination", "email")) == 100
    assert redis_client.zcard(DUE_KEY) == 100  # still due: kept
