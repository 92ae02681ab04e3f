"""Accept-to-membership delay, measured by the real dataflow's sink: live events through the
collector give a delay between their acceptance and the status read; a replay, and the
dataflow reading the same streams again, add no sample."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

import httpx
import redis

from app.settings import Settings
from app.streams import DELAY_SAMPLES_KEY
from tests.factories import track_at as track
from tests.helpers import ServerThread, replay_messages, run_dataflow

MINUTE = 60_000
CEILING_MS = 120_000  # generous: a busy machine starting a dataflow


def status(api: ServerThread, credentials: dict[str, str]) -> dict[str, Any]:
    answer = httpx.get(
        f"{api.url}/api/status",
        headers={"Authorization": f"Bearer {credentials['admin_token']}"},
    )
    assert answer.status_code == 200, answer.text
    return cast(dict[str, Any], answer.json())


def test_live_events_are_measured_and_a_replay_is_not(
    settings: Settings,
    redis_client: redis.Redis,
    api: ServerThread,
    credentials: dict[str, str],
    tmp_path: Path,
):
    empty = status(api, credentials)["membership_delay_ms"]
    assert empty == {"p50": None, "p95": None, "samples": 0, "window_s": 300}

    started = time.monotonic()
    now = time.time_ns() // 1_000_000
    for batch in range(3):  # three requests: three accept times
        views = [
            track(f"live{batch}-{n}", "Product Viewed", now - MINUTE + n, product_id="p1")
            for n in range(20)
        ]
        sent = httpx.post(
            f"{api.url}/v1/batch", json={"batch": views}, auth=(credentials["write_key"], "")
        )
        assert sent.json()["accepted"] == 20, sent.text
    run_dataflow(settings)
    found = status(api, credentials)
    since_sent_ms = (time.monotonic() - started) * 1000
    assert {"events_accepted", "events_processed", "lag", "watermark"} <= set(found)
    assert found["lag"] == 0
    delay = found["membership_delay_ms"]
    assert delay["samples"] >= 1
    # from an accept after ``started`` to a write before this status: within that span
    assert 0 <= delay["p50"] <= delay["p95"] <= min(since_sent_ms + 50, CEILING_MS), delay
    samples = redis_client.lrange(DELAY_SAMPLES_KEY, 0, -1)

    # A replay of the same kind of events, then the dataflow over every stream again (the live
    # events too, as after a restart without its recovery state): nothing is measured.
    replay_messages(
        redis_client,
        settings,
        tmp_path,
        [
            track(f"old{n}", "Product Viewed", now - 30 * MINUTE + n, product_id="p1")
            for n in range(20)
        ],
    )
    run_dataflow(settings)
    again = status(api, credentials)
    assert again["events_processed"] > found["events_processed"]  # the replay was processed
    assert again["membership_delay_ms"] == delay
    assert redis_client.lrange(DELAY_SAMPLES_KEY, 0, -1) == samples
