"""A caught-up source waits for entries inside Redis (`XREAD ... BLOCK`), not on a timer: a
quiet live dataflow takes a new event as soon as it is appended, a run over a finished stream
still ends, and a connection lost while waiting is opened again without losing an entry."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import orjson
import redis

from app.settings import Settings
from app.streams import EVENT_FIELD, partition_of, stream_key
from tests.factories import append_events, stored_event
from tests.helpers import read_profile, run_dataflow, wait_for

CEILING_S = 120.0  # generous: a busy machine starting a dataflow


def _views(customer: str, count: int = 5) -> list[dict[str, Any]]:
    now = time.time_ns() // 1_000_000
    return [
        stored_event(
            message_id=f"{customer}-{n}-{now}",
            customer=customer,
            name="Product Viewed",
            at=now - count + n,
            properties={"product_id": f"p{n}"},
        )
        for n in range(count)
    ]


def _waiting_reads(client: redis.Redis) -> list[dict[str, Any]]:
    """The source's connections of this database blocked in an XREAD (each partition's
    connection is named after it)."""
    db = str(client.connection_pool.connection_kwargs.get("db", 0))
    return [
        found
        for found in client.client_list()
        if found.get("name", "").startswith("segflow-source-")
        and found.get("db") == db
        and found.get("cmd") == "xread"
        and "b" in found.get("flags", "")
    ]


def _all_waiting(client: redis.Redis, partitions: int) -> bool:
    return len(_waiting_reads(client)) == partitions


def _views_counted(client: redis.Redis, customer: str) -> int:
    if not client.exists(f"profile:{{{customer}}}"):
        return 0
    return int(read_profile(client, customer)["features"]["count(Product Viewed, 10m)"])


def test_an_idle_dataflow_waits_in_redis_and_takes_a_new_event(
    settings: Settings, redis_client: redis.Redis, pipeline: subprocess.Popen[bytes]
):
    wait_for(
        lambda: _all_waiting(redis_client, settings.partitions),
        timeout_s=CEILING_S,
        what="every partition's read waiting in Redis",
    )
    append_events(redis_client, _views("quiet-ada"), settings.partitions)

    wait_for(lambda: _views_counted(redis_client, "quiet-ada") == 5, timeout_s=CEILING_S)
    # and the partition that read it waits again
    wait_for(lambda: _all_waiting(redis_client, settings.partitions), timeout_s=CEILING_S)
    assert pipeline.poll() is None


def test_a_run_over_a_finished_stream_still_ends(settings: Settings, redis_client: redis.Redis):
    append_events(redis_client, _views("batch-bo"), settings.partitions)

    run_dataflow(settings)  # returns once caught up (pytest-timeout fails a run that hangs)

    assert _views_counted(redis_client, "batch-bo") == 5
    assert _waiting_reads(redis_client) == []


def test_a_connection_lost_while_waiting_is_opened_again_and_loses_nothing(
    settings: Settings, redis_client: redis.Redis, pipeline: subprocess.Popen[bytes]
):
    customer = "dropped-cy"
    wait_for(lambda: _all_waiting(redis_client, settings.partitions), timeout_s=CEILING_S)
    waiting = _waiting_reads(redis_client)
    for found in waiting:
        redis_client.client_kill_filter(_id=found["id"])
    # appended while the source has no connection to read it on
    stream = stream_key(partition_of(customer, settings.partitions))
    for event in _views(customer):
        redis_client.xadd(stream, {EVENT_FIELD: orjson.dumps(event)})

    wait_for(lambda: _views_counted(redis_client, customer) == 5, timeout_s=CEILING_S)
    killed = {found["id"] for found in waiting}

    def waiting_again() -> bool:
        found = _waiting_reads(redis_client)
        return len(found) == settings.partitions and not killed & {f["id"] for f in found}

    wait_for(waiting_again, timeout_s=CEILING_S, what="new connections waiting")
    assert pipeline.poll() is None  # the same dataflow: recovered, not restarted
