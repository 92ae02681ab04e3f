"""The clustering stage's fitting, on generated customers of known personas (no I/O)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture

from app.clustering.columns import NUMERIC
from app.clustering.fitting import (
    MIN_PROFILES,
    Candidate,
    TooFewProfiles,
    choose,
    fit,
    frame,
    preparation_pipeline,
    prepare,
)
from app.clustering.identity import distinct_names, match, name_for
from tests.cluster_personas import PERSONAS, features_of, outliers, population
from tests.factories import recency_model


def test_the_live_preparation_is_the_fitted_scikit_learn_pipeline() -> None:
    customers = population(600, seed=3)
    rng = random.Random(4)
    odd = [features_of("browsers", rng) for _ in range(5)]
    odd[0]["top_category_30d"] = "never-seen-category"  # unknown: no category column set
    odd[1]["rfm_monetary_90d"] = float("nan")
    odd[2]["cart_value"] = "12"  # not a number: missing
    odd[3]["interaction_rate_30d"] = 40.0  # beyond the cap
    profiles = [c.features for c in customers]
    prep, scaled = prepare(profiles)
    pipeline = preparation_pipeline(prep.categories).fit(frame(profiles))
    for features in [*profiles[:50], *odd]:
        expected = pipeline.transform(frame([features]))[0]
        assert prep.row(features) == pytest.approx(list(expected), abs=1e-9)
    assert np.allclose(scaled[:50], [prep.row(f) for f in profiles[:50]])
    assert prep.names[: len(NUMERIC)] == tuple(c.name for c in NUMERIC)


def test_the_chosen_model_recovers_well_separated_personas() -> None:
    customers = population(3_000, seed=5)
    found = fit([c.features for c in customers])
    model = found.chosen.model(found.prep)
    labels = [model.assign(c.features)[0] or "noise" for c in customers]
    assert adjusted_rand_score([c.persona for c in customers], labels) >= 0.8
    assert {c.algorithm for c in found.candidates} == {
        "kmeans", "gaussian_mixture", "agglomerative", "dbscan", "hdbscan",
    }  # fmt: skip
    for candidate in found.candidates:
        if candidate.eligible:
            assert -1 <= candidate.quality["silhouette"] <= 1
            assert candidate.quality["davies_bouldin"] >= 0
            assert candidate.fit_seconds > 0


@pytest.mark.parametrize("family", ["kmeans", "gaussian_mixture", "hdbscan", "dbscan"])
def test_injected_outliers_are_flagged(family: str) -> None:
    ordinary = population(3_000, seed=6)
    strange = outliers(40, seed=7)
    found = fit([c.features for c in ordinary + strange], families=[family])
    model = found.chosen.model(found.prep)
    flagged = [model.assign(c.features)[1] for c in strange]
    false_alarms = [model.assign(c.features)[1] for c in ordinary]
    assert sum(flagged) / len(flagged) >= 0.9
    assert sum(false_alarms) / len(false_alarms) <= 0.03


def test_the_mixture_assigns_as_scikit_learn_predicts() -> None:
    customers = population(1_500, seed=8)
    found = fit([c.features for c in customers], families=["gaussian_mixture"])
    model = found.chosen.model(found.prep)
    rows = np.asarray([found.prep.row(c.features) for c in customers])
    k = found.chosen.params["k"]
    reference = GaussianMixture(
        n_components=k, covariance_type="full", reg_covar=1e-4, random_state=0
    ).fit(found.train)
    ours, _ = model.assign_rows(rows)
    # the same partition (the labels' numbers may differ)
    assert adjusted_rand_score(reference.predict(rows), ours) > 0.99


def test_too_few_profiles_are_refused_saying_how_many_are_needed() -> None:
    with pytest.raises(
        TooFewProfiles, match=f"12 profiles: a cluster fit needs at least {MIN_PROFILES}"
    ):
        fit([c.features for c in population(12)])


def _judged(
    name: str, silhouette: float, db: float, eligible: bool = True, kind: str = "centroids"
) -> Candidate:
    candidate = Candidate(name, {}, kind, [[0.0]], [1], {"limits": [1.0]}, 0.1)
    candidate.quality = {"silhouette": silhouette, "davies_bouldin": db}
    candidate.eligible = eligible
    return candidate


def test_the_choice_is_the_smallest_sum_of_ranks_ties_to_the_higher_silhouette() -> None:
    a = _judged("a", 0.70, 0.40)  # ranks 1 + 2
    b = _judged("b", 0.60, 0.30)  # ranks 2 + 1
    c = _judged("c", 0.50, 0.90)  # ranks 3 + 3
    noisy = _judged("noisy", 0.99, 0.01, eligible=False)
    assert choose([c, b, a, noisy]).algorithm == "a"
    assert choose([c, b]).algorithm == "b"
    with pytest.raises(TooFewProfiles):
        choose([noisy])


def test_a_centroid_model_close_to_a_better_density_or_mixture_model_is_chosen() -> None:
    dense = _judged("dbscan", 0.50, 0.88, kind="neighbours")
    close = _judged("kmeans", 0.48, 0.93)  # 0.02 lower, 6% higher: close
    assert choose([dense, close]).algorithm == "kmeans"
    far = _judged("kmeans", 0.40, 0.93)  # 0.10 lower: not close
    assert choose([dense, far]).algorithm == "dbscan"
    spread = _judged("kmeans", 0.49, 1.20)  # Davies-Bouldin 36% higher: not close
    assert choose([dense, spread]).algorithm == "dbscan"
    mixture = _judged("gaussian_mixture", 0.70, 0.40, kind="gaussian")
    assert choose([mixture, _judged("agglomerative", 0.66, 0.45)]).algorithm == "agglomerative"


def test_names_say_what_sets_a_cluster_apart() -> None:
    customers = population(2_000, seed=9)
    found = fit([c.features for c in customers], families=["kmeans"])
    model = found.chosen.model(found.prep)
    names = {}
    for index, cluster in enumerate(model.clusters):
        members = [c.persona for c in customers if model.assign(c.features)[0] == cluster.id]
        persona = max(set(members), key=members.count)
        names[persona] = name_for(found.chosen.centers[index], found.prep.categories)
    assert set(names) == set(PERSONAS)
    assert len(set(names.values())) == len(PERSONAS)
    assert names["big_spenders"].split()[0] in {"Frequent", "High-spending", "Recent"}
    assert names["browsers"].split()[0] in {"Deep-browsing", "Long-session"}
    assert names["cart_holders"].split()[0] in {"Cart-heavy", "Many-item", "Engaged"}
    assert distinct_names(["A", "B", "A"]) == ["A", "B", "A 2"]
    assert name_for([0.0] * len(NUMERIC), []) == "Typical customers"


def test_matching_pairs_clusters_by_their_members() -> None:
    old = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, -1])
    new = np.array([1, 1, 1, 0, 0, 2, 3, 3, 3, 3])  # old 0 -> new 1, old 1 -> new 0, 2 -> 3
    found = match(["c1", "c2", "c3"], old, new, 4)
    assert found.pairs == {1: "c1", 0: "c2", 3: "c3"}
    assert found.retired == []
    apart = match(["c1", "c2"], np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]), 2)
    assert apart.pairs in ({0: "c1", 1: "c2"}, {1: "c1", 0: "c2"})  # Jaccard 1/3 >= 0.3


@pytest.mark.parametrize("family", ["kmeans", "gaussian_mixture", "dbscan", "hdbscan"])
def test_the_live_assignment_follows_a_customer_as_the_whole_row_would(family: str) -> None:
    """A customer's snapshots change a few columns at a time (the last session's views and minutes,
    the time since an order, the cart, the top category); assigned one after another from the
    last assignment, each lands where the whole row lands (``assign_rows``)."""
    customers = population(1_200, seed=12)
    found = fit([c.features for c in customers], families=[family])
    model = found.chosen.model(found.prep)
    rng = random.Random(13)
    changes: list[tuple[str, Callable[[Any], Any]]] = [
        ("recent_visit_products_viewed", lambda v: (v or 0) + rng.randint(1, 4)),
        ("recent_visit_duration_ms", lambda v: (v or 0) + rng.randint(10_000, 600_000)),
        ("rfm_recency_ms", lambda v: None if rng.random() < 0.1 else (v or 0) + 3_600_000),
        ("cart_value", lambda v: 0 if rng.random() < 0.3 else (v or 0) + rng.uniform(5, 200)),
        ("interaction_rate_30d", lambda v: rng.choice([None, 0.0, rng.uniform(0, 2), 9.0])),
        ("top_category_30d", lambda v: rng.choice([None, "fashion", "home", "toys", 7])),
        ("rfm_monetary_90d", lambda v: rng.choice([None, float("nan"), rng.uniform(0, 3e3)])),
    ]
    snapshots, follows, labels = [], [], []
    for customer in customers[:60]:
        features, last = dict(customer.features), None
        for _ in range(25):
            for name, change in rng.sample(changes, rng.randint(0, 3)):
                features[name] = change(features[name])
            last = model.follow(features, last)
            snapshots.append(dict(features))
            follows.append((last.index, last.outlier))
            labels.append(model.assign(features))
    expected_labels, expected_outliers = model.assign_rows(
        np.asarray([model.prep.row(f) for f in snapshots])
    )
    expected = [
        (None if label < 0 else int(label), bool(outlier))
        for label, outlier in zip(expected_labels, expected_outliers, strict=True)
    ]
    assert follows == expected
    assert labels == [
        (None if index is None else model.clusters[index].id, outlier)
        for index, outlier in expected
    ]
    moved = {index for index, _ in follows}
    assert len(moved) >= 2  # the walk crossed clusters: the updates were put to the test


def test_customers_alike_at_first_each_follow_their_own_way() -> None:
    """New customers' first snapshots are mostly alike (one view of a category), so a first
    assignment is remembered by its inputs; each customer still moves on from their own copy:
    one's next snapshots leave the others, and later newcomers, where the whole row puts them."""
    customers = population(600, seed=21)
    found = fit([c.features for c in customers], families=["kmeans"])
    model = found.chosen.model(found.prep)
    first = dict(customers[0].features)

    def whole_row(features: dict[str, Any]) -> tuple[int, bool]:
        labels, outliers = model.assign_rows(np.asarray([model.prep.row(features)]))
        return int(labels[0]), bool(outliers[0])

    walks = []
    for other in customers[1:40]:  # each starts alike, then becomes another of the population
        last = model.follow(first, None)
        assert (last.index, last.outlier) == whole_row(first)
        walks.append((last, dict(other.features)))
    went = set()
    for last, features in walks:
        followed = model.follow(features, last)
        assert (followed.index, followed.outlier) == whole_row(features)
        went.add(followed.index)
    for views in range(1, 40):  # later newcomers, alike at first too, then one column moves
        newcomer = model.follow(first, None)
        assert (newcomer.index, newcomer.outlier) == whole_row(first)
        features = {**first, "recent_visit_products_viewed": views}
        followed = model.follow(features, newcomer)
        assert (followed.index, followed.outlier) == whole_row(features)
        assert followed.distances == pytest.approx(model.follow(features, None).distances)
    assert len(went) >= 2  # they went apart: the copies were put to the test


