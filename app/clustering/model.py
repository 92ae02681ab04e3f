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

The dataflow assigns every feature snapshot while a rule reads clusters, else each profile
record (``pipelines.segmentation.FeatureShard._assign``), so the live path
(``ClusterModel.follow``) keeps each customer's last ``Assignment``: a snapshot whose
``inputs`` are those of the last one is not assigned again, and under a centroid model only
the columns that changed update the squared distances to the centres (``(x' - c)^2 - (x -
c)^2`` per cluster and changed column; the top category's share of the distance is
precomputed per category). The other kinds compute the numeric part of the row and one
product with the model's numeric columns (the members', or the components' whitened side by
side), their category's part precomputed per category: with 3,000 kept members a density
model's assignment took 43% fewer instructions than with the whole row, a mixture's 24%.

A customer's first assignment under a centroid model (a new customer, or everyone after a
refit) computes the row and every distance; most first snapshots are alike (a new customer's
first view of a category: over the 100,000 events of ``bench/pipeline.py``'s shop, 8,891
first assignments had 1,532 distinct inputs), so the last ``FIRST_KEPT`` distinct inputs'
rows and distances are kept per model and copied.

Recency grows with the clock, so a customer may move with no event and no window's exit:
under a centroid model the instant is solved from the kept row and distances
(``ClusterModel.recency_move``), and the dataflow evaluates the customer then.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.clustering.columns import CATEGORY_WEIGHT, NUMERIC, Preparation, inputs, scaled
from app.profiles.keys import CLUSTER_PREFIX as CLUSTER_PREFIX  # beside the segments

OUTLIER_QUANTILE = 0.99
FIRST_KEPT = 4_096  # per model, the first assignments remembered by their inputs
_COLUMNS = range(len(NUMERIC))  # the numeric columns' places in a profile's ``inputs``


def membership(cluster_id: str) -> str:
    """The pseudo-segment a cluster's members are kept under (members set, transitions)."""
    return f"{CLUSTER_PREFIX}{cluster_id}"


def cluster_of(memberships: frozenset[str] | Sequence[str]) -> str | None:
    for name in memberships:
        if name.startswith(CLUSTER_PREFIX):
            return name[len(CLUSTER_PREFIX) :]
    return None


