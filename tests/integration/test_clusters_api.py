"""The clusters' admin API on real Redis and SQL: refits on generated customers of known
personas (written as profiles by the dataflow's own sink), ids that last through drift, names
that last through refits, refusals (too few profiles, a refit already running, a bad name),
the refits' history, and refits on a schedule in one API process of several."""

from __future__ import annotations

import asyncio
import logging
import random
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any, cast

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from sklearn.metrics import adjusted_rand_score
from sqlmodel import Session, select

from app.clustering import schedule, service, store
from app.clustering.fitting import FAMILIES, MIN_PROFILES
from app.clustering.model import ClusterModel
from app.db import make_engine
from app.main import create_app
from app.models import ClusterName
from app.profiles.keys import members_key, profile_key
from app.settings import Settings
from tests.cluster_personas import Customer, drift, population
from tests.conftest import Services
from tests.helpers import ServerThread, wait_for, write_profiles
from tests.integration.test_clusters_live import PERSONAS as LIVE_PERSONAS
from tests.integration.test_clusters_live import _event
from tests.integration.test_clusters_live import _persona_events as persona_events
from tests.integration.test_clusters_live import _send as send
from tests.integration.test_erasure import mentions

MINUTE = 60_000


def live_event(user: str, event: str, at: int, **properties: Any) -> dict[str, Any]:
    """A track call whose messageId says nothing about its sender (a uuid, as SDKs do)."""
    return {**_event(user, event, at, **properties), "messageId": str(uuid.uuid4())}


@pytest.fixture
def api(services: Services, settings: Settings, credentials: dict[str, str]) -> Iterator[Any]:
    """The API with no scheduled refits (each test says when it refits)."""
    quiet = services.settings(SEGFLOW_CLUSTER_REFIT_INTERVAL_S=0)
    with ServerThread(create_app(quiet)) as server:
        yield server


@pytest.fixture
def admin(api: Any, credentials: dict[str, str]) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {credentials['admin_token']}"}
    with httpx.Client(base_url=api.url, headers=headers, timeout=300) as client:
        yield client


def ok(answer: httpx.Response) -> dict[str, Any]:
    assert answer.status_code == 200, answer.text
    return cast(dict[str, Any], answer.json())


def published(client: redis.Redis) -> ClusterModel:
    model = store.published(client)
    assert model is not None
    return model


def clusters_of(model: ClusterModel, customers: list[Customer]) -> dict[str, str | None]:
    return {c.id: model.assign(c.features)[0] for c in customers}


def test_before_the_first_fit_there_is_no_model_and_too_few_profiles_are_refused(
    admin: httpx.Client, settings: Settings
):
    missing = admin.get("/api/clusters")
    assert missing.status_code == 404
    assert "refit" in missing.json()["detail"]
    write_profiles(str(settings.redis_url), population(MIN_PROFILES - 1))
    refused = admin.post("/api/clusters/refit")
    assert refused.status_code == 422
    assert refused.json()["detail"] == (
        f"{MIN_PROFILES - 1} profiles: a cluster fit needs at least {MIN_PROFILES}"
    )
    assert admin.get("/api/clusters").status_code == 404
    assert ok(admin.get("/api/clusters/refits")) == {"items": [], "next_cursor": None}
    bad: list[dict[str, Any]] = [
        {"sample_size": MIN_PROFILES - 1},
        {"algorithms": ["kmeanz"]},
        {"algorithms": []},
    ]
    for body in bad:
        assert admin.post("/api/clusters/refit", json=body).status_code == 422, body


