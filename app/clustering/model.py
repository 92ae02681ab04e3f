"""A fitted cluster model as the dataflow uses it: plain data (JSON in Redis, never a pickle, so
whoever can write Redis cannot run code in the dataflow) and the assignment of one profile.

How a profile is assigned, by the kind of model:

- ``centroids`` (k-means, mini-batch k-means, agglomerative): the nearest centroid. The profile
  is an outlier when its distance to that centroid is beyond the cluster's fence: Tukey's
  far-out fence (Q3 + 3 x IQR) of its training members' distances, which the outliers among
  the members barely move.
- ``gaussian`` (Gaussian mixture): the component of highest posterior; an outlier when its
  Mahalanobis distance to that component is beyond the component's fence, as above.
- ``neighbours`` (DBSCAN, HDBSCAN: no ``predict``): the cluster of the nearest kept member
  (DBSCAN's core samples, HDBSCAN's clustered members) within ``eps``; beyond ``eps`` of every
  one the profile is an outlier and in no cluster (density noise).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.clustering.columns import Preparation
from app.profiles.keys import CLUSTER_PREFIX as CLUSTER_PREFIX  # beside the segments

OUTLIER_QUANTILE = 0.99


def membership(cluster_id: str) -> str:
    """The pseudo-segment a cluster's members are kept under (members set, transitions)."""
    return f"{CLUSTER_PREFIX}{cluster_id}"


def cluster_of(memberships: frozenset[str] | Sequence[str]) -> str | None:
    for name in memberships:
        if name.startswith(CLUSTER_PREFIX):
            return name[len(CLUSTER_PREFIX) :]
    return None


@dataclass
class Cluster:
    id: str
    name: str
    size: int  # members in the fitting sample
    center: list[float]  # scaled
    named_by: str = "auto"  # "auto" | "marketer"

    def shown(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "size": self.size,
            "center": self.center,
            "named_by": self.named_by,
        }


