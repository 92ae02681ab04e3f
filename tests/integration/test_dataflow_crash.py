"""SIGKILL the dataflow at random moments while events stream in: after each restart it
resumes from its recovery state, and the profiles end exactly as an uninterrupted run's."""

from __future__ import annotations

import sqlite3
import time

import orjson
import pytest

from app.profiles.keys import profile_key
from app.settings import Settings
from tests.factories import processed_entries, shop_events
from tests.helpers import append_with_kills, customer_profiles, pipeline_env, run_dataflow

EVENTS = 4_000
CUSTOMERS = 300
KILLS = 4


def total_events(profiles: dict[str, dict[bytes, bytes]]) -> int:
    return sum(orjson.loads(p[b"features"])["events_total"] for p in profiles.values())


@pytest.mark.backend_independent
@pytest.mark.parametrize(
    ("workers", "processes"),
    [
        pytest.param(1, 1, id="1 worker"),
        pytest.param(1, 2, id="2 processes"),
        pytest.param(2, 1, id="-w 2", marks=pytest.mark.slow),
    ],
)
def test_sigkill_at_random_moments_changes_no_profile(
    settings: Settings, redis_client, tmp_path, workers: int, processes: int
):
    assert settings.redis_url
    now = time.time_ns() // 1_000_000 - 1_000
    events = shop_events(EVENTS, customers=CUSTOMERS, now=now, seed=5, spacing_ms=5)
    env = pipeline_env(
        settings.redis_url, tmp_path, settings.partitions, SEGFLOW_SNAPSHOT_INTERVAL_S="1"
    )
    append_with_kills(
        redis_client,
        env,
        events,
        partitions=settings.partitions,
        chunk=200,
        kills=KILLS,
        seed=9,
        pause_s=(0.05, 0.4),
        workers=workers,
        processes=processes,
    )
    crashed = customer_profiles(redis_client, CUSTOMERS)

    assert total_events(crashed) == EVENTS  # nothing lost, nothing counted twice
    assert processed_entries(redis_client) == EVENTS  # what /api/status reports
    for customer in crashed:
        redis_client.delete(profile_key(customer))
    run_dataflow(settings)
    assert customer_profiles(redis_client, CUSTOMERS) == crashed
    with sqlite3.connect(tmp_path / "recovery" / "part-0.sqlite3") as db:  # it really snapshotted
        assert db.execute("SELECT count(*) FROM snaps").fetchone()[0] > 0
