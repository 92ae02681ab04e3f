"""GDPR erasure, end to end: a customer who went through the collector, the dataflow and the
dispatcher (a profile, failed events, a trigger, a dead letter) is erased from every Redis key
and stream entry, from the append-only file and from the dataflow's recovery store, and nobody
else's data goes with them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
import redis

from app.dispatch.deliveries import DEAD_KEY, index_key
from app.profiles.keys import TRIGGERS_KEY, profile_key
from app.settings import Settings
from app.streams import FAILED_EVENTS_KEY, PROGRESS_KEY, partition_of, stream_key
from tests.factories import iso
from tests.helpers import pipeline_env, run_dataflow, wait_for
from tests.integration.test_dispatcher import LoopbackOutbox, Receiver, dispatch_until

ERASED = "zz-erased"  # as in the report: another customer's event is named after this id
EMAIL = "zz.erased@example.org"
MINUTE = 60_000


def send(api: Any, credentials: dict[str, str], batch: list[dict[str, Any]]) -> dict[str, Any]:
    response = httpx.post(
        f"{api.url}/v1/batch", json={"batch": batch}, auth=(credentials["write_key"], "")
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def message(kind: str, user: str, at: int, **fields: Any) -> dict[str, Any]:
    """A Segment message whose messageId says nothing about its sender (a uuid, as SDKs do)."""
    return {
        "type": kind,
        "userId": user,
        "timestamp": iso(at),
        "messageId": str(uuid.uuid4()),
        **fields,
    }


def shop(api: Any, credentials: dict[str, str]) -> None:
    """The erased customer signs up with an email and abandons a cart two hours ago (the
    cart reminder is due); one of their messages is refused; another customer's refused
    message has an event named like the erased customer's id."""
    now = time.time_ns() // 1_000_000
    stored = send(
        api,
        credentials,
        [
            message("identify", ERASED, now - 121 * MINUTE, traits={"email": EMAIL}),
            message(
                "track",
                ERASED,
                now - 120 * MINUTE,
                event="Product Added",
                properties={"product_id": "p1", "price": 30.0},
            ),
            message("identify", "bystander", now - 120 * MINUTE, traits={"email": "b@example.org"}),
            # refused (a track needs an event): the erased customer's failed event
            message("track", ERASED, now - 119 * MINUTE, properties={"email": EMAIL}),
            # refused (no such timestamp): a bystander's, whose event is named like the id
            message("track", "bystander", 0, event=ERASED) | {"timestamp": "yesterday"},
        ],
    )
    assert (stored["accepted"], len(stored["errors"])) == (3, 2)


def mentions(client: Any, *needles: str) -> list[str]:
    """Every key, and every value of every key (stream entries, hash fields, members), that
    contains one of ``needles``: where each was found."""
    found = []
    wanted = [needle.encode() for needle in needles]
    for key in client.scan_iter(count=1_000):
        kind = client.type(key)
        if kind == b"string":
            values: list[Any] = [client.get(key)]
        elif kind == b"hash":
            values = list(client.hgetall(key).items())
        elif kind == b"zset":
            values = client.zrange(key, 0, -1)
        elif kind == b"set":
            values = list(client.smembers(key))
        elif kind == b"list":
            values = client.lrange(key, 0, -1)
        elif kind == b"stream":
            values = [(entry_id, fields) for entry_id, fields in client.xrange(key)]
        else:
            values = []
        for value in [key, *values]:
            text = repr(value).encode() if not isinstance(value, bytes) else value
            if any(needle in text or needle in repr(text).encode() for needle in wanted):
                found.append(f"{key.decode()}: {value!r}"[:300])
    return found