@dataclass
class ClusterModel:
    version: int
    fitted_at: int  # ms
    algorithm: str
    params: dict[str, Any]
    prep: Preparation
    kind: str  # "centroids" | "gaussian" | "neighbours"
    clusters: list[Cluster]
    assign_data: dict[str, Any]
    quality: dict[str, Any] = field(default_factory=dict)
    _arrays: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        data = self.assign_data
        if self.kind == "centroids":
            self._arrays["centers"] = [list(map(float, c.center)) for c in self.clusters]
            self._arrays["limits"] = [float(x) ** 2 for x in data["limits"]]
        elif self.kind == "gaussian":
            self._arrays["means"] = np.asarray(data["means"], dtype=float)
            self._arrays["chol"] = np.asarray(data["precisions_cholesky"], dtype=float)
            weights = np.asarray(data["weights"], dtype=float)
            log_det = np.array([np.log(np.diag(c)).sum() for c in self._arrays["chol"]])
            d = self._arrays["means"].shape[1]
            self._arrays["offset"] = np.log(weights) + log_det - 0.5 * d * math.log(2 * math.pi)
            self._arrays["limits"] = np.asarray(data["limits"], dtype=float)
        elif self.kind == "neighbours":
            self._arrays["points"] = np.asarray(data["points"], dtype=float)
            self._arrays["labels"] = np.asarray(data["labels"], dtype=int)
            self._arrays["eps2"] = float(data["eps"]) ** 2
        else:
            raise ValueError(f"unknown kind of cluster model {self.kind!r}")

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.clusters]

    def names(self) -> dict[str, str]:
        return {c.id: c.name for c in self.clusters}

    def assign(self, features: Mapping[str, Any]) -> tuple[str | None, bool]:
        """The profile's cluster id (None for density noise) and whether it is an outlier."""
        index, outlier = self.assign_row(self.prep.row(features))
        return (None if index is None else self.clusters[index].id), outlier

    def assign_row(self, row: Sequence[float]) -> tuple[int | None, bool]:
        if self.kind == "centroids":
            best, best_d = 0, math.inf
            for i, center in enumerate(self._arrays["centers"]):
                d = 0.0
                for a, b in zip(row, center, strict=True):
                    d += (a - b) * (a - b)
                if d < best_d:
                    best, best_d = i, d
            return best, best_d > self._arrays["limits"][best]
        x = np.asarray(row, dtype=float)
        if self.kind == "gaussian":
            labels, outliers = self.assign_rows(x[None, :])
            return int(labels[0]), bool(outliers[0])
        distances = ((self._arrays["points"] - x) ** 2).sum(axis=1)
        nearest = int(np.argmin(distances))
        if distances[nearest] > self._arrays["eps2"]:
            return None, True
        return int(self._arrays["labels"][nearest]), False

    def assign_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Many scaled rows at once: labels (-1 for noise) and outlier flags."""
        if self.kind == "centroids":
            centers = np.asarray(self._arrays["centers"], dtype=float)
            d2 = ((rows[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
            labels = d2.argmin(axis=1)
            limits = np.asarray(self._arrays["limits"])
            return labels, d2[np.arange(len(rows)), labels] > limits[labels]
        if self.kind == "gaussian":
            labels = self._log_densities(rows).argmax(axis=1)
            distances = self.mahalanobis2(rows, labels)
            return labels, distances > self._arrays["limits"][labels]
        labels = np.full(len(rows), -1)
        outliers = np.ones(len(rows), dtype=bool)
        points, kept = self._arrays["points"], self._arrays["labels"]
        for start in range(0, len(rows), 512):
            chunk = rows[start : start + 512]
            d2 = ((chunk[:, None, :] - points[None, :, :]) ** 2).sum(axis=2)
            nearest = d2.argmin(axis=1)
            near = d2[np.arange(len(chunk)), nearest] <= self._arrays["eps2"]
            labels[start : start + len(chunk)] = np.where(near, kept[nearest], -1)
            outliers[start : start + len(chunk)] = ~near
        return labels, outliers

    def mahalanobis2(self, rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Each row's squared Mahalanobis distance to its component."""
        means, chol = self._arrays["means"], self._arrays["chol"]
        y = np.einsum("nd,nde->ne", rows - means[labels], chol[labels])
        found: np.ndarray = (y * y).sum(axis=1)
        return found

    def _log_densities(self, rows: np.ndarray) -> np.ndarray:
        """log(weight_k) + log N(row | mean_k, cov_k) for every row and component."""
        means, chol = self._arrays["means"], self._arrays["chol"]
        out = np.empty((len(rows), len(means)))
        for k in range(len(means)):
            y = (rows - means[k]) @ chol[k]
            out[:, k] = -0.5 * (y * y).sum(axis=1)
        found: np.ndarray = out + self._arrays["offset"]
        return found

    def centroid(self, cluster: Cluster) -> dict[str, float]:
        return self.prep.original(cluster.center)

    def shown(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "fitted_at": self.fitted_at,
            "algorithm": self.algorithm,
            "params": self.params,
            "prep": self.prep.shown(),
            "kind": self.kind,
            "clusters": [c.shown() for c in self.clusters],
            "assign": self.assign_data,
            "quality": self.quality,
        }

    @classmethod
    def from_shown(cls, shown: Mapping[str, Any]) -> ClusterModel:
        return cls(
            version=int(shown["version"]),
            fitted_at=int(shown["fitted_at"]),
            algorithm=str(shown["algorithm"]),
            params=dict(shown["params"]),
            prep=Preparation.from_shown(shown["prep"]),
            kind=str(shown["kind"]),
            clusters=[
                Cluster(
                    str(c["id"]),
                    str(c["name"]),
                    int(c["size"]),
                    [float(x) for x in c["center"]],
                    str(c.get("named_by", "auto")),
                )
                for c in shown["clusters"]
            ],
            assign_data=dict(shown["assign"]),
            quality=dict(shown.get("quality", {})),
        )