class Assignment:
    """A customer's assignment by one model, kept between their snapshots (derived state:
    never saved, so a restored customer is assigned afresh)."""

    __slots__ = ("distances", "index", "inputs", "model", "outlier", "row")

    def __init__(
        self,
        model: ClusterModel,
        given: tuple[Any, ...],
        index: int | None,
        outlier: bool,
        row: list[float] | None = None,
        distances: list[float] | None = None,
    ) -> None:
        self.model = model
        self.inputs = given
        self.index = index  # the cluster's index in ``model.clusters``, None: density noise
        self.outlier = outlier
        self.row = row  # centroid models: the numeric columns' scaled values
        self.distances = distances  # centroid models: the squared distance to each centre

    @property
    def cluster_id(self) -> str | None:
        return None if self.index is None else self.model.clusters[self.index].id


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
    # inputs -> (index, outlier, row, distances) of a fresh assignment (``_nearest``)
    _first: dict[tuple[Any, ...], tuple[int, bool, list[float], list[float]]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        data = self.assign_data
        if self.kind == "centroids":
            self._arrays["centers"] = [list(map(float, c.center)) for c in self.clusters]
            self._arrays["limits"] = [float(x) ** 2 for x in data["limits"]]
            self._prepare_centroids()
        elif self.kind == "gaussian":
            self._arrays["means"] = np.asarray(data["means"], dtype=float)
            self._arrays["chol"] = np.asarray(data["precisions_cholesky"], dtype=float)
            weights = np.asarray(data["weights"], dtype=float)
            log_det = np.array([np.log(np.diag(c)).sum() for c in self._arrays["chol"]])
            d = self._arrays["means"].shape[1]
            self._arrays["offset"] = np.log(weights) + log_det - 0.5 * d * math.log(2 * math.pi)
            self._arrays["limits"] = np.asarray(data["limits"], dtype=float)
            self._prepare_gaussian()
        elif self.kind == "neighbours":
            points = self._arrays["points"] = np.asarray(data["points"], dtype=float)
            self._arrays["labels"] = np.asarray(data["labels"], dtype=int)
            self._arrays["eps2"] = float(data["eps"]) ** 2
            self._arrays["norms"] = (points * points).sum(axis=1)
            self._prepare_neighbours()
        else:
            raise ValueError(f"unknown kind of cluster model {self.kind!r}")

    def _prepare_centroids(self) -> None:
        """The live path's constants: each centre's numeric part, each numeric column's
        coordinate in every centre, and per top category (and for none) each centre's squared
        distance over the category columns."""
        width = len(NUMERIC)
        centers = self._arrays["centers"]
        self._arrays["numeric"] = [center[:width] for center in centers]
        # each numeric column's coordinate in every centre, doubled: (x' - c)^2 - (x - c)^2
        # is (x' - x)(x' + x - 2c)
        self._arrays["twice_by_column"] = [
            [2 * center[j] for center in centers] for j in range(width)
        ]
        base = [sum(v * v for v in center[width:]) for center in centers]
        by_category = {
            name: [
                b - 2 * CATEGORY_WEIGHT * center[width + j] + CATEGORY_WEIGHT**2
                for b, center in zip(base, centers, strict=True)
            ]
            for j, name in enumerate(self.prep.categories)
        }
        self._arrays["category_base"] = base
        self._arrays["by_category"] = by_category

    def _prepare_gaussian(self) -> None:
        """The live path's constants (``_likeliest``): ``(x - m_k) C_k`` is ``x C_k - m_k C_k``,
        so every component's whitened offset is one product of the profile's numeric part with
        the components' numeric rows side by side, less ``m_k C_k`` and the category's rows
        (precomputed per top category, and for none)."""
        width = len(NUMERIC)
        means, chol = self._arrays["means"], self._arrays["chol"]
        side_by_side = np.concatenate(list(chol), axis=1)  # (columns, components x columns)
        shifts = np.concatenate([m @ c for m, c in zip(means, chol, strict=True)])
        self._arrays["numeric_side_by_side"] = np.ascontiguousarray(side_by_side[:width])
        self._arrays["shifts"] = shifts
        self._arrays["shifts_by_category"] = {
            name: shifts - CATEGORY_WEIGHT * side_by_side[width + j]
            for j, name in enumerate(self.prep.categories)
        }

    def _prepare_neighbours(self) -> None:
        """The live path's constants (``_nearest_member``): the kept members' numeric columns
        times -2, a row per column (the product with a profile's numeric part runs along rows as
        long as the members are many), and per top category (and for none) each member's
        ``|p|^2`` less its category column's part of ``2 p.x``."""
        width = len(NUMERIC)
        points, norms = self._arrays["points"], self._arrays["norms"]
        self._arrays["minus_twice_by_column"] = np.ascontiguousarray(-2.0 * points[:, :width].T)
        self._arrays["norms_by_category"] = {
            name: norms - 2 * CATEGORY_WEIGHT * points[:, width + j]
            for j, name in enumerate(self.prep.categories)
        }

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.clusters]

    def names(self) -> dict[str, str]:
        return {c.id: c.name for c in self.clusters}

    def assign(self, features: Mapping[str, Any]) -> tuple[str | None, bool]:
        """The profile's cluster id (None for density noise) and whether it is an outlier."""
        found = self.follow(features, None)
        return found.cluster_id, found.outlier

    def follow(self, features: Mapping[str, Any], last: Assignment | None) -> Assignment:
        """The profile's assignment, given the customer's ``last`` one (the module docstring
        says what is kept and what is computed again)."""
        given = inputs(features)
        if last is not None and last.model is self:
            if last.inputs == given:
                return last
            if self.kind == "centroids":
                return self._moved(last, given)
        if self.kind == "centroids":
            return self._nearest(given)
        if self.kind == "neighbours":
            return self._nearest_member(given)
        return self._likeliest(given)

    def _nearest(self, given: tuple[Any, ...]) -> Assignment:
        known = self._first.get(given)
        if known is not None:  # the customer's own copies: ``_moved`` changes them in place
            index, outlier, row, distances = known
            return Assignment(self, given, index, outlier, row.copy(), distances.copy())
        row = self.prep.numeric_row(given)
        top = given[-1]
        arrays = self._arrays
        extra = arrays["by_category"].get(top) if isinstance(top, str) else None
        dist = math.dist  # the numeric part's Euclidean distance, in C
        distances = [
            dist(row, center) ** 2 + d
            for center, d in zip(arrays["numeric"], extra or arrays["category_base"], strict=True)
        ]
        best_d = min(distances)
        best = distances.index(best_d)
        outlier = best_d > arrays["limits"][best]
        if len(self._first) >= FIRST_KEPT:
            self._first.clear()
        self._first[given] = (best, outlier, row.copy(), distances.copy())
        return Assignment(self, given, best, outlier, row, distances)

    def _nearest_member(self, given: tuple[Any, ...]) -> Assignment:
        """A density model's assignment (``assign_rows``'s rule) by ``|p - x|^2 = |p|^2 - 2 p.x
        + |x|^2``, with the one-hot category's part of ``p.x`` precomputed per category: one
        product of the numeric part with the members' numeric columns (2-3x fewer operations
        than with whole rows, and along rows the length of the members)."""
        numeric = np.array(self.prep.numeric_row(given))
        top = given[-1]
        arrays = self._arrays
        norms = arrays["norms_by_category"].get(top) if isinstance(top, str) else None
        squared = float(numeric @ numeric)
        if norms is None:
            norms = arrays["norms"]
        else:
            squared += CATEGORY_WEIGHT * CATEGORY_WEIGHT
        distances = norms + numeric @ arrays["minus_twice_by_column"]
        nearest = int(distances.argmin())
        if float(distances[nearest]) + squared > arrays["eps2"]:
            return Assignment(self, given, None, True)
        return Assignment(self, given, int(arrays["labels"][nearest]), False)

    def _likeliest(self, given: tuple[Any, ...]) -> Assignment:
        """A Gaussian mixture's assignment (``assign_rows``'s rule), every component's whitened
        offset from one product (``_prepare_gaussian``)."""
        arrays = self._arrays
        top = given[-1]
        shifts = arrays["shifts_by_category"].get(top) if isinstance(top, str) else None
        if shifts is None:
            shifts = arrays["shifts"]
        numeric = np.array(self.prep.numeric_row(given))
        whitened = (numeric @ arrays["numeric_side_by_side"] - shifts).reshape(
            len(self.clusters), -1
        )
        squared = (whitened * whitened).sum(axis=1)
        label = int(np.argmax(arrays["offset"] - 0.5 * squared))
        return Assignment(self, given, label, bool(squared[label] > arrays["limits"][label]))

    def _moved(self, last: Assignment, given: tuple[Any, ...]) -> Assignment:
        """``last`` (changed in place: it is the customer's own) with the columns whose
        inputs changed moved (centroid models)."""
        row, distances = last.row, last.distances
        assert row is not None
        assert distances is not None
        arrays = self._arrays
        plan, twice = self.prep.plan, arrays["twice_by_column"]
        before = last.inputs
        for j, value, was in zip(_COLUMNS, given, before, strict=False):
            if value != was:
                new = scaled(plan[j], value)
                step = new - row[j]
                if step:
                    total = new + row[j]
                    row[j] = new
                    distances[:] = [
                        d + step * (total - c) for d, c in zip(distances, twice[j], strict=True)
                    ]
        top, was = given[-1], before[-1]
        if top != was:
            table, base = arrays["by_category"], arrays["category_base"]
            now = table.get(top, base) if isinstance(top, str) else base
            then = table.get(was, base) if isinstance(was, str) else base
            if now is not then:
                distances[:] = [d + a - b for d, a, b in zip(distances, now, then, strict=True)]
        last.inputs = given
        best_d = min(distances)
        best = last.index = distances.index(best_d)
        last.outlier = best_d > arrays["limits"][best]
        return last

    def recency_move(self, last: Assignment, at: int, until: float) -> int | None:
        """The first instant after ``at`` and before ``until`` at which the customer assigned
        ``last`` (by this model, of inputs read at ``at``) is assigned otherwise (another
        cluster, or the outlier flag turned) with no input changing but recency, which grows
        1 ms per ms until its cap; None when none comes before ``until``.

        Centroid models only (None for the others, whose customers a recency moves at their
        next evaluation): along the recency column, the other columns fixed, the difference
        of two centres' squared distances is linear and the nearest centre's distance
        quadratic, so the first crossing is solved; mapped back to an instant, it is checked
        at whole milliseconds with the live path's arithmetic (``_moved``), so the move comes
        at the first millisecond that arithmetic assigns otherwise."""
        distances, row, index = last.distances, last.row, last.index
        since = last.inputs[0]  # ``rfm_recency_ms`` (the first of ``NUMERIC``)
        if distances is None or row is None or index is None or last.model is not self:
            return None
        if since is None or since.__class__ is bool or not isinstance(since, int | float):
            return None  # never ordered: the column holds its missing value, for good
        divide, _, cap, log, mean, scale = self.prep.plan[0]
        if since != since or (cap is not None and since / divide >= cap):
            return None  # at its cap: recency no longer moves the row
        x, best_d = row[0], distances[index]
        twice = self._arrays["twice_by_column"][0]
        toward = twice[index]
        first = math.inf
        for d, centre in zip(distances, twice, strict=True):
            if centre > toward:  # a centre further along recency draws nearer than ours
                crossing = x + (d - best_d) / (centre - toward)
                if crossing < first:
                    first = crossing
        # the fence: best_d + u (u + 2x - 2c) = limit, u the step along the column
        p, q = 2 * x - toward, best_d - self._arrays["limits"][index]
        discriminant = p * p - 4 * q
        if discriminant >= 0:
            root = math.sqrt(discriminant)
            for u in ((-p - root) / 2, (-p + root) / 2):
                if u > 0:
                    first = min(first, x + u)
                    break
        if first == math.inf:
            return None
        if cap is not None:
            top = ((math.log1p(cap) if log else cap) - mean) / scale
            if first > top:
                return None
        unit = first * scale + mean
        try:
            ms = (math.expm1(unit) if log else unit) * divide
        except OverflowError:
            return None
        if cap is not None:  # past the cap the row stands still: nothing to look for
            until = min(until, at + (cap * divide - since) + 1)
        guess = at + (ms - since)
        if not guess < until:
            return None
        return self._first_moved(last, at, max(at + 1, math.ceil(guess)), until)

    def _first_moved(self, last: Assignment, at: int, guess: int, until: float) -> int | None:
        """The first instant in (``at``, ``until``) at which ``last``, with recency grown by the
        time passed, is assigned otherwise by ``_moved``'s arithmetic, searched from ``guess``
        (the solved crossing: a millisecond or two off at most)."""
        distances, row = last.distances, last.row
        assert distances is not None
        assert row is not None
        plan, since = self.prep.plan[0], last.inputs[0]
        x, twice, limits = row[0], self._arrays["twice_by_column"][0], self._arrays["limits"]
        was = (last.index, last.outlier)

        def moved(instant: int) -> bool:
            new = scaled(plan, since + (instant - at))
            step, total = new - x, new + x
            then = [d + step * (total - c) for d, c in zip(distances, twice, strict=True)]
            best_d = min(then)
            best = then.index(best_d)
            return (best, best_d > limits[best]) != was

        if moved(guess):  # the first such instant is at it or before
            high, stride = guess, 1
            low = max(at, guess - 1)
            while low > at and moved(low):
                high, stride = low, stride * 2
                low = max(at, high - stride)
        else:  # after it
            low, stride = guess, 1
            high = guess + 1
            while not moved(high):
                if high >= until or stride > 2**62:  # (a column without a cap: give up)
                    return None
                low, stride = high, stride * 2
                high = low + stride
        while high - low > 1:  # ``low`` keeps the assignment, ``high`` moves it
            middle = (low + high) // 2
            if moved(middle):
                high = middle
            else:
                low = middle
        return high if high < until else None

    def scratch(self, last: Assignment) -> Assignment:
        """A copy of ``last`` (an assignment by this model) to follow a customer's future
        values with, leaving their own as it is (``_moved`` changes it in place)."""
        row = None if last.row is None else last.row.copy()
        distances = None if last.distances is None else last.distances.copy()
        return Assignment(self, last.inputs, last.index, last.outlier, row, distances)

    def forget_first(self) -> None:
        """Forget the first assignments remembered by their inputs (a benchmark measures the
        customers' own state apart from them)."""
        self._first.clear()

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
