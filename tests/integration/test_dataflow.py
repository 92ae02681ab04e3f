"""The real Bytewax dataflow over real Redis Streams: events in, profiles out."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import httpx
import orjson
import pytest
import redis
import redis.asyncio as aioredis
from bytewax.testing import TestingSink

from app.cli import run_cluster
from app.events import StreamEntry
from app.profiles.keys import profile_key, recent_events_key, transitions_key
from app.profiles.service import CustomerProfile, get_profile
from app.settings import Settings
from app.streams import EVENT_FIELD, partition_of, stream_key
from pipelines.records import ProfileUpdate, Unprocessable
from pipelines.sinks import _ProfilePartition
from tests.factories import StreamEntries, iso, stored_event, track_at
from tests.helpers import (
    pipeline_env,
    read_profile,
    replay_messages,
    run_dataflow,
    wait_for,
    wait_for_epochs,
)

MINUTE = 60_000
HOUR = 60 * MINUTE
SEGMENT = "browsing-enthusiasts"


def test_events_become_profiles(settings: Settings, redis_client: redis.Redis, tmp_path: Path):
    now = time.time_ns() // 1_000_000 - 1_000  # live: the next deadline is a minute ahead
    messages = [
        track_at("ada", "Product Viewed", now - 9 * MINUTE, product_id="p1", category="shoes"),
        track_at("ada", "Product Viewed", now - 5 * MINUTE, product_id="p2", category="shoes"),
        track_at("ada", "Product Added", now - 4 * MINUTE, product_id="p2", price=40.0, quantity=2),
        track_at("ada", "Product Viewed", now, product_id="p3", category="bags"),
        track_at("bob", "Order Completed", now - MINUTE, revenue=99.5, order_id="o1"),
        {
            "type": "identify",
            "userId": "ada",
            "traits": {"plan": "pro"},
            "timestamp": iso(now - 30_000),
            "messageId": "ada-identify",
        },
    ]
    replay_messages(redis_client, settings, tmp_path, messages)
    run_dataflow(settings)

    ada = read_profile(redis_client, "ada")
    assert ada["at"] == now
    assert ada["features"]["count(Product Viewed, 10m)"] == 3
    assert ada["features"]["cart_value"] == 80.0
    assert ada["features"]["since(Product Added)"] == 4 * MINUTE
    assert ada["features"]["top_category_30d"] == "shoes"
    assert ada["traits"] == {"plan": "pro"}
    bob = read_profile(redis_client, "bob")
    assert bob["features"]["count(Order Completed, 30d)"] == 1
    assert bob["features"]["rfm_monetary_90d"] == 99.5

    newest_first = cast(list[bytes], redis_client.zrevrange(recent_events_key("ada"), 0, -1))
    recent = [orjson.loads(m) for m in newest_first]
    assert [(e["type"], e["event"], e["timestamp"] - now) for e in recent] == [  # newest first
        ("track", "Product Viewed", 0),
        ("identify", None, -30_000),
        ("track", "Product Added", -4 * MINUTE),
        ("track", "Product Viewed", -5 * MINUTE),
        ("track", "Product Viewed", -9 * MINUTE),
    ]


def test_late_events_are_kept_as_failed_with_reason_late(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
):
    now = time.time_ns() // 1_000_000 - 1_000
    replay_messages(redis_client, settings, tmp_path, [track_at("cy", "Product Viewed", now)])
    run_dataflow(settings)
    late = track_at("cy", "Product Viewed", now - settings.allowed_lateness_ms - 1)
    replay_messages(redis_client, settings, tmp_path, [late])
    run_dataflow(settings)  # resumes from nothing: state is rebuilt, then the late one arrives

    failed = cast(StreamEntries, redis_client.xrange("failed-events"))
    assert len(failed) == 1
    assert failed[0][1][b"reason"] == b"late"
    assert failed[0][1][b"detail"].startswith(b"more than the allowed lateness")
    assert read_profile(redis_client, "cy")["features"]["count(Product Viewed, 10m)"] == 1


def test_an_event_the_flow_could_not_apply_is_kept_once_as_unprocessable(
    settings: Settings, redis_client: redis.Redis
):
    """The shard sets such an event aside (``tests/unit/test_shard_quarantine.py``); its sink
    keeps it in failed events, once though a restart's replay emits it again."""
    entry = stored_event(
        message_id="m-odd", customer="dee", name="Product Viewed", at=1_000, properties={}
    )
    assert settings.redis_url is not None
    sink = _ProfilePartition(settings.redis_url, None, None)
    try:
        for _ in range(2):
            odd = Unprocessable(cast(StreamEntry, entry), "ValueError: cannot apply this one")
            sink.write_batch([odd])
    finally:
        sink.close()
    failed = cast(StreamEntries, redis_client.xrange("failed-events"))
    assert len(failed) == 1
    assert failed[0][1][b"reason"] == b"unprocessable"
    assert b"ValueError: cannot apply this one" in failed[0][1][b"detail"]
    assert orjson.loads(failed[0][1][b"raw"])["message_id"] == "m-odd"


