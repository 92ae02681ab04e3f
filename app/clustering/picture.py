"""The clusters in two dimensions, for the admin UI: a sample of profiles projected onto the
first two principal components of the model's scaled columns (scikit-learn's PCA), each point
marked with the cluster the model assigns it, outliers apart.

It is computed once per model version (a SCAN of the profiles, ``store.sample_profiles``) and
kept in Redis for every page and API process; it holds coordinates and cluster ids only, no
customer ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson
import redis
from sklearn.decomposition import PCA

from app.clustering import store
from app.clustering.model import ClusterModel

PICTURE_KEY = "clusters:picture"
POINTS = 400
KEPT_S = 7 * 86_400  # a model older than a week is refitted on any schedule but "never"


def project(model: ClusterModel, profiles: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The profiles as 2-D points, in one series per cluster (``id``) and one of outliers
    (``id`` None): ``{"version", "explained": [share of the variance per axis], "series":
    [{"id", "x", "y"}]}``."""
    shown: dict[str, Any] = {"version": model.version, "explained": [], "series": []}
    if len(profiles) < 3:
        return shown
    rows = np.asarray([model.prep.row(features) for features in profiles], dtype=float)
    pca = PCA(n_components=2, random_state=0)
    points = pca.fit_transform(rows)
    labels, outliers = model.assign_rows(rows)
    shown["explained"] = [round(float(share), 4) for share in pca.explained_variance_ratio_]
    wanted = [(cluster.id, (labels == i) & ~outliers) for i, cluster in enumerate(model.clusters)]
    for cluster_id, chosen in [*wanted, (None, outliers)]:
        shown["series"].append(
            {
                "id": cluster_id,
                "x": [round(float(v), 3) for v in points[chosen, 0]],
                "y": [round(float(v), 3) for v in points[chosen, 1]],
            }
        )
    return shown


def picture(client: redis.Redis, model: ClusterModel, *, points: int = POINTS) -> dict[str, Any]:
    """The model's picture (``project``), from Redis when this version's was drawn already.
    A batch job's read the first time (it scans every profile): call it from a thread."""
    raw = client.get(PICTURE_KEY)
    if raw is not None:
        cached: dict[str, Any] = orjson.loads(raw)
        if cached.get("version") == model.version:
            return cached
    _, profiles = store.sample_profiles(client, points, seed=model.version)
    shown = project(model, profiles)
    client.set(PICTURE_KEY, orjson.dumps(shown), ex=KEPT_S)
    return shown
