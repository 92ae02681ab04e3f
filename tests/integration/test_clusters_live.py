"""Clusters assigned live: a running dataflow, events through the collector, a refit on the
profiles it computed, the model swapped in without a restart, a customer moving between
clusters and a rule on a cluster entering and exiting."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from typing import Any, cast

import httpx
import orjson
import pytest
import redis

from app.clustering import service, store
from app.clustering.model import CLUSTER_PREFIX
from app.db import make_engine
from app.profiles.keys import members_key, profile_key, transitions_key
from tests.factories import iso, recency_model
from tests.helpers import wait_for

MINUTE = 60_000
PERSONAS = ("viewer", "carter", "buyer")


def _event(user: str, event: str, at: int, **properties: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": user,
        "event": event,
        "timestamp": iso(at),
        "messageId": f"{user}-{event}-{at}-{random.random()}",
        "properties": properties,
    }


def _persona_events(
    user: str, persona: str, start: int, rng: random.Random
) -> list[dict[str, Any]]:
    """A customer's last few minutes of shopping, by persona."""
    at = start
    out = []

    def add(event: str, **properties: Any) -> None:
        nonlocal at
        at += rng.randint(5_000, 40_000)
        out.append(_event(user, event, at, **properties))

    if persona == "viewer":
        for i in range(rng.randint(9, 15)):
            add("Product Viewed", product_id=f"f{i}", category="fashion", price=30)
    elif persona == "carter":
        for i in range(rng.randint(2, 3)):
            add("Product Viewed", product_id=f"h{i}", category="home", price=60)
        for i in range(rng.randint(3, 5)):
            add("Product Added", product_id=f"h{i}", price=rng.randint(40, 90), quantity=1)
    else:
        for order in range(rng.randint(1, 3)):
            add("Product Viewed", product_id=f"e{order}", category="electronics", price=400)
            add("Product Added", product_id=f"e{order}", price=400, quantity=1)
            add("Order Completed", revenue=rng.randint(300, 900), order_id=f"{user}-{order}")
    return out


def _send(api: Any, key: str, messages: list[dict[str, Any]]) -> None:
    for start in range(0, len(messages), 200):
        body = json.dumps({"batch": messages[start : start + 200]}).encode()
        reply = httpx.post(f"{api.url}/v1/batch", content=body, auth=(key, ""), timeout=30)
        assert reply.status_code == 200, reply.text
        assert reply.json()["accepted"] == len(messages[start : start + 200]), reply.text


def _profile(client: redis.Redis, user: str) -> dict[str, Any]:
    fields = cast(dict[bytes, bytes], client.hgetall(profile_key(user)))
    if not fields:
        return {}
    return {
        "segments": orjson.loads(fields[b"segments"]),
        "features": orjson.loads(fields[b"features"]),
        "outlier": fields.get(b"outlier", b"").decode(),
    }


def _cluster(profile: dict[str, Any]) -> str | None:
    found = [
        s[len(CLUSTER_PREFIX) :]
        for s in profile.get("segments", ())
        if s.startswith(CLUSTER_PREFIX)
    ]
    assert len(found) <= 1, profile
    return found[0] if found else None


