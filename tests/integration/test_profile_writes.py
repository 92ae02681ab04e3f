"""The sink adds a customer's recent events of a read in one ZADD, then trims the list: a read
with many more of one customer's events than the list keeps still lists exactly the newest."""

from __future__ import annotations

import time
from typing import cast

import orjson
import redis

from app.profiles.keys import recent_events_key
from app.settings import Settings
from pipelines.sinks import RECENT_EVENTS
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