@pytest.fixture
def erased(
    settings: Settings, redis_client: redis.Redis, api: Any, credentials: dict[str, str]
) -> dict[str, Any]:
    """The customer went through collector, dataflow and dispatcher (a profile, two failed
    events, a trigger, a dead letter), was erased through the API, and the dataflow read the
    erasure (without a recovery store it finishes it then): the API's answer."""
    shop(api, credentials)
    run_dataflow(settings)  # the profile, and the cart reminder due an hour and a half ago
    wait_for(lambda: redis_client.xlen(TRIGGERS_KEY) == 1, what="the cart reminder's trigger")
    refusing = Receiver(lambda _n: 410)  # gone: not retried, a dead letter at once
    try:
        dispatch_until(
            settings, LoopbackOutbox(refusing), lambda: redis_client.zcard(DEAD_KEY) == 1
        )
    finally:
        refusing.close()
    assert redis_client.zcard(index_key("customer", ERASED)) == 1
    assert redis_client.xlen(FAILED_EVENTS_KEY) == 2
    assert mentions(redis_client, ERASED), "the customer is in Redis before the erasure"

    admin = {"Authorization": f"Bearer {credentials['admin_token']}"}
    response = httpx.delete(f"{api.url}/api/customers/{ERASED}", headers=admin)
    assert response.status_code == 200, response.text
    run_dataflow(settings)  # reads the erase entry
    answer: dict[str, Any] = response.json()
    return answer


def test_erasure_answers_the_profile_it_erased_and_what_went(erased: dict[str, Any]):
    # the contract's shape for GET|DELETE /api/customers/{id}: the customer as they were
    assert (erased["customer_id"], erased["traits"]["email"]) == (ERASED, EMAIL)
    assert {"features", "segments", "cluster", "first_seen", "last_seen", "events"} <= set(erased)
    assert (erased["failed_events_deleted"], erased["deliveries_deleted"]) == (1, 1)
    assert (erased["triggers_deleted"], erased["profile_deleted"]) == (1, True)
    assert erased["aof_rewrite"] in {"started", "busy", "off", "unavailable"}


def test_a_failed_event_named_like_the_erased_id_stays_with_its_customer(
    erased: dict[str, Any], redis_client: redis.Redis
):
    failed: Any = redis_client.xrange(FAILED_EVENTS_KEY)
    kept = [fields[b"raw"] for _, fields in failed]
    assert len(kept) == 1, "the bystander's failed event stays, the erased customer's goes"
    assert b'"bystander"' in kept[0]
    assert redis_client.exists(profile_key("bystander"))


def test_nothing_in_redis_names_the_erased_customer(
    erased: dict[str, Any], redis_client: redis.Redis
):
    left = [where for where in mentions(redis_client, ERASED, EMAIL) if "bystander" not in where]
    assert left == []  # deliveries, indexes, dead letters, triggers, markers, the erase entry


def test_the_append_only_file_is_rewritten_without_the_customer(
    services: Any, erased: dict[str, Any]
):
    if services.name != "embedded":
        pytest.skip("only the embedded Redis is known to keep an append-only file here")
    aof = Path(services.data_dir) / "redis" / "appendonly.aof"
    wait_for(
        lambda: EMAIL.encode() not in aof.read_bytes(),
        timeout_s=120,
        what="the append-only file rewritten without the email",
    )


@pytest.mark.backend_independent
def test_the_recovery_store_forgets_the_customer_after_its_next_snapshots(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path, api, credentials
):
    env = pipeline_env(
        settings.redis_url or "", tmp_path, settings.partitions, SEGFLOW_SNAPSHOT_INTERVAL_S="1"
    )
    recovery = tmp_path / "recovery"

    def recovery_holds(needle: bytes) -> bool:
        return any(needle in path.read_bytes() for path in recovery.glob("part-*"))

    pipeline = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "pipeline"], env=env, start_new_session=True
    )
    try:
        shop(api, credentials)
        wait_for(lambda: redis_client.exists(profile_key(ERASED)), timeout_s=120)
        wait_for(
            lambda: recovery_holds(EMAIL.encode()),
            timeout_s=120,
            what="a recovery snapshot that holds the customer",
        )
        admin = {"Authorization": f"Bearer {credentials['admin_token']}"}
        erased = httpx.delete(f"{api.url}/api/customers/{ERASED}", headers=admin)
        assert erased.status_code == 200, erased.text
        wait_for(
            lambda: not recovery_holds(EMAIL.encode()),
            timeout_s=120,
            what="the recovery files without the email",
        )
        assert not recovery_holds(ERASED.encode())

        def left() -> list[str]:
            found = mentions(redis_client, ERASED, EMAIL)
            return [where for where in found if "bystander" not in where]

        # the erase entry too, once no snapshot from before it is left
        wait_for(lambda: left() == [], timeout_s=120, what="nothing names the customer")
        assert pipeline.poll() is None  # the compaction did not stop the dataflow
    finally:
        os.killpg(pipeline.pid, 9)
        pipeline.wait()


