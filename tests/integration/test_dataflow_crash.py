"""SIGKILL the dataflow at random moments while events stream in: after each restart it
resumes from its recovery state, and the profiles end exactly as an uninterrupted run's."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import orjson
import redis

from app.profiles.keys import profile_key
from app.settings import Settings
from tests.factories import append_events, processed_entries, shop_events
from tests.helpers import run_dataflow

EVENTS = 4_000
CUSTOMERS = 300
KILLS = 4


def profiles(client: redis.Redis) -> dict[str, dict]:
    found = {}
    for n in range(CUSTOMERS):
        fields = client.hgetall(profile_key(f"c{n}"))
        if fields:
            found[f"c{n}"] = {k.decode(): v.decode() for k, v in fields.items()}
    return found


def total_events(client: redis.Redis) -> int:
    return sum(orjson.loads(p["features"])["events_total"] for p in profiles(client).values())


def start_pipeline(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "pipeline"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def test_sigkill_at_random_moments_changes_no_profile(settings: Settings, redis_client, tmp_path):
    assert settings.redis_url
    now = time.time_ns() // 1_000_000 - 1_000
    events = shop_events(EVENTS, customers=CUSTOMERS, now=now, seed=5, spacing_ms=5)
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url,
        "SEGFLOW_DATA_DIR": str(tmp_path),
        "SEGFLOW_PARTITIONS": str(settings.partitions),
        "SEGFLOW_SNAPSHOT_INTERVAL_S": "1",
    }
    rng = random.Random(9)
    chunks = [events[i : i + 200] for i in range(0, EVENTS, 200)]
    kill_after = sorted(rng.sample(range(1, len(chunks)), KILLS))
    pipeline = start_pipeline(env)
    try:
        for index, chunk in enumerate(chunks):
            append_events(redis_client, chunk, settings.partitions)
            time.sleep(rng.uniform(0.05, 0.4))
            if index in kill_after:
                os.killpg(pipeline.pid, signal.SIGKILL)
                pipeline.wait()
                pipeline.stderr.close()  # type: ignore[union-attr]
                pipeline = start_pipeline(env)
        deadline = time.monotonic() + 60
        while total_events(redis_client) < EVENTS:
            assert pipeline.poll() is None, pipeline.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, f"caught up to {total_events(redis_client)}"
            time.sleep(0.2)
        time.sleep(1.5)  # anything replayed after a resume would show now
        crashed = profiles(redis_client)
    finally:
        os.killpg(pipeline.pid, signal.SIGKILL)
        pipeline.wait()
        pipeline.stderr.close()  # type: ignore[union-attr]

    assert total_events(redis_client) == EVENTS  # nothing lost, nothing counted twice
    assert processed_entries(redis_client) == EVENTS  # what /api/status reports
    for customer in crashed:
        redis_client.delete(profile_key(customer))
    run_dataflow(settings)
    assert profiles(redis_client) == crashed
    with sqlite3.connect(tmp_path / "recovery" / "part-0.sqlite3") as db:  # it really snapshotted
        assert db.execute("SELECT count(*) FROM snaps").fetchone()[0] > 0