def test_a_refit_recovers_the_personas_and_answers_the_contract_shape(
    admin: httpx.Client, settings: Settings, redis_client: redis.Redis
):
    customers = population(1_200, seed=11)
    write_profiles(str(settings.redis_url), customers)
    before = time.time() * 1000
    fitted = ok(admin.post("/api/clusters/refit", json={}))
    assert fitted["algorithm"] in FAMILIES
    assert before <= fitted["fitted_at"] <= time.time() * 1000
    quality = fitted["quality"]
    assert 0.5 < quality["silhouette"] <= 1
    assert quality["davies_bouldin"] >= 0
    assert quality["sample_size"] == 1_200
    assert fitted["turnover"] == {"moved_24h": 0, "assigned": 0, "share_24h": 0.0}
    assert fitted == ok(admin.get("/api/clusters"))  # the same model, the same view
    model = published(redis_client)
    assert fitted["version"] == model.version
    found = clusters_of(model, customers)
    labels = [found[c.id] or "noise" for c in customers]
    assert adjusted_rand_score([c.persona for c in customers], labels) >= 0.8
    items = {item["id"]: item for item in fitted["items"]}
    assert len(items) == 4
    for item in items.values():
        assert set(item) == {
            "id", "name", "named_by", "size", "sample_size", "centroid", "outlier_share",
        }  # fmt: skip
        assert item["size"] == 0  # members are the dataflow's: no snapshot was assigned yet
        assert item["named_by"] == "auto"
        assert 0 <= item["outlier_share"] <= 0.05
    # the big spenders' centroid, in money and days as the profiles hold them
    spenders = {found[c.id] for c in customers if c.persona == "big_spenders"}
    (spender,) = spenders
    centroid = items[str(spender)]["centroid"]
    assert 400 <= centroid["monetary_90d"] <= 2_000
    assert 1 <= centroid["recency_days"] <= 12
    assert centroid["category=electronics"] > 0.9
    assert sum(item["sample_size"] for item in items.values()) <= 1_200
    (refit,) = ok(admin.get("/api/clusters/refits"))["items"]
    assert "model" not in refit
    assert refit["reason"] == "api"
    assert refit["algorithm"] == fitted["algorithm"]
    assert refit["silhouette"] == quality["silhouette"]
    assert sorted(refit["added"]) == sorted(items)
    assert refit["kept"] == refit["retired"] == []
    assert {c["algorithm"] for c in refit["candidates"]} == set(FAMILIES)
    assert refit["model_version"] == fitted["version"]


@pytest.mark.backend_independent
def test_after_five_percent_drift_unchanged_customers_keep_their_cluster_ids(
    admin: httpx.Client, settings: Settings, redis_client: redis.Redis
):
    customers = population(2_000, seed=12)
    write_profiles(str(settings.redis_url), customers)
    ok(admin.post("/api/clusters/refit"))
    before = published(redis_client)
    first = clusters_of(before, customers)
    drifted, moved = drift(customers, 0.05, seed=13)
    write_profiles(str(settings.redis_url), [c for c in drifted if c.id in moved])
    ok(admin.post("/api/clusters/refit"))
    after = published(redis_client)
    second = clusters_of(after, drifted)
    assert after.names() == before.names()  # a kept cluster keeps its name too
    unchanged = [c.id for c in customers if c.id not in moved]
    kept = sum(first[i] == second[i] for i in unchanged) / len(unchanged)
    assert kept >= 0.95, kept
    newest, _ = ok(admin.get("/api/clusters/refits"))["items"]
    assert len(newest["kept"]) == 4
    assert newest["retired"] == []


