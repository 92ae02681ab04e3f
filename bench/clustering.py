"""The clustering stage measured: model quality and fit time by algorithm and size, on a
REES46-style history replayed through the real dataflow, streaming clusters against one daily
batch refit as the population drifts, the cost of the live assignment in the dataflow, and
the memory of the model and of the clustering data.

    .venv/bin/python bench/clustering.py [--sizes 10000,100000] [--parts personas,rees46,...]

1. ``personas``: customers of four known personas (``tests/cluster_personas.py``) at each of
   ``--sizes``. First as the product refits: a uniform sample of at most 20,000 profiles
   (``service.DEFAULT_SAMPLE``), every family fitted on three quarters of it and judged on the
   held-back quarter (silhouette, Davies-Bouldin), the chosen one marked, the adjusted Rand
   index of the live assignment against the personas on up to 100,000 of the customers. Then
   each algorithm on all the profiles (beyond the sample), each in a process of its own under
   ``--memory-gb`` of address space and ``--fit-timeout`` seconds: what cannot run says why,
   measured (out of memory, too slow) or by a stated bound (Ward's pairwise distances). The
   floor: k-means' fit time at the same size.
2. ``rees46``: a generated REES46-style event file (view / cart / remove_from_cart / purchase
   rows with categories, brands, prices and user sessions over the last 30 days) replayed with
   `segflow replay --format rees46` into an embedded Redis, the real dataflow run over it, and
   every family fitted on the profiles it computed (no personas: no Rand index).
3. ``stream``: a population that drifts for ``--days`` simulated days (its behaviour grows and
   some customers change persona); each day starts with one batch refit (the product's fit on
   a uniform sample); a stream clusterer (``app.clustering.stream``) learns from the active
   customers' snapshots, reseeded by each refit as `segflow up` runs it, and another is seeded
   once on the first day only. Every few hours each model assigns a sample of the current
   customers; their silhouette is measured in that hour's scaled space (the preparation fitted
   on them), with the Rand index against the personas.
4. ``flow``: ``bench/pipeline.py``'s flow over a shop's history with clustering off, then on
   (the product's choice fitted on the off run's profiles; a k-means model; the same k-means in
   stream mode, the sink sending the snapshots), each in turn ``--flow-repeats`` times, the
   fastest of each kept; events/s, CPU of the flow process per event, ratio to off.
5. ``memory``: each model's JSON and Python objects (tracemalloc around
   ``ClusterModel.from_shown``), a customer's live ``Assignment`` in the dataflow, and the
   clustering data per customer in Redis after the "on" run (members sets, moves, the cluster
   transitions in the customers' lists) and the stream-mode run (the snapshots stream).
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson
import redis
from sklearn.metrics import adjusted_rand_score, davies_bouldin_score, silhouette_score

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.clustering import store  # noqa: E402
from app.clustering.columns import inputs  # noqa: E402
from app.clustering.fitting import (  # noqa: E402
    AGGLOMERATIVE_MOST,
    SILHOUETTE_MOST,
    Candidate,
    Fit,
    fit,
    prepare,
)
from app.clustering.model import ClusterModel, membership  # noqa: E402
from app.clustering.service import DEFAULT_SAMPLE  # noqa: E402
from app.clustering.stream import StreamClusterer  # noqa: E402
from app.profiles.keys import members_key, transitions_key  # noqa: E402
from app.redis_server import EmbeddedRedis  # noqa: E402
from bench.pipeline import (  # noqa: E402
    BATCH,
    OFF,
    PARTITIONS,
    FlowRun,
    compare_flows,
    fitted_on_flow,
    history,
    run_flow,
    timed_cpu,
)
from tests.cluster_personas import PERSONAS, features_of, population  # noqa: E402
from tests.factories import StreamEntries  # noqa: E402

PARTS = ("personas", "rees46", "stream", "flow", "memory")
ARI_MOST = 100_000  # customers the Rand index and Davies-Bouldin are measured on
DAY_MS = 86_400_000


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")


def number(value: Any, digits: int = 3) -> str:
    return "—" if not isinstance(value, int | float) else f"{value:.{digits}f}"


def scored(
    rows: np.ndarray, labels: np.ndarray, seed: int = 0
) -> tuple[float | None, float | None]:
    """Silhouette (on a sample) and Davies-Bouldin of labelled rows, density noise left out."""
    kept = labels >= 0
    x, y = rows[kept], labels[kept]
    if len(set(y.tolist())) < 2:
        return None, None
    silhouette = float(
        silhouette_score(x, y, sample_size=min(len(x), SILHOUETTE_MOST), random_state=seed)
    )
    return silhouette, float(davies_bouldin_score(x, y))


# --- 1. personas: quality and fit time by algorithm and size -----------------------------------


@dataclass
class WholeFit:
    """One algorithm on all the profiles, or why it could not run."""

    seconds: float | None = None
    peak_mb: float | None = None
    labels: np.ndarray | None = None
    why_not: str = ""


def _fit_whole(
    family: str, params: dict[str, Any], rows_path: str, memory_bytes: int
) -> tuple[Any, ...]:
    """In a process of its own: the family on every row saved at ``rows_path``, under
    ``memory_bytes`` of address space; (labels, seconds, peak RSS in MB) or ("error", the
    reason)."""
    from sklearn.cluster import (
        DBSCAN,
        HDBSCAN,
        AgglomerativeClustering,
        KMeans,
        MiniBatchKMeans,
    )
    from sklearn.mixture import GaussianMixture

    x = np.load(rows_path)
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    started = time.perf_counter()
    try:
        k = params.get("k", 4)
        if family == "kmeans":
            model: Any = (
                KMeans(n_clusters=k, n_init=4, random_state=0)
                if len(x) <= 20_000
                else MiniBatchKMeans(n_clusters=k, n_init=3, batch_size=4096, random_state=0)
            )
            labels = model.fit_predict(x)
        elif family == "gaussian_mixture":
            labels = GaussianMixture(
                n_components=k, covariance_type="full", reg_covar=1e-4, random_state=0
            ).fit_predict(x)
        elif family == "agglomerative":
            labels = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(x)
        elif family == "dbscan":
            labels = DBSCAN(eps=params["eps"], min_samples=params["min_samples"]).fit_predict(x)
        else:
            labels = HDBSCAN(min_cluster_size=max(15, len(x) // 50), copy=True).fit_predict(x)
    except MemoryError as error:
        return ("error", f"out of memory under {memory_bytes / 2**30:.0f} GB ({error})")
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return (np.asarray(labels, dtype=np.int32), seconds, peak)


def fit_whole(
    rows: np.ndarray, family: str, params: dict[str, Any], *, memory_gb: float, timeout_s: float
) -> WholeFit:
    """``family`` on all ``rows`` with the parameters the product's fit chose, measured in a
    process of its own (so a fit that runs out of memory or time ends alone; spawned, not
    forked: OpenMP, which k-means and the mixtures run on, hangs in a forked child)."""
    n = len(rows)
    memory_bytes = int(memory_gb * 2**30)
    if family == "agglomerative":
        needed = n * (n - 1) / 2 * 8  # scipy's Ward linkage keeps every pairwise distance
        if needed > memory_bytes:
            return WholeFit(
                why_not=f"Ward keeps n(n-1)/2 pairwise distances: {needed / 2**30:,.0f} GB "
                f"at {n:,} rows (limit {memory_gb:.0f} GB); the refit uses "
                f"{AGGLOMERATIVE_MOST:,} rows"
            )
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="segflow-bench-rows-") as folder:
        rows_path = str(Path(folder) / "rows.npy")
        np.save(rows_path, rows)
        with context.Pool(1) as pool:
            pending = pool.apply_async(_fit_whole, (family, params, rows_path, memory_bytes))
            try:
                result = pending.get(timeout=timeout_s)
            except multiprocessing.TimeoutError:
                return WholeFit(why_not=f"did not finish within {timeout_s:.0f} s")
    if isinstance(result[0], str):
        return WholeFit(why_not=str(result[1]))
    labels, seconds, peak = result
    return WholeFit(seconds, peak, labels)


def personas_part(sizes: Sequence[int], *, memory_gb: float, timeout_s: float) -> None:
    print("\n## 1. Known personas: quality and fit time by algorithm and size\n")
    failed: dict[str, str] = {}  # family -> the size it could not reach
    product_rows: list[list[Any]] = []
    whole_rows: list[list[Any]] = []
    for n in sizes:
        started = time.perf_counter()
        customers = population(n, seed=40)
        personas = np.asarray([c.persona for c in customers])
        rng = np.random.default_rng(41)
        sample = [customers[i].features for i in rng.permutation(n)[:DEFAULT_SAMPLE]]
        found = fit(sample)
        measured = rng.permutation(n)[:ARI_MOST]
        rows = np.asarray([found.prep.row(customers[i].features) for i in measured])
        made = time.perf_counter() - started
        kmeans_s = next(c.fit_seconds for c in found.candidates if c.algorithm == "kmeans")
        for candidate in found.candidates:
            ari = None
            if candidate.eligible or candidate.quality.get("silhouette") is not None:
                labels, _ = candidate.model(found.prep).assign_rows(rows)
                ari = adjusted_rand_score(personas[measured], labels)
            quality = candidate.quality
            product_rows.append(
                [
                    f"{n:,}",
                    candidate.algorithm + (" (chosen)" if candidate is found.chosen else ""),
                    _trained_on(candidate, found),
                    ", ".join(f"{k}={v}" for k, v in candidate.params.items()),
                    number(quality.get("silhouette")),
                    number(quality.get("davies_bouldin")),
                    number(ari),
                    f"{candidate.fit_seconds:.2f}",
                    f"{candidate.fit_seconds / kmeans_s:.1f}",
                    candidate.reason,
                ]
            )
        print(
            f"{n:,} customers generated and the refit's sample fitted in {made:.0f} s",
            flush=True,
        )
        if n <= DEFAULT_SAMPLE:
            continue  # the refit's sample is every profile already
        everyone = np.asarray([found.prep.row(c.features) for c in customers])
        whole_kmeans: float | None = None
        for candidate in found.candidates:
            family = candidate.algorithm.replace("minibatch_kmeans", "kmeans")
            if family in failed:
                whole = WholeFit(why_not=f"could not at {failed[family]}: not tried")
            else:
                whole = fit_whole(
                    everyone, family, candidate.params, memory_gb=memory_gb, timeout_s=timeout_s
                )
            if whole.labels is None:
                failed.setdefault(family, f"{n:,}")
                whole_rows.append([f"{n:,}", family, "—", "—", "—", "—", "—", whole.why_not])
                continue
            silhouette, db = scored(everyone[measured], whole.labels[measured])
            ari = adjusted_rand_score(personas[measured], whole.labels[measured])
            assert whole.seconds is not None
            if family == "kmeans":
                whole_kmeans = whole.seconds
            ratio = f"{whole.seconds / whole_kmeans:.1f}" if whole_kmeans else "—"
            whole_rows.append(
                [
                    f"{n:,}",
                    family,
                    number(silhouette),
                    number(db),
                    number(ari),
                    f"{whole.seconds:.1f}",
                    ratio,
                    f"peak {whole.peak_mb:,.0f} MB",
                ]
            )
            print(f"  {family} on all {n:,} profiles: {whole.seconds:.1f} s", flush=True)
    print(
        "\nAs the product refits: a uniform sample of at most "
        f"{DEFAULT_SAMPLE:,} profiles, a quarter held back to judge on; the Rand index of the "
        f"live assignment on up to {ARI_MOST:,} customers (noise counted as its own group)\n"
    )
    table(
        [
            "profiles", "algorithm", "fitted on", "parameters", "silhouette",
            "Davies-Bouldin", "ARI", "fit s", "fit / k-means", "not eligible because",
        ],
        product_rows,
    )  # fmt: skip
    if whole_rows:
        print(
            "\nEach algorithm on every profile (the parameters the refit chose; scikit-learn "
            "directly, in a process of its own): quality on up to "
            f"{ARI_MOST:,} of them\n"
        )
        table(
            [
                "profiles", "algorithm", "silhouette", "Davies-Bouldin", "ARI", "fit s",
                "fit / k-means", "memory, or why it could not run",
            ],
            whole_rows,
        )  # fmt: skip


def _trained_on(candidate: Candidate, found: Fit) -> str:
    rows = candidate.params.get("rows", len(found.train))
    return f"{rows:,} of {found.sample_size:,}"


# --- 2. a REES46-style history through segflow replay and the dataflow ---------------------------

REES46_CATEGORIES = {  # category_code: (category_id, brands, median price)
    "electronics.smartphone": ("2053013555631882655", ("samsung", "apple", "xiaomi"), 250.0),
    "electronics.audio.headphone": ("2053013554658804075", ("sony", "jbl", "apple"), 60.0),
    "computers.notebook": ("2053013558920217191", ("lenovo", "hp", "asus"), 600.0),
    "appliances.kitchen.washer": ("2053013563810775923", ("lg", "bosch", "samsung"), 300.0),
    "apparel.shoes": ("2053013555262783879", ("nike", "adidas", "puma"), 70.0),
    "furniture.living_room.sofa": ("2053013563139687247", ("ikea", "divan"), 400.0),
    "kids.toys": ("2053013560346280633", ("lego", "hasbro"), 25.0),
    "": ("2053013558391734851", ("",), 15.0),  # rows without a category code, as in REES46
}
# the kinds of shopper the file is made of, with their share: the sessions they make over 30
# days, views per session, the chance a viewed product goes to the cart, and that a cart is
# bought
REES46_SHOPPERS = {
    "window shopper": (0.5, (1, 2), (1, 6), 0.02, 0.0),
    "researcher": (0.2, (2, 5), (5, 15), 0.05, 0.1),
    "cart abandoner": (0.15, (1, 3), (2, 6), 0.5, 0.05),
    "buyer": (0.12, (1, 4), (2, 5), 0.4, 0.8),
    "loyal buyer": (0.03, (4, 10), (2, 6), 0.5, 0.9),
}


def rees46_rows(events: int, *, now_ms: int, seed: int = 46) -> list[dict[str, str]]:
    """About ``events`` REES46 rows of shoppers over the 30 days before ``now_ms`` (the last
    hour left out), in no particular order (the replay sorts them)."""
    rng = random.Random(seed)
    kinds = list(REES46_SHOPPERS)
    weights = [REES46_SHOPPERS[k][0] for k in kinds]
    categories = list(REES46_CATEGORIES)
    rows: list[dict[str, str]] = []
    user = 0
    while len(rows) < events:
        user += 1
        kind = rng.choices(kinds, weights)[0]
        _, sessions, views, cart_p, buy_p = REES46_SHOPPERS[kind]
        liked = rng.sample(categories, 2)
        for _ in range(rng.randint(*sessions)):
            at = now_ms - 3_600_000 - rng.randrange(30 * DAY_MS)
            session = f"{rng.getrandbits(64):016x}-{user}"
            carted = []
            for _ in range(rng.randint(*views)):
                code = rng.choice(liked) if rng.random() < 0.8 else rng.choice(categories)
                category_id, brands, median = REES46_CATEGORIES[code]
                product = str(1_000_000 + 1_000 * categories.index(code) + rng.randrange(40))
                price = round(median * rng.lognormvariate(0, 0.4), 2)
                row = {
                    "event_time": _rees46_time(at),
                    "event_type": "view",
                    "product_id": product,
                    "category_id": category_id,
                    "category_code": code,
                    "brand": rng.choice(brands),
                    "price": f"{price:.2f}",
                    "user_id": str(500_000_000 + user),
                    "user_session": session,
                }
                rows.append(row)
                at += rng.randint(5_000, 120_000)
                if rng.random() < cart_p:
                    rows.append({**row, "event_type": "cart", "event_time": _rees46_time(at)})
                    carted.append(row)
                    at += rng.randint(5_000, 60_000)
            if carted and rng.random() < buy_p:
                for row in carted:
                    at += rng.randint(1_000, 10_000)
                    rows.append({**row, "event_type": "purchase", "event_time": _rees46_time(at)})
            elif carted and rng.random() < 0.3:
                at += rng.randint(5_000, 60_000)
                gone = carted[-1]
                rows.append(
                    {**gone, "event_type": "remove_from_cart", "event_time": _rees46_time(at)}
                )
    return rows


def _rees46_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def write_rees46(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def rees46_part(work: Path, url: str, client: redis.Redis, events: int) -> None:
    print("\n## 2. A REES46-style history replayed through `segflow replay` and the dataflow\n")
    client.flushdb()
    path = work / "rees46-2019-oct-like.csv"
    rows = rees46_rows(events, now_ms=time.time_ns() // 1_000_000)
    write_rees46(path, rows)
    env = {
        **os.environ,
        "REDIS_URL": url,
        "SEGFLOW_DATA_DIR": str(work / "data"),
        "SEGFLOW_PARTITIONS": str(PARTITIONS),
    }
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "replay", str(path), "--format", "rees46"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    replayed = time.perf_counter() - started
    summary = done.stdout.strip().splitlines()[-1]
    flow_s, _, _ = run_flow(url, "pipelines.segmentation:flow_from_env()", work / "rees46-recovery")
    _, profiles = store.sample_profiles(client, DEFAULT_SAMPLE)
    customers = sum(1 for _ in client.scan_iter(match=store.PROFILE_PATTERN, count=2_000))
    print(
        f"{len(rows):,} rows of {len({r['user_id'] for r in rows}):,} shoppers: replayed in "
        f"{replayed:.0f} s ({summary}), the dataflow over them in {flow_s:.0f} s; "
        f"{customers:,} profiles, {len(profiles):,} sampled for the fit\n"
    )
    found = fit(profiles)
    kmeans_s = next(c.fit_seconds for c in found.candidates if c.algorithm.endswith("kmeans"))
    table(
        [
            "algorithm", "fitted on", "parameters", "clusters", "silhouette", "Davies-Bouldin",
            "Calinski-Harabasz", "noise share", "fit s", "fit / k-means", "not eligible because",
        ],
        [
            [
                c.algorithm + (" (chosen)" if c is found.chosen else ""),
                _trained_on(c, found),
                ", ".join(f"{k}={v}" for k, v in c.params.items()),
                len(c.sizes),
                number(c.quality.get("silhouette")),
                number(c.quality.get("davies_bouldin")),
                number(c.quality.get("calinski_harabasz"), 0),
                number(c.quality.get("noise_share")),
                f"{c.fit_seconds:.2f}",
                f"{c.fit_seconds / kmeans_s:.1f}",
                c.reason,
            ]
            for c in found.candidates
        ],
    )  # fmt: skip
    model = found.chosen.model(found.prep)
    print("\nthe chosen model's clusters (centres in the columns' own units):")
    for cluster in model.clusters:
        centre = model.centroid(cluster)
        shown = ", ".join(
            f"{k} {v + 0.0:.3g}" for k, v in centre.items() if not k.startswith("category")
        )
        print(f"  {cluster.id}: {cluster.size:,} of the sample; {shown}")


# --- 3. streaming clusters against one daily batch refit -----------------------------------------


@dataclass
class Series:
    silhouettes: list[float | None] = field(default_factory=list)
    aris: list[float] = field(default_factory=list)
    outliers: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)


def centre_lag(
    rows: np.ndarray, labels: np.ndarray, centers: np.ndarray, truth: Sequence[str]
) -> float:
    """How far behind the population a model's centres are: per persona, the distance from
    the mean of its customers now to the centre of the cluster most of them are in (in the
    model's scaled units), averaged over the personas."""
    found = []
    personas = np.asarray(truth)
    for persona in PERSONAS:
        mine = personas == persona
        clustered = labels[mine][labels[mine] >= 0]
        if not len(clustered):
            continue
        home = int(np.bincount(clustered).argmax())
        found.append(float(np.linalg.norm(rows[mine].mean(axis=0) - centers[home])))
    return float(np.mean(found))


def stream_part(
    *, customers: int, days: int, steps: int, growth: float, moves: float, memory: int
) -> None:
    print("\n## 3. Streaming clusters against one daily batch refit, as the population drifts\n")
    rng = random.Random(50)
    people = population(customers, seed=51)
    persona_of = [c.persona for c in people]  # who each customer is now
    drawn_as = list(persona_of)  # the persona their current features were drawn from
    current = [c.features for c in people]
    personas = list(PERSONAS)
    active = customers // 4  # customers with a new snapshot in each step
    sample = min(customers, 5_000)  # the daily refit's sample
    names = ("daily batch refit", "stream, reseeded by each refit", "stream, seeded on day 1 only")
    series = {name: Series() for name in names}
    points: list[str] = []
    seed_only: StreamClusterer | None = None
    refit_s = []
    for day in range(days):
        for i in rng.sample(range(customers), int(customers * moves)):  # some change persona
            persona_of[i] = rng.choice([p for p in personas if p != persona_of[i]])
        started = time.perf_counter()
        found = fit([current[i] for i in rng.sample(range(customers), sample)])
        refit_s.append(time.perf_counter() - started)
        batch = found.chosen.model(found.prep, version=day + 1)
        reseeded = StreamClusterer(batch, memory=memory)
        seed_only = seed_only or StreamClusterer(batch, memory=memory)
        clusterers = {names[1]: reseeded, names[2]: seed_only}
        for step in range(steps):
            grown = 1 + growth * (day + (step + 1) / steps)
            changed = rng.sample(range(customers), active)
            for i in changed:
                current[i] = features_of(persona_of[i], rng, grown=grown)
                drawn_as[i] = persona_of[i]
            snapshots = [list(inputs(current[i])) for i in changed]  # as the sink sends them
            for clusterer in clusterers.values():
                recent = clusterer.prepared(snapshots)
                clusterer.learn(recent)
                clusterer.model_of(recent)  # a publication: fences from the recent rows
            judged = rng.sample(range(customers), min(customers, 4_000))
            raw = [list(inputs(current[i])) for i in judged]
            truth = [drawn_as[i] for i in judged]
            _, reference = prepare([current[i] for i in judged])  # this hour's scaled space
            rows = np.asarray([batch.prep.row_of(r) for r in raw])
            labels, outliers = batch.assign_rows(rows)
            centers = np.asarray([c.center for c in batch.clusters])
            judging = {names[0]: (rows, labels, outliers, centers)}
            for name, clusterer in clusterers.items():
                rows = clusterer.prepared(raw)
                d2 = ((rows[:, None, :] - clusterer.centers[None, :, :]) ** 2).sum(axis=2)
                labels = d2.argmin(axis=1)
                distances = np.sqrt(d2[np.arange(len(rows)), labels])
                outliers = distances > np.asarray(clusterer.limits)[labels]
                judging[name] = (rows, labels, outliers, clusterer.centers)
            for name, (rows, labels, outliers, centers) in judging.items():
                silhouette, _ = scored(reference, labels)
                series[name].silhouettes.append(silhouette)
                series[name].aris.append(adjusted_rand_score(truth, labels))
                series[name].outliers.append(float(np.mean(outliers)))
                series[name].lags.append(centre_lag(rows, labels, centers, truth))
            points.append(f"day {day + 1} {24 * (step + 1) // steps:02d}h")
    print(
        f"{customers:,} customers of 4 personas; every day {moves:.0%} of them change persona "
        f"and everyone's behaviour grows by {growth:.0%} of the first day's (money, orders, "
        f"pages, minutes, carts); {active:,} customers have a new snapshot every "
        f"{24 // steps} h, which reach the stream clusterers (memory {memory:,} rows a "
        f"centre). The daily refit: every family on a sample of {sample:,} "
        f"({sum(refit_s) / len(refit_s):.1f} s each). Each model assigns 4,000 current "
        "customers: the silhouette of its clusters in the scaled space fitted on them at that "
        "hour, the share it flags as outliers, and how far its centres are from where the "
        "personas are now (scaled units).\n"
    )
    short = ("batch", "stream", "stream, day 1 seed")
    table(
        [
            "when",
            *(f"silhouette: {n}" for n in short),
            *(f"outliers: {n}" for n in short),
            *(f"centre lag: {n}" for n in short),
        ],
        [
            [
                point,
                *(number(series[n].silhouettes[i]) for n in names),
                *(f"{series[n].outliers[i]:.1%}" for n in names),
                *(number(series[n].lags[i], 2) for n in names),
            ]
            for i, point in enumerate(points)
        ],
    )
    print()
    batch_silhouette = _mean(series[names[0]].silhouettes) or 1.0
    table(
        [
            "model", "mean silhouette", "lowest", "ratio to batch", "mean ARI",
            "mean outlier share", "mean centre lag",
        ],
        [
            [
                name,
                number(_mean(series[name].silhouettes)),
                number(min((s for s in series[name].silhouettes if s is not None), default=None)),
                number((_mean(series[name].silhouettes) or 0) / batch_silhouette, 2),
                number(float(np.mean(series[name].aris))),
                f"{float(np.mean(series[name].outliers)):.1%}",
                number(float(np.mean(series[name].lags)), 2),
            ]
            for name in names
        ],
    )  # fmt: skip


def _mean(values: list[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return float(np.mean(found)) if found else None


# --- 4 and 5. the flow with clustering on and off, and the memory ------------------------------


def model_memory(model: ClusterModel) -> tuple[int, int]:
    """The model's JSON bytes, and the bytes its Python objects hold once loaded."""
    shown = orjson.dumps(model.shown())
    loaded = orjson.loads(shown)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    kept = ClusterModel.from_shown(loaded)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    del kept
    return len(shown), held


def assignment_memory(model: ClusterModel, profiles: list[dict[str, Any]]) -> tuple[float, int]:
    """Bytes a customer's live ``Assignment`` holds in the dataflow (not in its snapshots), and
    the bytes of the first assignments the model remembered meanwhile (``FIRST_KEPT`` at most,
    shared by a process's customers)."""
    model = ClusterModel.from_shown(model.shown())  # nothing remembered yet
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    kept = [model.follow(features, None) for features in profiles]
    full = tracemalloc.take_snapshot()
    model.forget_first()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    remembered = sum(stat.size_diff for stat in full.compare_to(after, "filename"))
    return held / max(len(kept), 1), remembered


def assignment_time(model: ClusterModel, profiles: list[dict[str, Any]]) -> tuple[float, float]:
    """Microseconds per assignment of a profile: afresh (by a model that remembers none of
    them yet), and again unchanged."""
    model = ClusterModel.from_shown(model.shown())
    started = time.process_time()
    last = [model.follow(features, None) for features in profiles]
    fresh = (time.process_time() - started) / len(profiles) * 1e6
    started = time.process_time()
    for features, assigned in zip(profiles, last, strict=True):
        model.follow(features, assigned)
    again = (time.process_time() - started) / len(profiles) * 1e6
    return fresh, again


@dataclass
class RedisMemory:
    members: int = 0  # bytes of the clusters' members sets
    moves: int = 0  # bytes of the moves sorted set
    transitions: int = 0  # cluster transitions in the customers' lists
    transition_bytes: int = 0  # their members' bytes
    snapshots: int = 0  # bytes of the snapshots stream
    snapshot_rows: int = 0
    customers: int = 0


def redis_memory(client: redis.Redis, model: ClusterModel) -> RedisMemory:
    found = RedisMemory()
    for cluster_id in model.ids:
        found.members += int(client.memory_usage(members_key(membership(cluster_id))) or 0)
    found.moves = int(client.memory_usage(store.MOVES_KEY) or 0)
    for key in client.scan_iter(match=store.PROFILE_PATTERN, count=2_000):
        found.customers += 1
        customer = key.decode()[len("profile:{") : -1]
        for member in cast(list[bytes], client.zrange(transitions_key(customer), 0, -1)):
            if b'"cluster:' in member:
                found.transitions += 1
                found.transition_bytes += len(member)
    found.snapshots = int(client.memory_usage(store.SNAPSHOTS_KEY, samples=0) or 0)
    for _, fields in cast(StreamEntries, client.xrange(store.SNAPSHOTS_KEY)):
        found.snapshot_rows += len(orjson.loads(fields[b"rows"]))
    return found


def flow_part(
    work: Path, url: str, client: redis.Redis, events_count: int, repeats: int
) -> tuple[list[ClusterModel], dict[str, RedisMemory], list[dict[str, Any]]]:
    print("\n## 4. The dataflow with clustering on against off (bench/pipeline.py's flow)\n")
    events = history(events_count, time.time_ns() // 1_000_000)
    first = timed_cpu(url, client, events, "pipelines.segmentation:flow_from_env()",
                      work / "flow-off-first", env=OFF)  # fmt: skip
    chosen, sample, customers = fitted_on_flow(client)
    kmeans, _, _ = fitted_on_flow(client, families=("kmeans",))
    _, profiles = store.sample_profiles(client, 5_000)
    on = f"on: the refit's choice ({chosen.algorithm}, {len(chosen.clusters)} clusters)"
    on_kmeans = f"on: k-means ({len(kmeans.clusters)} clusters)"
    streamed = "on: the same k-means, stream mode (snapshots sent)"
    runs = [
        FlowRun("clustering off", OFF),
        FlowRun(on, BATCH, chosen),
        FlowRun(on_kmeans, BATCH, kmeans),
        FlowRun(streamed, {"SEGFLOW_CLUSTERING": "stream"}, kmeans),
    ]
    memory: dict[str, RedisMemory] = {}
    models = {on: chosen, on_kmeans: kmeans, streamed: kmeans}

    def measure(label: str) -> None:
        if label in models:
            memory[label] = redis_memory(client, models[label])

    found = compare_flows(
        url, client, events, work, runs, repeats=repeats,
        earlier={"clustering off": [first]}, after=measure,
    )  # fmt: skip
    off = found["clustering off"]
    print(
        f"{events_count:,} events of {customers:,} customers; the models fitted on "
        f"{sample:,} of the profiles the off run computed; each run {repeats} times in turn "
        "(off once more), the fastest kept; CPU: the flow process's user + system time "
        "less its run over empty streams; the cost judged by CPU per event (a flow bound by "
        "its CPU runs off/on as fast; wall time on a shared machine measures the neighbours "
        "too, and a run's start-up can take longer than the events: events/s '—')\n"
    )

    def row(cost: Any) -> list[str]:
        rate = f"{cost.rate(events_count):,.0f}" if cost.seconds > 0 else "—"
        return [
            cost.label, rate, f"{cost.cpu_us(events_count):.1f}",
            f"{cost.cpu_s / off.cpu_s:.2f}", f"{1 - off.cpu_s / cost.cpu_s:.1%}",
        ]  # fmt: skip

    table(
        ["flow", "events/s", "CPU us per event", "ratio to off (CPU)", "assignment's cost"],
        [row(cost) for cost in found.values()],
    )
    return [chosen, kmeans], memory, profiles


def memory_part(
    models: list[ClusterModel],
    redis_figures: dict[str, RedisMemory],
    profiles: list[dict[str, Any]],
) -> None:
    print("\n## 5. Memory: the model in the dataflow, the clustering data per customer\n")
    rows = []
    for model in models:
        json_bytes, python_bytes = model_memory(model)
        per_customer, remembered = assignment_memory(model, profiles)
        fresh, again = assignment_time(model, profiles)
        rows.append(
            [
                f"{model.algorithm} ({model.kind}, {len(model.clusters)} clusters, "
                f"{model.prep.width} columns)",
                f"{json_bytes:,}",
                f"{python_bytes:,}",
                f"{per_customer:,.0f}",
                f"{remembered:,} ({len(profiles):,} profiles)",
                f"{fresh:.1f}",
                f"{again:.1f}",
            ]
        )
    table(
        [
            "model", "JSON bytes (Redis, SQL)", "Python bytes (each dataflow process)",
            "live assignment bytes per customer (not saved)",
            "first assignments remembered, bytes", "us per assignment afresh",
            "us when the columns did not change",
        ],
        rows,
    )  # fmt: skip
    print()
    table(
        [
            "after the run", "customers", "members sets bytes / customer",
            "moves bytes / customer", "cluster transitions / customer",
            "their bytes / customer (JSON)", "snapshots stream",
        ],
        [
            [
                label,
                f"{m.customers:,}",
                f"{m.members / max(m.customers, 1):.1f}",
                f"{m.moves / max(m.customers, 1):.1f}",
                f"{m.transitions / max(m.customers, 1):.1f}",
                f"{m.transition_bytes / max(m.customers, 1):.0f}",
                f"{m.snapshot_rows:,} rows, {m.snapshots / 2**20:.1f} MB"
                if m.snapshot_rows
                else "—",
            ]
            for label, m in redis_figures.items()
        ],
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="10000,100000", help="profiles of known personas, comma-separated"
    )
    parser.add_argument("--parts", default=",".join(PARTS), help=f"of {', '.join(PARTS)}")
    parser.add_argument("--fit-timeout", type=float, default=90.0, help="seconds per fit on all")
    parser.add_argument("--memory-gb", type=float, default=4.0, help="per fit on all profiles")
    parser.add_argument("--rees46-events", type=int, default=150_000)
    parser.add_argument("--customers", type=int, default=20_000, help="in the drift simulation")
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4, help="measurements a simulated day")
    parser.add_argument("--growth", type=float, default=0.5, help="behaviour's growth a day")
    parser.add_argument("--moves", type=float, default=0.05, help="persona changes a day")
    parser.add_argument("--memory", type=int, default=5_000, help="stream memory, rows a centre")
    parser.add_argument("--flow-events", type=int, default=60_000)
    parser.add_argument("--flow-repeats", type=int, default=2)
    options = parser.parse_args(argv)
    parts = {p.strip() for p in options.parts.split(",") if p.strip()}
    unknown = parts - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    started = time.perf_counter()
    print(f"clustering benchmark, {os.cpu_count()} cores")
    if "personas" in parts:
        sizes = [int(s) for s in options.sizes.split(",") if s]
        personas_part(sizes, memory_gb=options.memory_gb, timeout_s=options.fit_timeout)
    if "stream" in parts:
        stream_part(
            customers=options.customers, days=options.days, steps=options.steps,
            growth=options.growth, moves=options.moves, memory=options.memory,
        )  # fmt: skip
    if parts & {"rees46", "flow", "memory"}:
        with tempfile.TemporaryDirectory(prefix="segflow-bench-clustering-") as folder:
            work = Path(folder)
            os.environ["SEGFLOW_DATA_DIR"] = str(work / "data")  # the flows' SQLite: not here
            server = EmbeddedRedis.ensure(work)
            client = redis.Redis.from_url(server.url)
            try:
                if "rees46" in parts:
                    rees46_part(work, server.url, client, options.rees46_events)
                if parts & {"flow", "memory"}:
                    models, figures, profiles = flow_part(
                        work, server.url, client, options.flow_events, options.flow_repeats
                    )
                    memory_part(models, figures, profiles)
            finally:
                client.close()
                server.stop()
    print(f"\n(the whole benchmark took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
