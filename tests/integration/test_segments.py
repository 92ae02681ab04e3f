"""Shipped rules live in the real dataflow: customers enter and exit segments at the exact
event-time instants of the contract, seen through the admin API, with triggers written once."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

import httpx
import redis

from app.profiles.keys import TRIGGERS_KEY, retracted_key, trigger_id
from app.settings import Settings
from app.streams import partition_of
from pipelines.sources import BATCH
from tests.factories import StreamEntries
from tests.factories import track_at as track
from tests.helpers import ServerThread, run_dataflow
from tests.helpers import replay_messages as replay

MINUTE = 60_000


def get(api: ServerThread, token: str, path: str) -> dict[str, Any]:
    answer = httpx.get(f"{api.url}{path}", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    return cast(dict[str, Any], answer.json())


def test_replayed_history_gives_the_contract_transitions(
    settings: Settings,
    redis_client: redis.Redis,
    tmp_path: Path,
    api: ServerThread,
    credentials: dict[str, str],
):
    t0 = (time.time_ns() // 1_000_000) - 3 * 60 * MINUTE
    messages = [
        # ada adds, leaves, adds again 40 min later and never orders
        track("ada", "Product Added", t0, product_id="p1", price=20.0),
        track("ada", "Product Added", t0 + 40 * MINUTE, product_id="p2", price=15.0),
        # bob orders within the 30 minutes: never an abandoner
        track("bob", "Product Added", t0, product_id="p1", price=20.0),
        track("bob", "Order Completed", t0 + 10 * MINUTE, order_id="o1", revenue=20.0),
        # cy views five products in five minutes: a browsing enthusiast until the first
        # view leaves the 10-minute window
        *(track("cy", "Product Viewed", t0 + n * MINUTE, product_id=f"p{n}") for n in range(1, 6)),
    ]
    replay(redis_client, settings, tmp_path, messages)
    run_dataflow(settings)
    token = credentials["admin_token"]

    def transitions(customer: str) -> list[tuple[str, str, int]]:
        items = get(api, token, f"/api/customers/{customer}/transitions")["items"]
        assert all(item["rule_version"] == 1 for item in items)
        return [(item["segment"], item["kind"], item["at"] - t0) for item in items]

    assert transitions("ada") == [
        ("cart-abandoners", "enter", 30 * MINUTE),
        ("cart-abandoners", "exit", 40 * MINUTE),
        ("cart-abandoners", "enter", 70 * MINUTE),
    ]
    assert transitions("bob") == []
    assert transitions("cy") == [
        ("browsing-enthusiasts", "enter", 5 * MINUTE),
        ("browsing-enthusiasts", "exit", 11 * MINUTE),
    ]
    assert get(api, token, "/api/customers/ada")["segments"] == ["cart-abandoners"]
    sizes = {s["id"]: s["size"] for s in get(api, token, "/api/segments")["items"]}
    assert sizes == {
        "browsing-enthusiasts": 0,
        "cart-abandoners": 1,
        "high-intent-buyers": 0,
        "lapsed-customers": 0,
        "loyal-customers": 0,
    }
    members = get(api, token, "/api/segments/cart-abandoners/members")
    assert members["items"] == ["ada"]

    pages, cursor = [], ""  # the list is paged by id, as the other lists are
    while cursor is not None:
        page = get(api, token, f"/api/segments?limit=2{cursor and f'&cursor={cursor}'}")
        pages.append([(s["id"], s["size"]) for s in page["items"]])
        cursor = page["next_cursor"]
    assert [len(page) for page in pages] == [2, 2, 1]
    assert dict(pair for page in pages for pair in page) == sizes
    assert [pair[0] for page in pages for pair in page] == sorted(sizes)

    def triggers() -> list[dict[bytes, bytes]]:
        return [fields for _, fields in cast(StreamEntries, redis_client.xrange(TRIGGERS_KEY))]

    sent = triggers()
    assert [(t[b"customer_id"], t[b"kind"], int(t[b"at"]) - t0) for t in sent] == [
        (b"ada", b"enter", 30 * MINUTE),
        (b"ada", b"enter", 70 * MINUTE),
    ]
    assert {(t[b"destination"], t[b"template"]) for t in sent} == {(b"email", b"cart-reminder")}

    # The same output again (as recovery replays it): nothing doubles.
    run_dataflow(settings)
    assert len(transitions("ada")) == 3
    assert triggers() == sent


def test_an_unknown_segment_is_404(api: ServerThread, credentials: dict[str, str]):
    answer = httpx.get(
        f"{api.url}/api/segments/no-such/members",
        headers={"Authorization": f"Bearer {credentials['admin_token']}"},
    )
    assert answer.status_code == 404
    assert "no-such" in answer.json()["detail"]


def test_a_late_order_retracts_the_cart_reminder_and_the_correction_is_listed(
    settings: Settings,
    redis_client: redis.Redis,
    api: ServerThread,
    credentials: dict[str, str],
):
    """The live path: an add, the 30-min deadline fired by the wall clock, then an order placed
    at 29 min arrives (a phone back online): the enter is retracted, its trigger marked, and
    the correction listed."""
    t0 = (time.time_ns() // 1_000_000) - 3 * 60 * MINUTE
    token = credentials["admin_token"]

    def send(messages: list[dict[str, Any]]) -> None:
        with httpx.Client(base_url=api.url, auth=(credentials["write_key"], "")) as collector:
            answer = collector.post("/v1/batch", json={"batch": messages})
            assert answer.status_code == 200, answer.text

    def transitions() -> list[tuple[str, str, int]]:
        items = get(api, token, "/api/customers/ada/transitions")["items"]
        return [(item["segment"], item["kind"], item["at"] - t0) for item in items]

    # one dataflow run: the add, then more than a read of other customers' views in ada's
    # partition (the live clock passes 30 min at the end of that read: the reminder fires),
    # then the order
    partition = partition_of("ada", settings.partitions)
    others = [
        f"v{n}"
        for n in range(3 * BATCH * settings.partitions)
        if partition_of(f"v{n}", settings.partitions) == partition
    ]
    send([track("ada", "Product Added", t0, product_id="p1", price=20.0)])
    views = [track(c, "Product Viewed", t0 + n, product_id="p1") for n, c in enumerate(others)]
    for start in range(0, 2 * BATCH, 100):
        send(views[start : start + 100])
    send([track("ada", "Order Completed", t0 + 29 * MINUTE, order_id="o1", revenue=20.0)])
    run_dataflow(settings)
    assert transitions() == []
    (correction,) = get(api, token, "/api/customers/ada/corrections")["items"]
    assert correction["at"] - t0 == 29 * MINUTE
    assert correction["added"] == []
    assert [(t["segment"], t["kind"], t["at"] - t0) for t in correction["retracted"]] == [
        ("cart-abandoners", "enter", 30 * MINUTE)
    ]
    assert get(api, token, "/api/segments/cart-abandoners/members")["items"] == []
    # the segment's moves lose the retracted enter too
    assert get(api, token, "/api/segments/cart-abandoners/transitions")["items"] == []
    (carts,) = [
        s for s in get(api, token, "/api/segments")["items"] if s["id"] == "cart-abandoners"
    ]
    assert (carts["entered_1h"], carts["entered_24h"]) == (0, 0)
    reminder = trigger_id("ada", "cart-abandoners", "enter", t0 + 30 * MINUTE, 0)
    assert redis_client.exists(retracted_key(reminder))


def test_a_cursor_out_of_range_is_refused_not_blamed_on_redis(
    api: ServerThread, credentials: dict[str, str]
):
    """A cursor past Redis's 64-bit integers reached Redis, which refused it, and the API
    answered 503 "Redis unreachable". It is the request that is wrong: 422, naming the cursor."""
    huge = "9" * 25
    for path in (
        f"/api/customers/ada/transitions?cursor={huge}",
        f"/api/customers/ada/corrections?cursor={huge}",
        f"/api/segments/cart-abandoners/members?cursor={huge}",
        f"/api/deliveries?cursor={huge}",
        f"/api/dead-letters?cursor={huge}",
    ):
        answer = httpx.get(
            f"{api.url}{path}", headers={"Authorization": f"Bearer {credentials['admin_token']}"}
        )
        assert answer.status_code == 422, (path, answer.text)
        assert answer.json()["detail"][0]["loc"] == ["query", "cursor"], path
