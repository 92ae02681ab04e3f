"""Clusters kept on the stream (``SEGFLOW_CLUSTERING=stream``): the centres follow the feature
snapshots as they come, between the periodic batch refits.

How it goes:

- The dataflow's sink appends each profile it writes as its column inputs (``columns.INPUTS``:
  no customer id) to a capped Redis stream (``store.SNAPSHOTS_KEY``, about the newest 100,000).
- The stream clusterer (``segflow cluster stream``, one process; ``segflow up`` starts it in
  stream mode) reads that stream in mini-batches. Until a batch refit has published a model it
  only keeps the newest rows. Then it **seeds** a scikit-learn ``MiniBatchKMeans`` with that
  model's cluster centres (any family's: a density model's or a mixture's clusters have centres
  too, the means of their members) and its preparation (scaling, categories), and updates it
  with ``partial_fit`` on every mini-batch of prepared rows. A row beyond its nearest
  cluster's outlier fence is learned from as if it lay on the fence (towards where it is):
  an outlier pulls a centre no harder than the cluster's farthest ordinary member, while a
  population drifting beyond the fences still pulls the centres after it.
- **Forgetting.** ``MiniBatchKMeans`` moves a centre by the mean of its new rows weighted
  against all the rows it has absorbed, so after a day of snapshots it would hardly move any
  more. Each centre's weight (``_counts``, scikit-learn's own, checked to be there) is capped
  at ``memory`` rows (``SEGFLOW_CLUSTER_STREAM_MEMORY``): a centre is then about the mean of
  its newest ``memory`` rows, and a drifting population pulls it along.
- Every ``interval_s`` (``SEGFLOW_CLUSTER_STREAM_INTERVAL_S``), with at least
  ``MIN_NEW_ROWS`` new rows learned, it **publishes** a model version (algorithm
  ``stream_kmeans``, assigned by nearest centre) built from the centres: ids kept by matching
  members with the current model on the recent rows (``identity.match``), a centre that
  matches none keeping the id of the centre it descends from; names recomputed from the
  centres unless a marketer named the cluster; each cluster's outlier fence recomputed from
  the recent rows (Tukey's far-out fence of their distances, as a batch fit does); silhouette,
  Davies-Bouldin and Calinski-Harabasz measured on the recent rows. The publication is
  recorded as a ``ClusterRefit`` with reason ``stream``.
- A batch refit stays the source of truth: the clusterer does not publish while one runs (the
  refit lock), publishes only over the version it built on (a refit or a rename published
  meanwhile wins), and seeds itself again from every model a batch refit publishes (so the
  number of clusters, the preparation and the choice of family stay the batch refit's). A
  rename of its own model is taken as it is.

Limits: the number of clusters is the last batch refit's (no centre is born or retired between
refits); the snapshots weigh customers by their activity (a customer who changes often sends
more rows), where a batch refit samples customers uniformly; every publication is a new model
version, which the dataflow swaps in by re-evaluating every customer it holds.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import orjson
import redis
from sklearn.cluster import MiniBatchKMeans
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score
from sqlalchemy.engine import Engine

from app.clustering import store
from app.clustering.columns import INPUTS, Preparation
from app.clustering.fitting import SILHOUETTE_MOST, fence
from app.clustering.model import Cluster, ClusterModel
from app.clustering.service import names_for, stable_ids
from app.db import session_scope
from app.models import ClusterRefit

log = logging.getLogger(__name__)

STREAM_ALGORITHM = "stream_kmeans"
RECENT_ROWS = 20_000  # the newest rows kept: ids, fences and quality are measured on them
MIN_NEW_ROWS = 200  # learned since the last publication, for the next one
MIN_FENCE_ROWS = 20  # a cluster with fewer recent rows keeps its fence
READ_ENTRIES = 50  # stream entries per read (each up to store.SNAPSHOT_ROWS_PER_ENTRY rows)
POLL_MODEL_S = 1.0  # how often the published version is looked at


# What XRANGE / XREAD answer on a client without decode_responses (redis-py types it loosely)
Entries = list[tuple[bytes, dict[bytes, bytes]]]


def _raw_rows(entries: Iterable[tuple[bytes, dict[bytes, bytes]]]) -> list[list[Any]]:
    """The snapshots' column inputs in stream entries (rows of another shape are left out:
    written by a version with other columns)."""
    rows: list[list[Any]] = []
    for _, fields in entries:
        raw = fields.get(b"rows")
        if raw is None:
            continue
        try:
            found = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        rows.extend(row for row in found if isinstance(row, list) and len(row) == len(INPUTS))
    return rows


@dataclass
class StreamModel:
    """A publication's content before ids and names: centres (scaled) and what the recent
    rows say of them."""

    centers: np.ndarray
    labels: np.ndarray  # of the recent rows, by nearest centre
    limits: list[float]  # each cluster's outlier fence (a distance)
    outliers: np.ndarray  # of the recent rows
    quality: dict[str, Any]


class StreamClusterer:
    """Mini-batch k-means seeded by a published model, with a bounded memory (the module
    docstring). No I/O: ``StreamRunner`` feeds it from Redis, ``bench/clustering.py`` from a
    simulation."""

    def __init__(self, seed: ClusterModel, *, memory: int, random_state: int = 0) -> None:
        self.seed = seed
        self.prep: Preparation = seed.prep
        self.memory = memory
        centers = np.asarray([c.center for c in seed.clusters], dtype=float)
        self.kmeans = MiniBatchKMeans(
            n_clusters=len(centers),
            init=centers,
            n_init=1,
            reassignment_ratio=0.0,  # a centre is never moved elsewhere at random: ids last
            compute_labels=False,
            random_state=random_state,
        )
        # the seed's centres as weighted points: the first step leaves them where they are,
        # each with the weight of ``memory`` rows
        self.kmeans.partial_fit(centers, sample_weight=np.full(len(centers), float(memory)))
        if not hasattr(self.kmeans, "_counts"):  # pragma: no cover - a scikit-learn change
            raise RuntimeError("MiniBatchKMeans keeps no _counts: the memory cannot be bounded")
        self.limits = self._seed_limits(seed)
        self.learned = 0

    @staticmethod
    def _seed_limits(seed: ClusterModel) -> list[float]:
        """The seed's fences as distances to the centres (a mixture's or density model's,
        which have none of that kind, as no limit until the rows give one)."""
        if seed.kind == "centroids":
            return [float(x) for x in seed.assign_data["limits"]]
        return [float("inf")] * len(seed.clusters)

    @property
    def centers(self) -> np.ndarray:
        found: np.ndarray = self.kmeans.cluster_centers_
        return found

    def prepared(self, raw: Sequence[Sequence[Any]]) -> np.ndarray:
        return np.asarray([self.prep.row_of(row) for row in raw], dtype=float).reshape(
            len(raw), self.prep.width
        )

    def learn(self, rows: np.ndarray) -> int:
        """One mini-batch of prepared rows; how many lay beyond their cluster's fence (each
        learned from as if it lay on the fence, towards where it is)."""
        if not len(rows):
            return 0
        centers = self.centers
        d2 = ((rows[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
        nearest = d2.argmin(axis=1)
        distances = np.sqrt(d2[np.arange(len(rows)), nearest])
        limits = np.asarray(self.limits)[nearest]
        beyond = distances > limits
        if beyond.any():
            rows = rows.copy()
            toward = centers[nearest[beyond]]
            shrink = (limits[beyond] / distances[beyond])[:, None]
            rows[beyond] = toward + (rows[beyond] - toward) * shrink
        self.kmeans.partial_fit(rows)
        counts = self.kmeans._counts
        np.minimum(counts, self.memory, out=counts)
        self.learned += len(rows)
        return int(beyond.sum())

    def model_of(self, recent: np.ndarray, *, seed: int = 0) -> StreamModel:
        """The centres now, judged on the ``recent`` prepared rows."""
        centers = self.centers.copy()
        d2 = ((recent[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
        labels = d2.argmin(axis=1)
        distances = np.sqrt(d2[np.arange(len(recent)), labels])
        limits = []
        for index, previous in enumerate(self.limits):
            members = distances[labels == index]
            limits.append(fence(members) if len(members) >= MIN_FENCE_ROWS else previous)
        self.limits = limits
        outliers = distances > np.asarray(limits)[labels]
        return StreamModel(centers, labels, limits, outliers, _quality(recent, labels, seed))


def _quality(rows: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, Any]:
    if len(set(labels.tolist())) < 2 or len(rows) < 3:
        return {"silhouette": None, "davies_bouldin": None, "calinski_harabasz": None}
    size = min(len(rows), SILHOUETTE_MOST)
    return {
        "silhouette": round(
            float(silhouette_score(rows, labels, sample_size=size, random_state=seed)), 4
        ),
        "davies_bouldin": round(float(davies_bouldin_score(rows, labels)), 4),
        "calinski_harabasz": round(float(calinski_harabasz_score(rows, labels)), 2),
    }


class StreamRunner:
    """The stream clusterer's process: reads the snapshots, learns, publishes (``step``)."""

    def __init__(
        self,
        client: redis.Redis,
        engine: Engine,
        *,
        interval_s: float,
        memory: int,
        block_ms: int = 1_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.engine = engine
        self.interval_s = interval_s
        self.memory = memory
        self.block_ms = block_ms
        self.clock = clock
        self.recent: deque[list[Any]] = deque(maxlen=RECENT_ROWS)
        self.clusterer: StreamClusterer | None = None
        self.current: ClusterModel | None = None  # the published model, as last seen
        self.seen_version: int | None = None
        self.new_rows = 0  # learned since the last publication
        self.published_at = clock()
        self.checked_at = -float("inf")
        self.last_id = self._tail()

    def _tail(self) -> bytes | str:
        """Where reading starts: after the stream's newest entry. The newest rows already in
        it are kept as recent ones (not learned: a refit may have seen them)."""
        found = cast(
            Entries,
            self.client.xrevrange(
                store.SNAPSHOTS_KEY, count=RECENT_ROWS // store.SNAPSHOT_ROWS_PER_ENTRY
            ),
        )
        entries = list(reversed(found))
        self.recent.extend(_raw_rows(entries))
        return entries[-1][0] if entries else "0-0"

    def step(self) -> ClusterModel | None:
        """Follow the published model, read and learn one mini-batch, and publish when due;
        the model published by this step, if any."""
        now = self.clock()
        if now - self.checked_at >= POLL_MODEL_S:
            self.checked_at = now
            self._follow(store.published(self.client))
        raw = self._read()
        if raw:
            self.recent.extend(raw)
            if self.clusterer is not None:
                self.clusterer.learn(self.clusterer.prepared(raw))
                self.new_rows += len(raw)
        if (
            self.clusterer is not None
            and self.new_rows >= MIN_NEW_ROWS
            and self.clock() - self.published_at >= self.interval_s
        ):
            return self.publish()
        return None

    def _read(self) -> list[list[Any]]:
        found = cast(
            list[tuple[bytes, Entries]],
            self.client.xread(
                {store.SNAPSHOTS_KEY: self.last_id}, count=READ_ENTRIES, block=self.block_ms
            ),
        )
        if not found:
            return []
        entries = found[0][1]
        self.last_id = entries[-1][0]
        return _raw_rows(entries)

    def _follow(self, model: ClusterModel | None) -> None:
        """Seed from a model another process published (a batch refit); a rename of the
        model this one published is taken as it is."""
        if model is None or model.version == self.seen_version:
            return
        self.seen_version = model.version
        current = self.current
        renamed = (
            self.clusterer is not None
            and current is not None
            and model.algorithm == STREAM_ALGORITHM
            and model.fitted_at == current.fitted_at  # a rename keeps it
            and model.ids == current.ids
        )
        if renamed:
            self.current = model  # the same centres, another name: learning goes on
            return
        self.current = model
        self.clusterer = StreamClusterer(model, memory=self.memory)
        self.new_rows = 0
        self.published_at = self.clock()
        log.info(
            "stream clusters: seeded by model %d (%s, %d clusters)",
            model.version, model.algorithm, len(model.clusters),
        )  # fmt: skip

    def publish(self) -> ClusterModel | None:
        """The centres as a new model version, published over the current one and recorded;
        None when a batch refit runs or another model was published meanwhile."""
        clusterer, current = self.clusterer, self.current
        assert clusterer is not None
        assert current is not None
        if self.client.exists(store.REFIT_LOCK_KEY):
            return None  # its model comes next, and seeds this
        started = time.perf_counter()
        recent = clusterer.prepared(list(self.recent))
        found = clusterer.model_of(recent)
        old_labels, _ = current.assign_rows(recent)
        count = len(found.centers)
        lineage = current.ids if len(current.ids) == count else []
        ids = stable_ids(
            self.client, self.engine, current, old_labels, found.labels, count, lineage=lineage
        )
        centers = [[float(v) for v in center] for center in found.centers]
        names = names_for(self.engine, ids, centers, clusterer.prep.categories)
        sizes = [int((found.labels == i).sum()) for i in range(count)]
        clusters = [
            Cluster(cluster_id, name, size, center, named_by)
            for cluster_id, (name, named_by), size, center in zip(
                ids, names, sizes, centers, strict=True
            )
        ]
        outlier_shares = {
            ids[i]: round(float(found.outliers[found.labels == i].mean()), 4) if sizes[i] else 0.0
            for i in range(count)
        }
        quality = {
            **found.quality,
            "noise_share": 0.0,
            "outlier_share": round(float(found.outliers.mean()), 4) if len(recent) else 0.0,
            "outlier_shares": outlier_shares,
            "sample_size": len(recent),
        }
        seeded_by = clusterer.seed.version
        params = {"k": count, "memory": clusterer.memory, "seeded_by": seeded_by}
        params["rows_learned"] = clusterer.learned
        version = store.next_version(self.client)
        model = ClusterModel(
            version, int(time.time() * 1000), STREAM_ALGORITHM, params, clusterer.prep,
            "centroids", clusters, {"limits": found.limits}, quality,
        )  # fmt: skip
        if not store.publish_over(self.client, model, current.version):
            log.info("stream clusters: model %d not published (another was, meanwhile)", version)
            return None
        self.current, self.seen_version = model, version
        self.new_rows = 0
        self.published_at = self.clock()
        kept = [i for i in ids if i in current.ids]
        with session_scope(self.engine) as session:
            session.add(
                ClusterRefit(
                    reason="stream",
                    algorithm=STREAM_ALGORITHM,
                    params=params,
                    sample_size=len(recent),
                    silhouette=quality.get("silhouette"),
                    davies_bouldin=quality.get("davies_bouldin"),
                    calinski_harabasz=quality.get("calinski_harabasz"),
                    outlier_share=quality["outlier_share"],
                    sizes=dict(zip(ids, sizes, strict=True)),
                    kept=kept,
                    added=[i for i in ids if i not in kept],
                    retired=[i for i in current.ids if i not in ids],
                    fit_seconds=round(time.perf_counter() - started, 3),
                    candidates=[],
                    model_version=version,
                    model=model.shown(),
                )
            )
        log.info(
            "stream clusters: model %d published (%d clusters, %d rows learned since model %d, "
            "silhouette %s)",
            version, count, clusterer.learned, seeded_by, quality.get("silhouette"),
        )  # fmt: skip
        return model


def run(
    client: redis.Redis,
    engine: Engine,
    *,
    interval_s: float,
    memory: int,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """The stream clusterer until ``stop`` says so (``segflow cluster stream``)."""
    runner = StreamRunner(client, engine, interval_s=interval_s, memory=memory)
    log.info(
        "stream clusters: reading %s, publishing every %s s (memory %d rows a centre)",
        store.SNAPSHOTS_KEY, interval_s, memory,
    )  # fmt: skip
    while not stop():
        runner.step()