def test_a_customer_whose_id_holds_a_slash_is_read_and_erased(
    settings: Settings, redis_client: redis.Redis, api: Any, credentials: dict[str, str]
):
    now = time.time_ns() // 1_000_000
    ids = ["shop/42", "a/b/transitions"]
    send(
        api,
        credentials,
        [
            message(
                "track",
                customer,
                now - MINUTE,
                event="Product Viewed",
                properties={"product_id": "p1"},
            )
            for customer in ids
        ],
    )
    run_dataflow(settings)
    admin = {"Authorization": f"Bearer {credentials['admin_token']}"}
    for path in ("shop%2F42", "shop/42"):  # escaped or not: "%2F" is decoded before routing
        found = httpx.get(f"{api.url}/api/customers/{path}", headers=admin)
        assert found.status_code == 200, found.text
        assert found.json()["customer_id"] == "shop/42"
        listed = httpx.get(f"{api.url}/api/customers/{path}/transitions", headers=admin)
        assert listed.status_code == 200, listed.text
    # an id ending like a sub-resource reads as that sub-resource of the id before it
    sub = httpx.get(f"{api.url}/api/customers/a%2Fb%2Ftransitions", headers=admin)
    assert (sub.status_code, sub.json()) == (200, {"items": [], "next_cursor": None})
    for customer in ids:  # (and erasing has no sub-resource: any id is erased)
        erased = httpx.delete(f"{api.url}/api/customers/{quote(customer, safe='')}", headers=admin)
        assert erased.status_code == 200, erased.text
        assert erased.json()["customer_id"] == customer
    gone = httpx.get(f"{api.url}/api/customers/shop%2F42", headers=admin)
    assert (gone.status_code, gone.json()["detail"]) == (404, "customer 'shop/42': no profile")


def test_erasing_events_the_dataflow_has_not_read_leaves_no_lag_behind(
    settings: Settings, redis_client: redis.Redis, api: Any, credentials: dict[str, str]
):
    now = time.time_ns() // 1_000_000
    admin = {"Authorization": f"Bearer {credentials['admin_token']}"}

    def lag() -> int:
        found: int = httpx.get(f"{api.url}/api/status", headers=admin).json()["lag"]
        return found

    def viewed(customer: str, at: int) -> dict[str, Any]:
        return message("track", customer, at, event="Product Viewed")

    send(api, credentials, [viewed("zz-late", now - 3 * MINUTE)])
    run_dataflow(settings)  # read and counted
    assert lag() == 0
    # the flow says which entry it applied last in the partition
    partition = partition_of("zz-late", settings.partitions)
    entries: Any = redis_client.xrange(stream_key(partition))
    ((first, _),) = entries
    values: Any = redis_client.hvals(PROGRESS_KEY)
    progress = [orjson.loads(value) for value in values]
    assert [p[2:] for p in progress if p[0]] == [[partition, first.decode()]]
    # the flow is behind: two more of theirs and one of someone else's wait unread
    later = [viewed("zz-late", now - 2 * MINUTE), viewed("zz-late", now - MINUTE)]
    send(api, credentials, [*later, viewed("bystander", now - MINUTE)])
    assert lag() == 3
    erased = httpx.delete(f"{api.url}/api/customers/zz-late", headers=admin)
    assert erased.json()["events_deleted"] == 3
    # the flow will read the bystander's event and the erasure's own entry, never the two
    # deleted unread (it counted the first): once it has read those two, the lag is 0
    assert lag() == 2
