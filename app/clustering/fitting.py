"""Fitting: candidate models on a sample of profiles, each judged on a held-back part of it.

The families and how each chooses its own parameters on the training part:

- ``kmeans``: k-means for k in ``2..max_k`` (MiniBatchKMeans above ``MINIBATCH_ABOVE`` rows),
  k by the best silhouette on the training part;
- ``gaussian_mixture``: full-covariance Gaussian mixtures for k in ``2..max_k``, k by BIC;
- ``agglomerative``: Ward linkage on at most ``AGGLOMERATIVE_MOST`` rows, k by silhouette;
- ``dbscan``: ``min_samples`` = 2 x the number of columns, ``eps`` at the knee of the sorted
  k-distance curve (the point farthest from the chord between its ends), raised to the curve's
  ``1 - DBSCAN_MOST_NOISE`` quantile when the knee leaves more than that share as noise, on
  at most ``DENSITY_MOST`` rows;
- ``hdbscan``: ``min_cluster_size`` = max(15, 2% of the rows), on at most ``DENSITY_MOST`` rows.

Each family's model assigns the held-back part by the live rule (``model.ClusterModel``), and
is judged on it by silhouette and Davies-Bouldin (density noise left out; its share is
recorded). **The choice**: among models with at least 2 clusters and at most
``MOST_NOISE`` of the held-back part as noise, the one with the smallest sum of its rank by
silhouette (higher is better) and its rank by Davies-Bouldin (lower is better); ties go to the
higher silhouette. When that model is a mixture or a density model, the best-ranked centroid
model (k-means, agglomerative) is chosen instead if its quality is close: a silhouette at most
``CLOSE_SILHOUETTE`` lower and a Davies-Bouldin at most ``CLOSE_DAVIES_BOULDIN`` higher
(relative). The dataflow assigns every feature snapshot, and a centroid model does it by moving
the changed columns' share of k squared distances, where a mixture or a density model scores
the whole row against every component or kept member: close quality is not worth that.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.cluster import DBSCAN, HDBSCAN, AgglomerativeClustering, KMeans, MiniBatchKMeans
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from app.clustering.choices import FAMILIES as FAMILIES
from app.clustering.choices import MIN_PROFILES as MIN_PROFILES
from app.clustering.columns import (
    CATEGORY_WEIGHT,
    MOST_CATEGORIES,
    NUMERIC,
    Preparation,
    category,
    measured,
)
from app.clustering.model import OUTLIER_QUANTILE, Cluster, ClusterModel

HELD_BACK = 0.25
MOST_NOISE = 0.25
DBSCAN_MOST_NOISE = 0.1
MIN_CLUSTER_SHARE = 0.02  # a smaller group is outliers, not a cluster
MINIBATCH_ABOVE = 20_000
AGGLOMERATIVE_MOST = 5_000
DENSITY_MOST = 10_000
SILHOUETTE_MOST = 4_000  # rows a silhouette is computed on (it is quadratic)
KEPT_NEIGHBOURS = 3_000  # members a density model keeps to assign by
CLOSE_SILHOUETTE = 0.05  # a centroid model this close to the best is chosen (``choose``)
CLOSE_DAVIES_BOULDIN = 0.15  # relative


class TooFewProfiles(ValueError):
    """A fit was asked of fewer profiles than it needs."""


@dataclass
class Candidate:
    algorithm: str
    params: dict[str, Any]
    kind: str
    centers: list[list[float]]  # scaled, one per cluster
    sizes: list[int]  # training members per cluster
    assign_data: dict[str, Any]
    fit_seconds: float
    quality: dict[str, Any] = field(default_factory=dict)
    eligible: bool = True
    reason: str = ""

    def model(self, prep: Preparation, *, version: int = 0, fitted_at: int = 0) -> ClusterModel:
        clusters = [
            Cluster(str(i), str(i), size, center)
            for i, (size, center) in enumerate(zip(self.sizes, self.centers, strict=True))
        ]
        return ClusterModel(
            version, fitted_at, self.algorithm, self.params, prep, self.kind, clusters,
            self.assign_data, dict(self.quality),
        )  # fmt: skip

    def summary(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "params": self.params,
            "clusters": len(self.sizes),
            "fit_seconds": round(self.fit_seconds, 3),
            **self.quality,
            "eligible": self.eligible,
            "reason": self.reason,
        }


@dataclass
class Fit:
    """What a fit found: the preparation, every candidate judged, the chosen one, and the
    scaled training and held-back rows (for matching ids and naming)."""

    prep: Preparation
    candidates: list[Candidate]
    chosen: Candidate
    train: np.ndarray
    held: np.ndarray
    sample_size: int


def preparation_pipeline(categories: Sequence[str]) -> Pipeline:
    """The scikit-learn preparation (``columns`` says which and why)."""
    numeric = [
        (
            column.name,
            make_pipeline(
                FunctionTransformer(_as_float, validate=False),
                SimpleImputer(strategy="constant", fill_value=column.missing),
                FunctionTransformer(np.log1p if column.log else None, validate=False),
                StandardScaler(),
            ),
            [i],
        )
        for i, column in enumerate(NUMERIC)
    ]
    encoder = make_pipeline(
        OneHotEncoder(categories=[list(categories)], handle_unknown="ignore", sparse_output=False),
        FunctionTransformer(lambda x: x * CATEGORY_WEIGHT, validate=False),
    )
    parts: list[tuple[str, Any, Any]] = list(numeric)
    if categories:
        parts.append(("top_category", encoder, [len(NUMERIC)]))
    return Pipeline([("columns", ColumnTransformer(parts, remainder="drop"))])


def _as_float(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=float)


def frame(profiles: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """The profiles' raw columns (NaN where missing) and their top category, as objects."""
    rows = [[*(measured(c, f) for c in NUMERIC), category(f)] for f in profiles]
    return np.asarray(rows, dtype=object)