@pytest.mark.parametrize("family", ["kmeans", "gaussian_mixture"])
def test_a_move_by_recency_alone_is_solved_to_the_millisecond(family: str) -> None:
    """Recency grows 1 ms per ms: under a centroid model the first instant a customer's
    assignment changes by it alone is solved (``ClusterModel.recency_move``), and is the
    first millisecond the whole row is assigned otherwise (found here by a scan every six
    hours and a bisection of the step that changed it). Other kinds answer None."""
    found = fit([c.features for c in population(800, seed=5)], families=[family], max_k=4)
    model = found.chosen.model(found.prep, version=1)
    day, at = 86_400_000, 1_767_225_600_000
    moves = solved = 0
    for customer in population(300, seed=9):
        features = customer.features
        if features.get("rfm_recency_ms") is None:
            continue

        def assigned(instant: int, features: dict[str, Any] = features) -> tuple[Any, ...]:
            grown = {**features, "rfm_recency_ms": features["rfm_recency_ms"] + instant - at}
            return model.assign(grown)

        move = model.recency_move(model.follow(features, None), at, math.inf)
        if model.kind != "centroids":
            assert move is None
            continue
        first: int | None = None
        for step in range(1, 4 * 400):  # recency stops at 365 days
            if assigned(at + step * day // 4) != assigned(at):
                low, high = at + (step - 1) * day // 4, at + step * day // 4
                while high - low > 1:
                    middle = (low + high) // 2
                    low, high = (
                        (low, middle) if assigned(middle) != assigned(at) else (middle, high)
                    )
                first = high
                break
        assert move == first
        moves += first is not None
        solved += 1
        if first is not None:  # and not when the search must stop before it
            assert model.recency_move(model.follow(features, None), at, first) is None
    if model.kind == "centroids":
        assert solved >= 100
        assert moves >= 20  # customers did move


def test_recency_stops_at_its_cap_and_so_does_the_search_for_its_move() -> None:
    """Recency is capped at 365 days: a crossing the solution puts beyond it never comes (and
    is not searched for), one before it comes at its millisecond."""
    day, at = 86_400_000, 1_767_225_600_000
    ordered = {"rfm_recency_ms": 0, "rfm_frequency_90d": 1, "rfm_monetary_90d": 50.0}
    far = recency_model(1, 300.0, 2_000.0)  # halfway (in log1p) is about 773 days on
    assert far.recency_move(far.follow(ordered, None), at, math.inf) is None
    near = recency_model(1, 0.0, 100.0)  # about 9 days on
    move = near.recency_move(near.follow(ordered, None), at, math.inf)
    assert move is not None
    assert near.assign({**ordered, "rfm_recency_ms": move - at - 1})[0] == "c0"
    assert near.assign({**ordered, "rfm_recency_ms": move - at})[0] == "c1"
    assert math.expm1(math.log1p(100.0) / 2) * day == pytest.approx(move - at, abs=1)
    capped = {**ordered, "rfm_recency_ms": 400 * day}  # at the cap already: no move by it
    assert near.recency_move(near.follow(capped, None), at, math.inf) is None