@pytest.mark.backend_independent
def test_clusters_are_assigned_live_swapped_without_restart_and_usable_in_rules(
    settings, redis_client, api, credentials, pipeline
):
    key, rng = credentials["write_key"], random.Random(11)
    now = time.time_ns() // 1_000_000
    people = {f"{persona}-{i}": persona for i in range(80) for persona in PERSONAS}
    messages = []
    for user, persona in people.items():
        messages += _persona_events(user, persona, now - 20 * MINUTE, rng)
    _send(api, key, messages)
    wait_for(
        lambda: all(redis_client.exists(profile_key(user)) for user in people),
        timeout_s=180,
        what="every customer's profile",
    )
    wait_for(
        lambda: (
            sum(_profile(redis_client, u)["features"]["events_total"] for u in people)
            == len(messages)
        ),
        timeout_s=180,
        what="every event applied",
    )
    assert all(_cluster(_profile(redis_client, user)) is None for user in people)  # no model yet

    engine = make_engine(settings)
    # k-means for 2 or 3 clusters: every customer in a cluster, a cluster per persona at most
    # (a density model's noise and a persona's own sub-groups are the unit tests' part: the
    # buyers of one order and of several can make two clusters)
    refit = service.refit(redis_client, engine, reason="test", families=("kmeans",), max_k=3)
    model = refit.model
    assert len(model.clusters) == 3

    # swapped into the running dataflow: every customer is assigned with no event of theirs,
    # to a cluster or (density noise) flagged an outlier
    def assigned(user: str) -> bool:
        profile = _profile(redis_client, user)
        return profile["outlier"] == "1" or (profile["outlier"] == "0" and bool(_cluster(profile)))

    wait_for(
        lambda: all(assigned(user) for user in people),
        timeout_s=120,
        what="every customer assigned by the new model",
    )
    by_persona: dict[str, Counter[str]] = {persona: Counter() for persona in PERSONAS}
    for user, persona in people.items():
        by_persona[persona][_cluster(_profile(redis_client, user)) or ""] += 1
    home = {persona: counts.most_common(1)[0][0] for persona, counts in by_persona.items()}
    assert len(set(home.values())) == 3, by_persona  # each persona has a cluster of its own
    assert "" not in home.values(), by_persona
    for persona, counts in by_persona.items():  # (the rest of a persona: density noise)
        assert counts[home[persona]] >= 0.9 * (80 - counts[""]), by_persona
        assert counts[""] <= 0.35 * 80, by_persona
    carters = {user for user, persona in people.items() if persona == "carter"}
    cluster_members = members_key(f"cluster:{home['carter']}")
    members = {m.decode() for m in redis_client.smembers(cluster_members)}
    assert len(members & carters) == by_persona["carter"][home["carter"]]

    # a marketer's name, and a rule on it (the rename is a new model version: swapped in too)
    service.rename(redis_client, engine, home["carter"], "Cart builders", "tests")
    rule = "id: cart-builders\nname: Cart builders\nwhen:\n  cluster: Cart builders\n"
    headers = {
        "Authorization": f"Bearer {credentials['admin_token']}",
        "Content-Type": "application/yaml",
    }
    saved = httpx.post(f"{api.url}/api/rules", content=rule, headers=headers)
    assert saved.status_code in (200, 201), saved.text
    wait_for(
        lambda: (
            redis_client.smembers(members_key("cart-builders"))
            == redis_client.smembers(cluster_members)
        ),
        timeout_s=120,
        what="the rule on a cluster holding for its members",
    )

    # a live customer: filling a cart first, then ordering
    live = "live-shopper"
    start = time.time_ns() // 1_000_000 - 5 * MINUTE
    carting = [
        _event(live, "Product Viewed", start, product_id="h1", category="home", price=70),
        _event(live, "Product Viewed", start + 1_000, product_id="h2", category="home", price=70),
        *(
            _event(live, "Product Added", start + 10_000 * i, product_id=f"h{i}", price=70)
            for i in range(1, 5)
        ),
    ]
    _send(api, key, carting)
    wait_for(
        lambda: _cluster(_profile(redis_client, live)) == home["carter"],
        timeout_s=120,
        what="the live customer among the cart builders",
    )
    wait_for(
        lambda: "cart-builders" in _profile(redis_client, live)["segments"],
        timeout_s=120,
        what="the live customer in the cluster's rule segment",
    )
    order_at = start + 2 * MINUTE
    buying = [
        _event(live, "Product Viewed", order_at - 2_000, product_id="e1", category="electronics"),
        _event(live, "Product Viewed", order_at - 1_000, product_id="e2", category="electronics"),
        _event(live, "Order Completed", order_at, revenue=500, order_id="o1"),
    ]
    _send(api, key, buying)
    wait_for(
        lambda: _cluster(_profile(redis_client, live)) == home["buyer"],
        timeout_s=120,
        what="the live customer moved among the buyers",
    )
    wait_for(
        lambda: "cart-builders" not in _profile(redis_client, live)["segments"],
        timeout_s=120,
        what="the live customer out of the rule segment",
    )
    transitions = [orjson.loads(m) for m in redis_client.zrange(transitions_key(live), 0, -1)]
    moved = {(t["segment"], t["kind"]) for t in transitions if t["at"] == order_at}
    assert moved >= {
        (f"cluster:{home['carter']}", "exit"),
        (f"cluster:{home['buyer']}", "enter"),
        ("cart-builders", "exit"),
    }  # at the instant of the order: the snapshot that moved them
    assert redis_client.zscore("clusters:moves", live) == order_at
    profile = _profile(redis_client, live)
    assert profile["outlier"] in ("0", "1")
    assert profile["features"]["events_total"] == 9  # nothing lost across the swaps
    engine.dispose()


@pytest.mark.backend_independent
def test_a_buyer_gone_quiet_moves_cluster_by_recency_at_the_millisecond_it_comes(
    settings, redis_client, api, credentials, pipeline
):
    """No event and no window's exit moves them: recency grows with the clock, and the live
    dataflow evaluates the customer at the instant the model's solved crossing says."""
    # about 15 s after their order, the customer is nearer the second centre (30 s) than the
    # first (at the order): with the other columns fixed, recency alone moves them
    model = recency_model(store.next_version(redis_client), 0.0, 30 / 86_400)
    store.publish(redis_client, model)
    key = credentials["write_key"]
    now = time.time_ns() // 1_000_000
    _send(api, key, [_event("first-viewer", "Product Viewed", now, product_id="p1")])
    wait_for(  # the running dataflow assigns by the model now
        lambda: _cluster(_profile(redis_client, "first-viewer")) is not None,
        timeout_s=120,
        what="a first customer assigned by the model",
    )
    buyer = "quiet-buyer"
    ordered_at = time.time_ns() // 1_000_000
    _send(api, key, [_event(buyer, "Order Completed", ordered_at, revenue=80, order_id="q1")])
    headers = {"Authorization": f"Bearer {credentials['admin_token']}"}

    def moves() -> list[tuple[str, str, int]]:
        reply = httpx.get(f"{api.url}/api/customers/{buyer}/transitions", headers=headers)
        if reply.status_code == 404:
            return []
        assert reply.status_code == 200, reply.text
        return [
            (t["segment"], t["kind"], t["at"])
            for t in reply.json()["items"]
            if t["segment"].startswith(CLUSTER_PREFIX)
        ]

    wait_for(lambda: len(moves()) >= 3, timeout_s=180, what="the buyer entering and leaving")
    features = _profile(redis_client, buyer)["features"]

    def assigned(at: int) -> str | None:  # the model on their features, recency as of ``at``
        return model.assign({**features, "rfm_recency_ms": at - ordered_at})[0]

    low, high = ordered_at, ordered_at + MINUTE  # the first millisecond it assigns otherwise
    assert (assigned(low), assigned(high)) == ("c0", "c1")
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if assigned(middle) == "c0" else (low, middle)
    assert 14_000 < high - ordered_at < 16_000
    assert moves() == [
        ("cluster:c0", "enter", ordered_at),
        ("cluster:c0", "exit", high),
        ("cluster:c1", "enter", high),
    ]
