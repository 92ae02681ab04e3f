"""Clusters kept on the stream (``SEGFLOW_CLUSTERING=stream``) on real Redis and SQL: the sink
sends the snapshots' column inputs, and `segflow cluster stream` follows a drifting population
with the batch refit's ids and a marketer's names; in batch mode neither happens."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
import orjson
import pytest
import redis
from sqlmodel import Session, col, select

from app.clustering import service, store
from app.clustering.columns import inputs
from app.clustering.model import ClusterModel
from app.clustering.stream import STREAM_ALGORITHM
from app.db import make_engine
from app.models import ClusterRefit
from app.profiles.keys import profile_key
from app.settings import Settings
from tests.cluster_personas import PERSONAS, features_of, population
from tests.factories import StreamEntries, track_at
from tests.helpers import (
    pipeline_env,
    read_profile,
    replay_messages,
    run_dataflow,
    segflow_process,
    wait_for,
)

MINUTE = 60_000


def _snapshot_rows(client: redis.Redis) -> list[tuple[Any, ...]]:
    entries = cast(StreamEntries, client.xrange(store.SNAPSHOTS_KEY))
    return [tuple(row) for _, fields in entries for row in orjson.loads(fields[b"rows"])]


def _shop(now: int) -> list[dict[str, Any]]:
    return [
        track_at("ada", "Product Viewed", now - 9 * MINUTE, product_id="p1", category="shoes"),
        track_at("ada", "Product Added", now - 8 * MINUTE, product_id="p1", price=40.0),
        track_at("bob", "Order Completed", now - 5 * MINUTE, revenue=99.5, order_id="o1"),
        track_at("cy", "Product Viewed", now - MINUTE, product_id="p2", category="bags"),
    ]


@pytest.mark.parametrize("mode", ["stream", "batch"])
def test_the_sink_sends_the_snapshots_only_in_stream_mode(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path, mode: str
):
    replay_messages(redis_client, settings, tmp_path, _shop(time.time_ns() // 1_000_000))
    run_dataflow(settings.model_copy(update={"clustering": mode}))
    profiles = {c: read_profile(redis_client, c)["features"] for c in ("ada", "bob", "cy")}
    if mode == "batch":
        assert not redis_client.exists(store.SNAPSHOTS_KEY)
        return
    rows = _snapshot_rows(redis_client)
    # each profile as written last is among the rows, as its columns' inputs and nothing else
    for features in profiles.values():
        assert tuple(inputs(features)) in rows
    assert all(len(row) == 9 for row in rows)
    assert any("shoes" in row for row in rows)
    assert not any(isinstance(v, str) and v in profiles for row in rows for v in row)  # no ids


def _send(client: redis.Redis, rng: random.Random, grown: float, count: int = 400) -> None:
    """Snapshots of the four personas, as the sink appends them."""
    personas = list(PERSONAS)
    rows = [list(inputs(features_of(personas[i % 4], rng, grown=grown))) for i in range(count)]
    pipe = client.pipeline(transaction=False)
    for start in range(0, count, store.SNAPSHOT_ROWS_PER_ENTRY):
        chunk = rows[start : start + store.SNAPSHOT_ROWS_PER_ENTRY]
        pipe.xadd(
            store.SNAPSHOTS_KEY,
            {"rows": orjson.dumps(chunk)},
            maxlen=store.SNAPSHOT_ENTRIES_KEPT,
            approximate=True,
        )
    pipe.execute()


def _homes(model: ClusterModel, grown: float) -> dict[str, tuple[str, np.ndarray]]:
    """Per persona: the cluster most of its customers (grown as said) are in, and their mean
    (scaled)."""
    rng = random.Random(31)
    found = {}
    for persona in PERSONAS:
        rows = np.asarray(
            [model.prep.row(features_of(persona, rng, grown=grown)) for _ in range(1_000)]
        )
        labels, _ = model.assign_rows(rows)
        home = int(np.bincount(labels[labels >= 0]).argmax())
        found[persona] = (model.clusters[home].id, rows.mean(axis=0))
    return found


@pytest.fixture
def stream_clusterer(settings: Settings):
    env = pipeline_env(
        settings.redis_url or "",
        settings.data_dir,
        settings.partitions,
        settings.database_url,
        SEGFLOW_CLUSTERING="stream",
        SEGFLOW_CLUSTER_STREAM_INTERVAL_S="1",
        SEGFLOW_CLUSTER_STREAM_MEMORY="1000",
    )
    with segflow_process(env, "cluster", "stream") as process:
        yield process


@pytest.mark.backend_independent
def test_a_drifting_stream_moves_the_published_centres_and_ids_stay(
    settings: Settings, redis_client: redis.Redis, stream_clusterer: subprocess.Popen[bytes]
):
    engine = make_engine(settings)
    customers = population(2_000, seed=30)
    batch = service.fit_and_publish(
        redis_client, engine, [c.features for c in customers], reason="test", families=("kmeans",)
    ).model
    before = _homes(batch, grown=1.0)
    drifted = {p: mean for p, (_, mean) in _homes(batch, grown=4.0).items()}
    assert len({cluster_id for cluster_id, _ in before.values()}) == len(PERSONAS)
    spenders = before["big_spenders"][0]
    service.rename(redis_client, engine, spenders, "Our best customers", "tests")

    rng = random.Random(32)

    def followed() -> bool:
        """Whether a stream model is out whose centres moved most of the way to the drifted
        personas (snapshots are sent meanwhile, as the dataflow would)."""
        _send(redis_client, rng, grown=4.0)
        model = store.published(redis_client)
        if model is None or model.algorithm != STREAM_ALGORITHM:
            return False
        centers = {c.id: np.asarray(c.center) for c in model.clusters}
        for persona in ("big_spenders", "browsers", "cart_holders"):  # "lapsed" do not grow
            cluster_id, old_mean = before[persona]
            if cluster_id not in centers:
                return False
            start = np.linalg.norm(old_mean - drifted[persona])
            if np.linalg.norm(centers[cluster_id] - drifted[persona]) > 0.5 * start:
                return False
        return True

    wait_for(followed, timeout_s=180, what="a stream model following the drift")
    model = store.published(redis_client)
    assert model is not None
    assert stream_clusterer.poll() is None
    assert sorted(model.ids) == sorted(batch.ids)  # no id retired, none new
    assert model.prep == batch.prep  # the batch refit's preparation
    # every persona is still in the cluster it was in, by id: the drifted ones too
    after = _homes(model, grown=4.0)
    assert {p: cluster_id for p, (cluster_id, _) in after.items()} == {
        p: cluster_id for p, (cluster_id, _) in before.items()
    }
    names = model.names()
    assert names[spenders] == "Our best customers"
    assert next(c for c in model.clusters if c.id == spenders).named_by == "marketer"
    assert model.params["seeded_by"] >= batch.version
    assert model.quality["silhouette"] > 0.5
    with Session(engine) as session:
        recorded = list(
            session.exec(select(ClusterRefit).where(col(ClusterRefit.reason) == "stream"))
        )
    assert recorded
    assert max(r.model_version for r in recorded) == model.version
    assert all(r.algorithm == STREAM_ALGORITHM and r.candidates == [] for r in recorded)
    assert all(sorted(r.sizes) == sorted(batch.ids) for r in recorded)

    # a batch refit wins: the stream clusterer seeds itself from it and goes on from there
    refit = service.fit_and_publish(
        redis_client, engine, [c.features for c in customers], reason="test", families=("kmeans",)
    )

    def reseeded() -> bool:
        _send(redis_client, rng, grown=4.0)
        found = store.published(redis_client)
        return (
            found is not None
            and found.algorithm == STREAM_ALGORITHM
            and found.params["seeded_by"] == refit.model.version
        )

    wait_for(reseeded, timeout_s=120, what="a stream model seeded by the new batch refit")
    engine.dispose()


@pytest.mark.backend_independent
def test_in_batch_mode_there_is_no_stream_clusterer(settings: Settings):
    env = pipeline_env(
        settings.redis_url or "",
        settings.data_dir,
        settings.partitions,
        settings.database_url,
        SEGFLOW_CLUSTERING="batch",
    )
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "cluster", "stream"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "runs only with SEGFLOW_CLUSTERING=stream" in done.stderr


def test_segflow_up_in_stream_mode_keeps_the_clusters_on_the_stream(tmp_path: Path):
    """`segflow up` with SEGFLOW_CLUSTERING=stream: the stream clusterer is one of its
    processes, the dataflow sends it the snapshots, it follows the first batch refit with a
    model of its own, and the dataflow assigns by that model."""
    from tests.helpers import embedded_redis, start_segflow, wait_for_line
    from tests.integration.test_clusters_live import PERSONAS as SHOPPERS
    from tests.integration.test_clusters_live import _persona_events

    data_dir = tmp_path / "data"
    env = {
        "SEGFLOW_CLUSTERING": "stream",
        "SEGFLOW_CLUSTER_STREAM_INTERVAL_S": "1",
        "SEGFLOW_CLUSTER_STREAM_MEMORY": "500",
    }
    process, port, _ = start_segflow(data_dir, api_workers=1, env=env)
    seen: list[str] = []
    try:
        key = wait_for_line(process, r"^\s+demo write key", seen).split()[-1]
        wait_for_line(process, r"Ctrl-C", seen)
        started = json.loads((data_dir / "processes.json").read_text())
        assert "cluster-stream" in started
        client = embedded_redis(data_dir)
        rng = random.Random(33)
        people = {f"{persona}-{i}": persona for i in range(80) for persona in SHOPPERS}

        def send_round(start: int) -> None:
            messages = []
            for user, persona in people.items():
                messages += _persona_events(user, persona, start, rng)
            for first in range(0, len(messages), 200):
                reply = httpx.post(
                    f"http://127.0.0.1:{port}/v1/batch",
                    json={"batch": messages[first : first + 200]},
                    auth=(key, ""),
                    timeout=30,
                )
                assert reply.status_code == 200, reply.text

        now = time.time_ns() // 1_000_000
        send_round(now - 90 * MINUTE)
        wait_for(
            lambda: all(client.exists(profile_key(user)) for user in people),
            timeout_s=120,
            what="every shopper's profile",
        )
        assert client.xlen(store.SNAPSHOTS_KEY) > 0  # the sink feeds the stream clusterer
        assert store.published(client) is None  # and it waits for a batch refit

        engine = make_engine(Settings(SEGFLOW_DATA_DIR=data_dir, DATABASE_URL=None))
        batch = service.refit(client, engine, reason="test", families=("kmeans",)).model
        rounds = [now - minutes * MINUTE for minutes in (75, 60, 45, 30, 15)]

        def streamed() -> ClusterModel | None:
            """The stream model, once out; meanwhile the shoppers come back every few
            seconds, so the dataflow sends snapshots (a round sent before the stream clusterer
            saw the refit only fills its recent rows)."""
            model = store.published(client)
            if model is not None and model.algorithm == STREAM_ALGORITHM:
                return model
            if rounds and time.monotonic() - sent_at[0] > 5:
                send_round(rounds.pop(0))
                sent_at[0] = time.monotonic()
            return None

        sent_at = [-float("inf")]
        wait_for(lambda: streamed() is not None, timeout_s=120, what="a stream model")
        model = streamed()
        assert model is not None
        assert model.params["seeded_by"] == batch.version
        assert sorted(model.ids) == sorted(batch.ids)

        # the dataflow assigns by it: a new shopper lands in one of its clusters, and the
        # cluster's members say so
        newcomer = "newcomer"
        events = _persona_events(newcomer, "buyer", now - 3 * MINUTE, rng)
        httpx.post(
            f"http://127.0.0.1:{port}/v1/batch", json={"batch": events}, auth=(key, "")
        ).raise_for_status()

        def cluster_of_newcomer() -> str | None:
            raw = client.hget(profile_key(newcomer), "segments")
            found = [s for s in orjson.loads(raw) if s.startswith("cluster:")] if raw else []
            return found[0].removeprefix("cluster:") if found else None

        wait_for(lambda: cluster_of_newcomer() is not None, timeout_s=60, what="newcomer's cluster")
        assert cluster_of_newcomer() in model.ids
        with Session(engine) as session:
            reasons = set(session.exec(select(ClusterRefit.reason)))
        assert reasons == {"test", "stream"}
        engine.dispose()
        client.close()
    finally:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=60)
    assert process.returncode == 0, out
    assert "stopped cluster-stream" in out
