"""The stream clusterer's learning (no I/O): seeded by a batch fit, it follows a drifting
population, forgets at the rate its memory says, and leaves outliers out."""

from __future__ import annotations

import random

import numpy as np
import pytest

from app.clustering.columns import inputs
from app.clustering.fitting import fit
from app.clustering.model import ClusterModel
from app.clustering.stream import StreamClusterer
from tests.cluster_personas import PERSONAS, features_of, outliers, population


def _seeded(seed: int = 20) -> tuple[ClusterModel, dict[str, int]]:
    """A k-means model of the personas, and each persona's cluster (by index)."""
    customers = population(2_000, seed=seed)
    found = fit([c.features for c in customers], families=["kmeans"])
    model = found.chosen.model(found.prep, version=1)
    home: dict[str, int] = {}
    for persona in PERSONAS:
        labels = [model.follow(c.features, None).index for c in customers if c.persona == persona]
        most = max(set(labels), key=labels.count)
        assert most is not None
        home[persona] = most
    assert len(set(home.values())) == len(PERSONAS)
    return model, home


def _rows(clusterer: StreamClusterer, count: int, rng: random.Random, grown: float) -> np.ndarray:
    personas = list(PERSONAS)
    raw = [list(inputs(features_of(personas[i % 4], rng, grown=grown))) for i in range(count)]
    return clusterer.prepared(raw)


def _persona_means(clusterer: StreamClusterer, grown: float) -> dict[str, np.ndarray]:
    rng = random.Random(21)
    return {
        persona: clusterer.prepared(
            [list(inputs(features_of(persona, rng, grown=grown))) for _ in range(2_000)]
        ).mean(axis=0)
        for persona in PERSONAS
    }


def test_the_centres_follow_a_drifting_population() -> None:
    model, home = _seeded()
    clusterer = StreamClusterer(model, memory=2_000)
    assert np.allclose(clusterer.centers, [c.center for c in model.clusters])  # seeded as is
    drifted = _persona_means(clusterer, grown=4.0)
    before = {p: float(np.linalg.norm(clusterer.centers[i] - drifted[p])) for p, i in home.items()}
    rng = random.Random(22)
    for _ in range(40):  # 40 mini-batches of 500 drifted snapshots: 5 memories a centre
        clusterer.learn(_rows(clusterer, 500, rng, grown=4.0))
    after = {p: float(np.linalg.norm(clusterer.centers[i] - drifted[p])) for p, i in home.items()}
    for persona in ("big_spenders", "browsers", "cart_holders"):  # "lapsed" does not grow
        assert before[persona] > 0.3, before
        assert after[persona] < 0.25 * before[persona], (before, after)
    # each persona is still the nearest of its own centre: the clusters kept their places
    for persona, index in home.items():
        distances = np.linalg.norm(clusterer.centers - drifted[persona], axis=1)
        assert int(distances.argmin()) == index


def test_the_memory_bounds_the_weight_of_the_past() -> None:
    model, home = _seeded()
    rng = random.Random(23)
    moved = {}
    for memory in (500, 50_000):
        clusterer = StreamClusterer(model, memory=memory)
        clusterer.learn(_rows(clusterer, 20_000, random.Random(24), grown=1.0))  # a long past
        drifted = _persona_means(clusterer, grown=4.0)
        start = float(np.linalg.norm(clusterer.centers[home["browsers"]] - drifted["browsers"]))
        for _ in range(8):
            clusterer.learn(_rows(clusterer, 500, rng, grown=4.0))
        end = float(np.linalg.norm(clusterer.centers[home["browsers"]] - drifted["browsers"]))
        moved[memory] = 1 - end / start
    # a short memory follows the drift; a long one stays with the past
    assert moved[500] > 0.6, moved
    assert moved[50_000] < 0.1, moved


@pytest.mark.parametrize("family", ["gaussian_mixture", "hdbscan"])
def test_any_family_seeds_it_and_outliers_pull_no_harder_than_the_fence(family: str) -> None:
    customers = population(2_000, seed=25)
    found = fit([c.features for c in customers], families=[family])
    model = found.chosen.model(found.prep, version=1)
    clusterer = StreamClusterer(model, memory=1_000)
    rng = random.Random(26)
    recent = _rows(clusterer, 3_000, rng, grown=1.0)
    clusterer.model_of(recent)  # fences from the recent rows
    strange = clusterer.prepared([list(inputs(c.features)) for c in outliers(200, seed=27)])
    centers = clusterer.centers.copy()
    assert clusterer.learn(strange) >= 190  # beyond the fences
    # as if on the fences: 200 rows against a memory of 1,000 a centre move it a fraction of
    # a fence (unclipped, points tens of units away would have dragged it by units)
    moved = np.linalg.norm(clusterer.centers - centers, axis=1)
    assert moved.max() < 0.5 * max(clusterer.limits), (moved, clusterer.limits)
    judged = clusterer.model_of(recent)
    assert judged.quality["silhouette"] > 0.5
    assert judged.outliers.mean() < 0.05
