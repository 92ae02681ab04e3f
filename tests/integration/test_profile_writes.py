"""The sink adds a customer's recent events of a read in one ZADD, then trims the list: a read
with many more of one customer's events than the list keeps still lists exactly the newest. A
batch's changes of segment membership go in one command a segment and direction, and its
customers' moves between clusters in one."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, cast

import orjson
import pytest
import redis

from app.clustering.model import membership
from app.clustering.store import MOVES_KEY
from app.profiles.keys import members_key, recent_events_key
from app.settings import Settings
from pipelines.records import ProfileUpdate, Transition
from pipelines.sinks import RECENT_EVENTS, PackedPipeline, ProfileSink
from tests.factories import append_events, stored_event
from tests.helpers import read_profile, run_dataflow


def test_a_read_of_many_events_of_one_customer_lists_the_newest(
    settings: Settings, redis_client: redis.Redis
):
    now = time.time_ns() // 1_000_000
    count = 1_200  # one read (2,000 entries): one ZADD of them all
    events = [
        stored_event(
            message_id=f"many-{n}",
            customer="many-ann",
            name="Product Viewed",
            at=now - count + n,
            properties={"product_id": f"p{n}"},
        )
        for n in range(count)
    ]
    append_events(redis_client, events, settings.partitions)

    run_dataflow(settings)

    assert read_profile(redis_client, "many-ann")["features"]["count(Product Viewed, 10m)"] == count
    listed = cast(list[bytes], redis_client.zrevrange(recent_events_key("many-ann"), 0, -1))
    assert [orjson.loads(member)["message_id"] for member in listed] == [
        f"many-{n}" for n in range(count - 1, count - 1 - RECENT_EVENTS, -1)
    ]


def test_a_batchs_memberships_are_written_a_segment_at_a_time(
    settings: Settings, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
):
    """In one batch 30 customers enter loyal-customers (12 of them moving from cluster c1 to
    c2 as well) and 10 of its members leave it: the sets end exactly as the records say, in
    one SADD or SREM a set and direction, and the cluster moves in one ZADD."""
    loyal, c1, c2 = "loyal-customers", membership("c1"), membership("c2")
    leaving = [f"old{n}" for n in range(10)]
    redis_client.sadd(members_key(loyal), "stays", *leaving)
    redis_client.sadd(members_key(c1), *(f"new{n}" for n in range(12)), "stays")

    def record(customer: str, at: int, *transitions: Transition) -> ProfileUpdate:
        segments = {t.segment for t in transitions if t.kind == "enter"}
        return ProfileUpdate(
            customer, at, {}, {}, segments=frozenset(segments), transitions=transitions
        )

    batch = [
        record(f"new{n}", 1_000 + n, Transition(loyal, "enter", 1_000 + n, 1))
        for n in range(18, 30)
    ]
    batch += [
        record(
            f"new{n}",
            2_000 + n,
            Transition(loyal, "enter", 1_000 + n, 1),
            Transition(c1, "exit", 2_000 + n, 1),
            Transition(c2, "enter", 2_000 + n, 1),
        )
        for n in range(12)
    ]
    batch += [
        record(f"new{n}", 1_000 + n, Transition(loyal, "enter", 1_000, 1))
        for n in (12, 13, 14, 15, 16, 17)
    ]
    batch += [record(who, 3_000, Transition(loyal, "exit", 3_000, 1)) for who in leaving]
    sent: Counter[tuple[str, str]] = Counter()
    command = PackedPipeline.command

    def counted(pipeline: PackedPipeline, *args: Any) -> None:
        sent[(str(args[0]), str(args[1]))] += 1
        command(pipeline, *args)

    monkeypatch.setattr(PackedPipeline, "command", counted)
    partition = ProfileSink(settings.redis_url or "").build("profiles", 0, 1)
    try:
        partition.write_batch(batch)
    finally:
        partition.close()

    assert redis_client.smembers(members_key(loyal)) == {
        b"stays",
        *(f"new{n}".encode() for n in range(30)),
    }
    assert redis_client.smembers(members_key(c1)) == {b"stays"}
    assert redis_client.smembers(members_key(c2)) == {f"new{n}".encode() for n in range(12)}
    moved = redis_client.zrange(MOVES_KEY, 0, -1, withscores=True)
    assert moved == [(f"new{n}".encode(), 2_000 + n) for n in range(12)]
    assert {
        key: count
        for key, count in sent.items()
        if key[1] in (members_key(loyal), members_key(c1), members_key(c2), MOVES_KEY)
    } == {
        ("SADD", members_key(loyal)): 1,
        ("SREM", members_key(loyal)): 1,
        ("SREM", members_key(c1)): 1,
        ("SADD", members_key(c2)): 1,
        ("ZADD", MOVES_KEY): 1,
    }