def common_categories(profiles: Sequence[Mapping[str, Any]]) -> list[str]:
    counts: dict[str, int] = {}
    for features in profiles:
        name = category(features)
        if name:
            counts[name] = counts.get(name, 0) + 1
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    floor = max(2, len(profiles) // 100)  # a category of 1% of the profiles, or at least 2
    return [name for name, count in ranked[:MOST_CATEGORIES] if count >= floor]


def prepare(profiles: Sequence[Mapping[str, Any]]) -> tuple[Preparation, np.ndarray]:
    """Fit the preparation on these profiles' features; their scaled rows."""
    categories = common_categories(profiles)
    pipeline = preparation_pipeline(categories)
    scaled = np.asarray(pipeline.fit_transform(frame(profiles)), dtype=float)
    transformers = pipeline.named_steps["columns"].named_transformers_
    means, scales = [], []
    for column in NUMERIC:
        scaler = transformers[column.name].named_steps["standardscaler"]
        means.append(float(scaler.mean_[0]))
        scales.append(float(scaler.scale_[0]))
    return Preparation(tuple(means), tuple(scales), tuple(categories)), scaled


def fit(
    profiles: Sequence[Mapping[str, Any]],
    *,
    max_k: int = 8,
    families: Sequence[str] = FAMILIES,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Fit:
    """Every family's model on ``profiles`` (a sample), judged on a held-back part."""
    if len(profiles) < MIN_PROFILES:
        raise TooFewProfiles(
            f"{len(profiles)} profiles: a cluster fit needs at least {MIN_PROFILES}"
        )
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown clustering algorithm(s): {', '.join(sorted(unknown))}")
    prep, scaled = prepare(profiles)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(scaled))
    cut = max(int(len(scaled) * HELD_BACK), 100)
    held, train = scaled[order[:cut]], scaled[order[cut:]]
    max_k = max(2, min(max_k, len(train) // 20))
    candidates = []
    for family in families:
        if progress is not None:
            progress(family)
        started = time.perf_counter()
        candidate = _FITTERS[family](train, max_k, seed)
        candidate.fit_seconds = time.perf_counter() - started
        _judge(candidate, prep, held, seed)
        candidates.append(candidate)
    return Fit(prep, candidates, choose(candidates), train, held, len(profiles))


def choose(candidates: Sequence[Candidate]) -> Candidate:
    """The module docstring's rule: smallest sum of ranks by silhouette and Davies-Bouldin."""
    eligible = [c for c in candidates if c.eligible]
    if not eligible:
        reasons = "; ".join(f"{c.algorithm}: {c.reason}" for c in candidates)
        raise TooFewProfiles(f"no model found at least 2 clusters ({reasons})")
    by_silhouette = sorted(eligible, key=lambda c: -c.quality["silhouette"])
    by_db = sorted(eligible, key=lambda c: c.quality["davies_bouldin"])

    def score(c: Candidate) -> tuple[int, float]:
        return (by_silhouette.index(c) + by_db.index(c), -c.quality["silhouette"])

    best = min(eligible, key=score)
    if best.kind == "centroids":
        return best
    close = [
        c
        for c in eligible
        if c.kind == "centroids"
        and c.quality["silhouette"] >= best.quality["silhouette"] - CLOSE_SILHOUETTE
        and c.quality["davies_bouldin"]
        <= best.quality["davies_bouldin"] * (1 + CLOSE_DAVIES_BOULDIN)
    ]
    return min(close, key=score) if close else best


def _judge(candidate: Candidate, prep: Preparation, held: np.ndarray, seed: int) -> None:
    if len(candidate.sizes) < 2:
        candidate.eligible, candidate.reason = False, "fewer than 2 clusters"
        candidate.quality = {"silhouette": None, "davies_bouldin": None}
        return
    labels, outliers = candidate.model(prep).assign_rows(held)
    clustered = labels >= 0
    noise = 1.0 - float(clustered.mean())
    found = len(set(labels[clustered].tolist()))
    quality: dict[str, Any] = {
        "noise_share": round(noise, 4),
        "outlier_share": round(float(outliers.mean()), 4),
    }
    if found < 2:
        candidate.eligible, candidate.reason = False, "the held-back sample fell in one cluster"
        candidate.quality = {"silhouette": None, "davies_bouldin": None, **quality}
        return
    x, y = held[clustered], labels[clustered]
    quality["silhouette"] = round(
        float(silhouette_score(x, y, sample_size=min(len(x), SILHOUETTE_MOST), random_state=seed)),
        4,
    )
    quality["davies_bouldin"] = round(float(davies_bouldin_score(x, y)), 4)
    quality["calinski_harabasz"] = round(float(calinski_harabasz_score(x, y)), 2)
    candidate.quality = quality
    if noise > MOST_NOISE:
        candidate.eligible = False
        candidate.reason = f"{noise:.0%} of the held-back sample is noise (most {MOST_NOISE:.0%})"


def _silhouette(x: np.ndarray, labels: np.ndarray, seed: int) -> float:
    if len(set(labels.tolist())) < 2:
        return -1.0
    size = min(len(x), SILHOUETTE_MOST)
    return float(silhouette_score(x, labels, sample_size=size, random_state=seed))


def _centroid_candidate(
    algorithm: str, params: dict[str, Any], x: np.ndarray, labels: np.ndarray
) -> Candidate:
    """A model assigned by nearest centroid: centres are the members' means; a cluster's
    outlier limit is the fence (``_fence``) of its members' distances to its centre."""
    centers, sizes, limits = [], [], []
    for label in _lasting(labels):
        members = x[labels == label]
        center = members.mean(axis=0)
        distances = np.sqrt(((members - center) ** 2).sum(axis=1))
        centers.append([float(v) for v in center])
        sizes.append(len(members))
        limits.append(fence(distances))
    if len(sizes) < len(set(labels.tolist())):
        params = {**params, "kept": len(sizes)}  # the rest were too small (``_lasting``)
    return Candidate(algorithm, params, "centroids", centers, sizes, {"limits": limits}, 0.0)


def fence(distances: np.ndarray) -> float:
    """Tukey's far-out fence of a cluster's members' distances: Q3 + 3 x IQR. Robust: the
    outliers among the members barely move it, as they would a high quantile."""
    q1, q3 = np.quantile(distances, [0.25, 0.75])
    return float(q3 + 3 * (q3 - q1))


def _lasting(labels: np.ndarray) -> list[int]:
    """The labels of clusters holding at least ``MIN_CLUSTER_SHARE`` of the rows; the members
    of smaller ones are outliers (of the nearest lasting cluster, beyond its reach)."""
    counts = np.bincount(labels[labels >= 0])
    floor = MIN_CLUSTER_SHARE * len(labels)
    return [label for label, count in enumerate(counts.tolist()) if count >= floor]


def _fit_kmeans(x: np.ndarray, max_k: int, seed: int) -> Candidate:
    best: tuple[float, int, np.ndarray] | None = None
    algorithm = "minibatch_kmeans" if len(x) > MINIBATCH_ABOVE else "kmeans"
    for k in range(2, max_k + 1):
        if algorithm == "kmeans":
            model: Any = KMeans(n_clusters=k, n_init=4, random_state=seed)
        else:
            model = MiniBatchKMeans(n_clusters=k, n_init=3, batch_size=4096, random_state=seed)
        labels = model.fit_predict(x)
        score = _silhouette(x, labels, seed)
        if best is None or score > best[0]:
            best = (score, k, labels)
    assert best is not None
    return _centroid_candidate(algorithm, {"k": best[1]}, x, best[2])


def _fit_agglomerative(x: np.ndarray, max_k: int, seed: int) -> Candidate:
    rng = np.random.default_rng(seed)
    part = x[rng.permutation(len(x))[:AGGLOMERATIVE_MOST]]
    best: tuple[float, int, np.ndarray] | None = None
    for k in range(2, max_k + 1):
        labels = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(part)
        score = _silhouette(part, labels, seed)
        if best is None or score > best[0]:
            best = (score, k, labels)
    assert best is not None
    params = {"k": best[1], "linkage": "ward", "rows": len(part)}
    return _centroid_candidate("agglomerative", params, part, best[2])


def _fit_gaussian(x: np.ndarray, max_k: int, seed: int) -> Candidate:
    best: tuple[float, GaussianMixture] | None = None
    for k in range(2, max_k + 1):
        model = GaussianMixture(
            n_components=k, covariance_type="full", reg_covar=1e-4, n_init=1, random_state=seed
        ).fit(x)
        bic = float(model.bic(x))
        if best is None or bic < best[0]:
            best = (bic, model)
    assert best is not None
    model = best[1]
    # components too small to be clusters are dropped (their weight renormalised away): their
    # members fall below the density floor as outliers
    present = _lasting(model.predict(x))
    weights = model.weights_[present] / model.weights_[present].sum()
    data: dict[str, Any] = {
        "means": model.means_[present].tolist(),
        "precisions_cholesky": model.precisions_cholesky_[present].tolist(),
        "weights": weights.tolist(),
        "limits": [math.inf] * len(present),
    }
    params = {"k": len(present), "covariance_type": "full", "bic": round(best[0], 1)}
    zeros = [[0.0] * x.shape[1]] * len(present)
    draft = Candidate("gaussian_mixture", params, "gaussian", zeros, [0] * len(present), data, 0)
    mixture = draft.model(Preparation((), (), ()))
    labels, _ = mixture.assign_rows(x)
    distances = mixture.mahalanobis2(x, labels)
    data["limits"] = [
        fence(np.sqrt(distances[labels == i])) ** 2 if (labels == i).any() else 0.0
        for i in range(len(present))
    ]
    draft.sizes = [int((labels == i).sum()) for i in range(len(present))]
    draft.centers = [
        [float(v) for v in (x[labels == i].mean(axis=0) if draft.sizes[i] else model.means_[c])]
        for i, c in enumerate(present)
    ]
    return draft


def _knee(values: np.ndarray) -> float:
    """The point of a sorted curve farthest from the chord between its ends."""
    n = len(values)
    if n < 3 or values[-1] == values[0]:
        return float(values[-1])
    xs = np.linspace(0.0, 1.0, n)
    ys = (values - values[0]) / (values[-1] - values[0])
    return float(values[int(np.argmax(xs - ys))])


def _neighbours_candidate(
    algorithm: str, params: dict[str, Any], x: np.ndarray, labels: np.ndarray, keep: np.ndarray,
    eps: float, seed: int,
) -> Candidate:  # fmt: skip
    """A density model's clusters (noise left out), assigned by the nearest of the ``keep``
    members within ``eps``."""
    present = sorted(label for label in set(labels.tolist()) if label >= 0)
    remap = {label: i for i, label in enumerate(present)}
    sizes = [int((labels == label).sum()) for label in present]
    centers = [[float(v) for v in x[labels == label].mean(axis=0)] for label in present]
    kept = np.flatnonzero(keep & (labels >= 0))
    if len(kept) > KEPT_NEIGHBOURS:
        kept = np.random.default_rng(seed).choice(kept, KEPT_NEIGHBOURS, replace=False)
    data = {
        "points": x[kept].tolist(),
        "labels": [remap[int(label)] for label in labels[kept]],
        "eps": eps,
    }
    noise = float((labels < 0).mean())
    params = {**params, "training_noise_share": round(noise, 4)}
    return Candidate(algorithm, params, "neighbours", centers, sizes, data, 0.0)


def _fit_dbscan(x: np.ndarray, max_k: int, seed: int) -> Candidate:
    part = x[np.random.default_rng(seed).permutation(len(x))[:DENSITY_MOST]]
    min_samples = 2 * x.shape[1]
    distances, _ = NearestNeighbors(n_neighbors=min_samples).fit(part).kneighbors(part)
    curve = np.sort(distances[:, -1])
    eps = max(_knee(curve), 1e-6)
    model = DBSCAN(eps=eps, min_samples=min_samples).fit(part)
    if float((model.labels_ < 0).mean()) > DBSCAN_MOST_NOISE:
        # tight groups put the knee low: at most DBSCAN_MOST_NOISE of the rows beyond eps
        eps = max(float(np.quantile(curve, 1 - DBSCAN_MOST_NOISE)), 1e-6)
        model = DBSCAN(eps=eps, min_samples=min_samples).fit(part)
    core = np.zeros(len(part), dtype=bool)
    core[model.core_sample_indices_] = True
    params = {"eps": round(eps, 4), "min_samples": min_samples, "rows": len(part)}
    return _neighbours_candidate("dbscan", params, part, model.labels_, core, eps, seed)


def _fit_hdbscan(x: np.ndarray, max_k: int, seed: int) -> Candidate:
    part = x[np.random.default_rng(seed).permutation(len(x))[:DENSITY_MOST]]
    size = max(15, len(part) // 50)
    labels = HDBSCAN(min_cluster_size=size, copy=True).fit_predict(part)
    members = part[labels >= 0]
    eps = 0.0
    if len(members) > 1:
        # within reach of a member: the OUTLIER_QUANTILE of members' nearest-member distances
        found, _ = NearestNeighbors(n_neighbors=2).fit(members).kneighbors(members)
        eps = float(np.quantile(found[:, 1], OUTLIER_QUANTILE))
    params = {"min_cluster_size": size, "rows": len(part), "eps": round(eps, 4)}
    keep = np.ones(len(part), dtype=bool)
    return _neighbours_candidate("hdbscan", params, part, labels, keep, max(eps, 1e-6), seed)


_FITTERS: dict[str, Callable[[np.ndarray, int, int], Candidate]] = {
    "kmeans": _fit_kmeans,
    "gaussian_mixture": _fit_gaussian,
    "agglomerative": _fit_agglomerative,
    "dbscan": _fit_dbscan,
    "hdbscan": _fit_hdbscan,
}