def test_a_marketers_name_survives_refits_and_bad_names_are_refused(
    admin: httpx.Client, settings: Settings, services: Services
):
    write_profiles(str(settings.redis_url), population(800, seed=14))
    first, second, *_ = ok(admin.post("/api/clusters/refit", json={"algorithms": ["kmeans"]}))[
        "items"
    ]
    renamed = ok(admin.patch(f"/api/clusters/{first['id']}", json={"name": "  VIP shoppers "}))
    assert (renamed["id"], renamed["name"], renamed["named_by"]) == (
        first["id"], "VIP shoppers", "marketer",
    )  # fmt: skip
    for name, why in (
        ("vip SHOPPERS", "is called 'VIP shoppers' already"),
        ("", "at least 1 character"),
        ("   ", "at least 1 character"),
        ("bell\u0007", "control characters"),
        ("right-to-left \u202e", "control characters"),
        ("x" * 101, "at most 100 characters"),
    ):
        refused = admin.patch(f"/api/clusters/{second['id']}", json={"name": name})
        assert refused.status_code == 422, name
        assert why in str(refused.json()["detail"]), refused.text
    assert admin.patch("/api/clusters/c999", json={"name": "Nobody"}).status_code == 404
    ok(admin.post("/api/clusters/refit", json={"algorithms": ["kmeans"]}))
    after = {item["id"]: item for item in ok(admin.get("/api/clusters"))["items"]}
    assert after[first["id"]]["name"] == "VIP shoppers"
    assert after[first["id"]]["named_by"] == "marketer"
    assert after[second["id"]]["name"] == second["name"]
    engine = make_engine(services.settings())
    with Session(engine) as session:
        (row,) = session.exec(select(ClusterName)).all()
    engine.dispose()
    assert (row.cluster_id, row.name, row.renamed_by) == (first["id"], "VIP shoppers", "tests")


def test_a_refit_while_another_runs_is_refused_with_409(
    admin: httpx.Client, settings: Settings, redis_client: redis.Redis
):
    write_profiles(str(settings.redis_url), population(3_000, seed=15))
    answers: list[httpx.Response] = []
    first = threading.Thread(target=lambda: answers.append(admin.post("/api/clusters/refit")))
    first.start()
    try:
        wait_for(lambda: redis_client.exists(store.REFIT_LOCK_KEY), what="the first refit runs")
        busy = admin.post("/api/clusters/refit", json={"algorithms": ["kmeans"]})
        assert busy.status_code == 409
        assert busy.json()["detail"] == "a cluster refit is already under way"
    finally:
        first.join(timeout=300)
    (done,) = answers
    assert done.status_code == 200, done.text
    assert not redis_client.exists(store.REFIT_LOCK_KEY)
    assert len(ok(admin.get("/api/clusters/refits"))["items"]) == 1


def test_the_refits_history_is_paged_newest_first(admin: httpx.Client, settings: Settings):
    write_profiles(str(settings.redis_url), population(600, seed=16))
    versions = [
        ok(admin.post("/api/clusters/refit", json={"algorithms": ["kmeans"]}))["version"]
        for _ in range(3)
    ]
    page = ok(admin.get("/api/clusters/refits", params={"limit": 2}))
    assert [r["model_version"] for r in page["items"]] == versions[:0:-1]
    assert page["next_cursor"] is not None
    rest = ok(admin.get("/api/clusters/refits", params={"limit": 2, "cursor": page["next_cursor"]}))
    assert [r["model_version"] for r in rest["items"]] == versions[:1]
    assert rest["next_cursor"] is None
    assert admin.get("/api/clusters/refits", params={"cursor": "x"}).status_code == 422


def test_an_unknown_cluster_has_no_members(admin: httpx.Client, settings: Settings):
    assert admin.get("/api/clusters/c1/members").status_code == 404  # no model yet
    write_profiles(str(settings.redis_url), population(400, seed=17))
    ok(admin.post("/api/clusters/refit", json={"algorithms": ["kmeans"]}))
    missing = admin.get("/api/clusters/c999/members")
    assert missing.status_code == 404
    assert "c999" in missing.json()["detail"]
    assert ok(admin.get("/api/clusters/c1/members")) == {"items": [], "next_cursor": None}