def test_stream_entries_the_flow_cannot_read_are_kept_and_the_rest_flows(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
):
    """Nothing Segflow writes, but whoever can write Redis can: before, the source raised on
    each of these and the flow stopped, and stopped on it again when restarted."""
    partition = partition_of("dee", settings.partitions)
    odd: list[dict[str, bytes]] = [
        {EVENT_FIELD: b"not json"},
        {EVENT_FIELD: b'{"no": "type"}'},
        {EVENT_FIELD: b'{"type": "track", "customer_id": 7, "timestamp": 1}'},
        {EVENT_FIELD: b'{"type": "track", "customer_id": "dee", "timestamp": "soon"}'},
        {"other": b"field"},
    ]
    for fields in odd:
        redis_client.xadd(stream_key(partition), fields)  # type: ignore[arg-type]
    now = time.time_ns() // 1_000_000 - 1_000
    replay_messages(redis_client, settings, tmp_path, [track_at("dee", "Product Viewed", now)])
    run_dataflow(settings)
    failed = cast(StreamEntries, redis_client.xrange("failed-events"))
    assert [kept[b"reason"] for _, kept in failed] == [b"unprocessable"] * len(odd)
    for _, kept in failed:
        assert b"not an entry the dataflow can read" in kept[b"detail"]
    assert b"not json" in failed[0][1][b"raw"]
    assert read_profile(redis_client, "dee")["features"]["count(Product Viewed, 10m)"] == 1


@pytest.mark.backend_independent
@pytest.mark.parametrize("layout", ["2 workers", "2 processes"])
def test_workers_and_processes_give_the_same_profiles(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path, layout: str
):
    now = time.time_ns() // 1_000_000 - 1_000
    names = ["Product Viewed", "Product Added", "Order Completed"]
    messages = [
        track_at(
            f"c{n % 17}",
            names[n % 3],
            now - (n % 50) * 1000,
            product_id=f"p{n % 5}",
            price=10.0,
            revenue=20.0,
        )
        for n in range(600)
    ]
    replay_messages(redis_client, settings, tmp_path, messages)
    run_dataflow(settings)  # one worker, in this thread
    single = {f"c{n}": read_profile(redis_client, f"c{n}") for n in range(17)}
    for n in range(17):
        redis_client.delete(profile_key(f"c{n}"))

    # the test's own database and data dir (never the checkout's .segflow/), rules seeded
    database = {"DATABASE_URL": settings.database_url} if settings.database_url else {}
    env = pipeline_env(
        settings.redis_url or "",
        settings.data_dir,
        settings.partitions,
        SEGFLOW_STOP_AT_END="1",
        **database,
    )
    run = [sys.executable, "-m", "bytewax.run", "pipelines.segmentation:flow_from_env()"]
    if layout == "2 workers":
        assert run_cluster([*run, "-w", "2"], 1, env) == 0
    else:
        assert run_cluster(run, 2, env) == 0
    assert {f"c{n}": read_profile(redis_client, f"c{n}") for n in range(17)} == single


def transitions_of(settings: Settings, customer: str, segment: str) -> list[tuple[int, str]]:
    """(instant, kind) of every transition of ``customer`` in ``segment`` the dataflow emits,
    in order (the records carry every one, each dated at its own instant)."""
    seen: list[Any] = []
    run_dataflow(settings, sink=TestingSink(seen))
    return [
        (t.at, t.kind)
        for u in seen
        if isinstance(u, ProfileUpdate) and u.customer_id == customer
        for t in u.transitions
        if t.segment == segment
    ]