def test_of_several_api_processes_one_refits_per_interval(
    services: Services, settings: Settings, redis_client: redis.Redis
):
    """Two processes' schedules claim the same interval: one refit; a model fitted during an
    interval (by hand) makes its scheduled refit unneeded."""
    runs: list[int] = []

    def refit() -> None:
        time.sleep(0.2)  # long enough for the other claim to come while it runs
        runs.append(1)

    async def both(start: int) -> list[bool]:
        clients = [aioredis.Redis.from_url(services.redis_url) for _ in range(2)]
        try:
            calls = [
                schedule.refit_in_interval(client, refit, start=start, length=60_000)
                for client in clients
            ]
            return list(await asyncio.gather(*calls))
        finally:
            for client in clients:
                await client.aclose()

    now = int(time.time() * 1000)
    start = now - now % 60_000
    assert sorted(asyncio.run(both(start))) == [False, True]
    assert runs == [1]
    write_profiles(str(settings.redis_url), population(300, seed=18))
    engine = make_engine(settings)
    begun = int(time.time() * 1000)  # an interval begins, then a refit by hand
    service.refit(redis_client, engine, reason="cli", families=["kmeans"])
    engine.dispose()
    assert asyncio.run(both(begun)) == [False, False]
    assert runs == [1]
    # the stream clusterer's publication in an interval (stream mode) is no refit: the
    # scheduled one still runs
    streamed = published(redis_client)
    streamed.algorithm, streamed.fitted_at = "stream_kmeans", int(time.time() * 1000)
    streamed.version = store.next_version(redis_client)
    store.publish(redis_client, streamed)
    assert sorted(asyncio.run(both(streamed.fitted_at))) == [False, True]
    assert runs == [1, 1]


def test_refits_run_on_schedule_once_there_are_enough_profiles(
    services: Services,
    settings: Settings,
    redis_client: redis.Redis,
    credentials: dict[str, str],
    caplog: pytest.LogCaptureFixture,
):
    caplog.set_level(logging.INFO, logger="app.clustering.schedule")
    write_profiles(str(settings.redis_url), population(50, seed=19))
    every_second = services.settings(SEGFLOW_CLUSTER_REFIT_INTERVAL_S=1)
    headers = {"Authorization": f"Bearer {credentials['admin_token']}"}
    with ServerThread(create_app(every_second)) as api:
        skipped = "scheduled cluster refit skipped: 50 profiles: a cluster fit needs at least"
        wait_for(lambda: skipped in caplog.text, timeout_s=60, what="a skipped refit logged")
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        write_profiles(str(settings.redis_url), population(400, seed=20))

        def refits() -> list[dict[str, Any]]:
            answer = httpx.get(f"{api.url}/api/clusters/refits", headers=headers)
            return cast(list[dict[str, Any]], ok(answer)["items"])

        wait_for(lambda: refits(), timeout_s=120, what="a scheduled refit")
        assert {r["reason"] for r in refits()} == {"schedule"}
        assert ok(httpx.get(f"{api.url}/api/clusters", headers=headers))["items"]
    # stopped, the API finished the refit under way: none runs on behind it
    assert not redis_client.exists(store.REFIT_LOCK_KEY)