def test_a_replay_fires_deadlines_in_event_time_order(settings, redis_client, tmp_path):
    """Browsing enthusiasts: 5 views in the last 10 min. One read brings every event of the
    replay; each deadline still fires at its own instant, before the events after it apply."""
    t0 = time.time_ns() // 1_000_000 - 2 * 3_600_000  # two hours ago: a replay of history
    second = 1_000
    views = [t0 + n * second for n in range(5)]  # in at 4 s, out at 10 min (the first leaves)
    views += [t0 + 15 * MINUTE + n * second for n in range(5)]  # in again at 15 min + 4 s
    views.append(t0 + 16 * MINUTE)  # 6 in the window: out when the second of these leaves
    replay_messages(
        redis_client, settings, tmp_path, [track_at("dee", "Product Viewed", at) for at in views]
    )
    changes = [(at - t0, kind) for at, kind in transitions_of(settings, "dee", SEGMENT)]
    assert changes == [
        (4 * second, "enter"),
        (10 * MINUTE, "exit"),  # the first view left the window at exactly t0 + 10 min ...
        (15 * MINUTE + 4 * second, "enter"),  # ... before the next events were applied
        (25 * MINUTE + second, "exit"),  # and when the replay ended, what was due fired
    ]


def transitions_at(client: redis.Redis, customer_id: str) -> list[dict[str, Any]]:
    """The customer's transitions as the sink wrote them, oldest first."""
    found = cast(list[bytes], client.zrange(transitions_key(customer_id), 0, -1))
    return [orjson.loads(member) for member in found]


def profile_at(settings: Settings, customer_id: str, now: int) -> CustomerProfile | None:
    """The profile as the admin API answers it, read at the instant ``now``."""

    async def read() -> CustomerProfile | None:
        client = aioredis.Redis.from_url(settings.redis_url or "")
        try:
            return await get_profile(client, customer_id, now=now)
        finally:
            await client.aclose()

    return asyncio.run(read())


def test_a_profile_read_between_evaluations_shows_the_values_then(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
):
    """Views leave the 10-minute window after the dataflow's last evaluation of the customer
    (it has stopped, and four views never make a segment, so it would not evaluate them
    anyway): the profile read at an instant shows the count at that instant, from the changes
    its record carries."""
    now = time.time_ns() // 1_000_000 - 1_000
    views = [now - 9 * MINUTE - 30_000, now - 9 * MINUTE, now - 8 * MINUTE, now - 7 * MINUTE]
    added = now - 8 * MINUTE - 1
    messages = [track_at("vi", "Product Viewed", at) for at in views]
    messages.append(track_at("vi", "Product Added", added, product_id="p1", price=5))
    replay_messages(redis_client, settings, tmp_path, messages)
    run_dataflow(settings)
    exits = [at + 10 * MINUTE for at in views]
    readings = [(now, 4), (exits[0] - 1, 4), (exits[0], 3), (exits[1], 2), (exits[2] + 1, 1)]
    readings += [(exits[3] - 1, 1), (exits[3], 0), (now + HOUR, 0)]
    for at, expected in readings:
        found = profile_at(settings, "vi", at)
        assert found is not None
        assert found.features["count(Product Viewed, 10m)"] == expected, f"at {at - now} ms"
        assert found.features["since(Product Added)"] == at - added  # grows with the clock


@pytest.mark.backend_independent
def test_live_deadlines_fire_on_time(settings, redis_client, tmp_path):
    """A running dataflow fires a deadline by the wall clock, with no event to wake it, dated
    at the deadline itself and never before it. (How soon after it is measured by
    bench/pipeline.py; here a busy machine may be slow, so only the order is asserted.) Five
    views a millisecond apart: the first one's exit takes the customer out of
    browsing-enthusiasts, a deadline the dataflow evaluates (one that changes no segment is
    only carried by the record, test_a_profile_read_between_evaluations_shows_the_values_then)."""
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url or "",
        "SEGFLOW_PARTITIONS": str(settings.partitions),
        "SEGFLOW_DATA_DIR": str(tmp_path),
    }
    pipeline = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "pipeline", "--no-recovery"],
        env=env,
        start_new_session=True,
    )

    def views(customer: str) -> int | None:
        fields = redis_client.hgetall(profile_key(customer))
        if not fields:
            return None
        return cast(int, orjson.loads(fields[b"features"])["count(Product Viewed, 10m)"])

    def applied(customer: str) -> bool:
        return views(customer) is not None

    def append_view(customer: str, at: int, views: int = 1) -> None:
        messages = [track_at(customer, "Product Viewed", at + n) for n in range(views)]
        replay_messages(redis_client, settings, tmp_path, messages)

    try:
        append_view("warm", time.time_ns() // 1_000_000)
        wait_for(lambda: applied("warm"), timeout_s=120, what="the dataflow running")
        # The views must all be applied before their deadline passes, or the deadline is
        # merely due when it is read (and a read may take the five in two parts, whose first
        # record shows 4 before the deadline): on a busy machine try again, further ahead.
        for attempt, lead_ms in enumerate((3_000, 10_000, 30_000)):
            customer = f"eve{attempt}"
            deadline = time.time_ns() // 1_000_000 + lead_ms

            def all_in_or_late(customer: str = customer, deadline: int = deadline) -> bool:
                return views(customer) == 5 or time.time_ns() // 1_000_000 >= deadline

            append_view(customer, deadline - 10 * MINUTE, views=5)
            wait_for(all_in_or_late, timeout_s=120, what="the views")
            if views(customer) == 5 and time.time_ns() // 1_000_000 < deadline:
                break
        else:
            pytest.fail("the dataflow never applied five views within 30 s of appending them")
        wait_for(lambda: views(customer) == 4, timeout_s=120, what="the deadline fired")
        fired_after_ms = time.time_ns() // 1_000_000 - deadline
        fields = redis_client.hgetall(profile_key(customer))
    finally:
        os.killpg(pipeline.pid, 9)
        pipeline.wait()
    assert int(fields[b"at"]) == deadline  # the change is dated at the deadline itself
    assert fired_after_ms >= 0  # and was made once it had come, not before
    assert [(t["kind"], t["at"]) for t in transitions_at(redis_client, customer)] == [
        ("enter", deadline - 10 * MINUTE + 4),
        ("exit", deadline),
    ]


def test_erasure_forgets_the_customer_everywhere_and_for_good(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path, api, credentials
):

    now = time.time_ns() // 1_000_000 - 1_000
    replay_messages(
        redis_client,
        settings,
        tmp_path,
        [
            # its deadline falls after the restart below: a state that survived would re-emit
            track_at("gdpr", "Product Viewed", now - 10 * MINUTE + 8_000, product_id="p1"),
            track_at("gdpr", "Product Added", now - 2_000, product_id="p1", price=5.0),
            track_at("other", "Product Viewed", now - 1_000),
        ],
    )
    redis_client.xadd(
        "failed-events",
        {
            "received_at": now,
            "reason": "x",
            "source": "s",
            "raw": json.dumps({"userId": "gdpr", "event": 1}),
        },
    )
    headers = {"Authorization": f"Bearer {credentials['admin_token']}"}
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url or "",
        "SEGFLOW_DATA_DIR": str(tmp_path),
        "SEGFLOW_PARTITIONS": str(settings.partitions),
        "SEGFLOW_SNAPSHOT_INTERVAL_S": "1",
    }

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", "pipeline"], env=env, start_new_session=True
        )

    def caught_up() -> bool:
        lag: int = httpx.get(f"{api.url}/api/status", headers=headers).json()["lag"]
        return lag == 0

    pipeline = start()
    try:
        wait_for(lambda: redis_client.exists(profile_key("gdpr")))
        wait_for_epochs(tmp_path / "recovery")  # a recovery snapshot that holds the customer

        erased = httpx.delete(f"{api.url}/api/customers/gdpr", headers=headers)
        assert erased.status_code == 200
        report = erased.json()
        assert report["customer_id"] == "gdpr"
        assert (report["events_deleted"], report["failed_events_deleted"]) == (2, 1)
        assert report["profile_deleted"] is True
        assert httpx.get(f"{api.url}/api/customers/gdpr", headers=headers).status_code == 404
        wait_for(caught_up)

        os.killpg(pipeline.pid, 9)  # restart from the snapshot taken before the erasure
        pipeline.wait()
        pipeline = start()
        replay_messages(redis_client, settings, tmp_path, [track_at("other", "Product Added", now)])
        wait_for(
            lambda: (
                caught_up()
                and b"Product Added"
                in b"".join(
                    cast(list[bytes], redis_client.zrange(recent_events_key("other"), 0, -1))
                )
            )
        )
        # a state that survived the restart would have re-emitted by the epoch after this one
        wait_for_epochs(tmp_path / "recovery")
    finally:
        os.killpg(pipeline.pid, 9)
        pipeline.wait()

    assert not redis_client.exists(profile_key("gdpr"), recent_events_key("gdpr"))
    stored = [
        json.loads(f[b"e"])
        for p in range(settings.partitions)
        for _, f in cast(StreamEntries, redis_client.xrange(stream_key(p)))
    ]
    # the erase entry alone, until the dataflow's snapshots are past it (then it goes too)
    assert {e["type"] for e in stored if e["customer_id"] == "gdpr"} <= {"erase"}
    failed = cast(StreamEntries, redis_client.xrange("failed-events"))
    assert b"gdpr" not in b"".join(f[b"raw"] for _, f in failed)
    missing = httpx.delete(f"{api.url}/api/customers/nobody", headers=headers)
    assert missing.status_code == 404