@pytest.mark.backend_independent
def test_live_members_profiles_turnover_and_erasure_of_a_clustered_customer(
    admin: httpx.Client,
    api: Any,
    settings: Settings,
    redis_client: redis.Redis,
    credentials: dict[str, str],
    pipeline: subprocess.Popen[bytes],
):
    """Shoppers of three kinds through the collector and a running dataflow; a refit through
    the API; the clusters' members, the profiles' cluster and outlier flag as the dataflow
    assigned them; a customer who moves cluster counts in the turnover; erased, nothing in
    Redis names them."""
    rng = random.Random(51)
    now = time.time_ns() // 1_000_000
    people = {f"{persona}-{i}": persona for i in range(70) for persona in LIVE_PERSONAS}
    messages = [
        m
        for user, kind in people.items()
        for m in persona_events(user, kind, now - 20 * MINUTE, rng)
    ]
    send(api, credentials["write_key"], messages)
    wait_for(
        lambda: all(redis_client.exists(profile_key(user)) for user in people),
        timeout_s=180,
        what="every customer's profile",
    )
    fitted = ok(admin.post("/api/clusters/refit", json={"algorithms": ["kmeans"]}))

    def profile(user: str) -> dict[str, Any]:
        return ok(admin.get(f"/api/customers/{user}"))

    def assigned() -> bool:
        fields = [redis_client.hget(profile_key(user), "outlier") for user in people]
        return all(value in (b"0", b"1") for value in fields)

    wait_for(assigned, timeout_s=120, what="every customer assigned by the model")
    shown = {user: profile(user) for user in people}
    for user, found in shown.items():
        assert not [s for s in found["segments"] if s.startswith("cluster:")], found
        raw = redis_client.hget(profile_key(user), "outlier")
        assert found["outlier"] is (raw == b"1")
    clustered = {user: found["cluster"] for user, found in shown.items() if found["cluster"]}
    assert len(clustered) == len(people)  # k-means: everyone in a cluster
    view = ok(admin.get("/api/clusters"))
    assert view["version"] == fitted["version"]
    for item in view["items"]:
        expected = {user for user, cluster in clustered.items() if cluster == item["id"]}
        assert item["size"] == len(expected)
        members: set[str] = set()
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 10} | ({"cursor": cursor} if cursor else {})
            page = ok(admin.get(f"/api/clusters/{item['id']}/members", params=params))
            members |= set(page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert members == expected
    assert view["turnover"]["assigned"] == len(people)

    # a new customer fills a cart, then orders: they move from the carters' cluster to the
    # buyers', a move the turnover counts
    def home(persona: str) -> str:
        found = Counter(c for u, c in clustered.items() if people[u] == persona)
        return str(found.most_common(1)[0][0])

    mover, start = "mover", now - 5 * MINUTE
    carting = [
        live_event(mover, "Product Viewed", start, product_id="h1", category="home", price=70),
        live_event(mover, "Product Viewed", start + 1, product_id="h2", category="home", price=70),
        *(
            live_event(mover, "Product Added", start + 10_000 * i, product_id=f"h{i}", price=70)
            for i in range(1, 5)
        ),
    ]
    send(api, credentials["write_key"], carting)
    wait_for(
        lambda: (
            admin.get(f"/api/customers/{mover}").status_code == 200
            and profile(mover)["cluster"] == home("carter")
        ),
        timeout_s=120,
        what="the new customer among the carters",
    )
    order_at = start + 2 * MINUTE
    buying = [
        live_event(mover, "Product Viewed", order_at - 2, product_id="e1", category="electronics"),
        live_event(mover, "Product Viewed", order_at - 1, product_id="e2", category="electronics"),
        live_event(mover, "Order Completed", order_at, revenue=500, order_id="o1"),
    ]
    send(api, credentials["write_key"], buying)
    wait_for(
        lambda: profile(mover)["cluster"] == home("buyer"),
        timeout_s=120,
        what="the customer moved among the buyers",
    )
    turnover = ok(admin.get("/api/clusters"))["turnover"]
    assert turnover["moved_24h"] == 1
    assert turnover["share_24h"] == round(1 / (len(people) + 1), 4)
    assert redis_client.zscore(store.MOVES_KEY, mover) == order_at

    erased = admin.delete(f"/api/customers/{mover}")
    assert erased.status_code == 200, erased.text
    assert erased.json()["cluster"] == home("buyer")
    # at once, before the dataflow reads the erasure: out of the turnover and the members
    assert redis_client.zscore(store.MOVES_KEY, mover) is None
    assert not redis_client.sismember(members_key(f"cluster:{home('buyer')}"), mover)
    wait_for(
        lambda: mentions(redis_client, mover) == [],
        timeout_s=120,
        what="nothing in Redis names the erased customer",
    )
    turnover = ok(admin.get("/api/clusters"))["turnover"]
    assert (turnover["moved_24h"], turnover["assigned"]) == (0, len(people))
