"""What people see of a cluster model, without I/O: what sets each cluster apart, the 2-D
picture, and the names and requests the admin API accepts."""

from __future__ import annotations

from typing import get_args

import pytest
from pydantic import ValidationError

from app.api.clusters import Family, RefitIn, RenameIn
from app.clustering.fitting import FAMILIES, fit
from app.clustering.model import ClusterModel
from app.clustering.picture import project
from app.clustering.summary import distinguishing
from tests.cluster_personas import Customer, population


@pytest.fixture(scope="module")
def customers() -> list[Customer]:
    return population(1_000, seed=41)


@pytest.fixture(scope="module")
def model(customers: list[Customer]) -> ClusterModel:
    found = fit([c.features for c in customers], families=["kmeans"])
    return found.chosen.model(found.prep, version=3)


def cluster_of(model: ClusterModel, customers: list[Customer], persona: str) -> str:
    (found,) = {model.assign(c.features)[0] for c in customers if c.persona == persona}
    assert found is not None
    return found


def test_what_sets_a_cluster_apart_is_in_the_features_own_units(model, customers):
    by_id = {c.id: c for c in model.clusters}
    spenders = distinguishing(model, by_id[cluster_of(model, customers, "big_spenders")])
    money = next(t for t in spenders if t.column == "monetary_90d")
    assert money.high
    assert 400 <= float(money.value) <= 2_000  # the persona's revenue range
    assert money.typical is not None
    assert money.typical < 400
    assert money.shown().startswith("monetary_90d ")
    assert "↑" in money.shown()
    assert spenders[-1].value == "electronics"
    assert spenders[-1].shown() == "top category electronics (100%)"
    numeric = [t for t in spenders if t.column != "top_category"]
    assert [t.standing for t in numeric] == sorted((t.standing for t in numeric), reverse=True)
    assert len(numeric) <= 3
    lapsed = distinguishing(model, by_id[cluster_of(model, customers, "lapsed")])
    assert all(t.column != "top_category" for t in lapsed)  # they have none in common
    assert any(not t.high for t in lapsed)


def test_the_picture_holds_every_sampled_profile_once_coloured_by_its_cluster(model, customers):
    shown = project(model, [c.features for c in customers])
    assert shown["version"] == 3
    assert [s["id"] for s in shown["series"]] == [*model.ids, None]  # outliers last
    assert sum(len(s["x"]) for s in shown["series"]) == len(customers)
    assert all(len(s["x"]) == len(s["y"]) for s in shown["series"])
    first, second = shown["explained"]
    assert first >= second > 0
    assert first + second <= 1
    # the personas are apart in the picture too: a point lies nearer its own cluster's
    # points' centre than any other's
    centres = {
        s["id"]: (sum(s["x"]) / len(s["x"]), sum(s["y"]) / len(s["y"]))
        for s in shown["series"]
        if s["id"] and s["x"]
    }
    assert len(centres) == 4
    near = total = 0
    for s in shown["series"][:-1]:
        for x, y in zip(s["x"], s["y"], strict=True):
            nearest = min(
                centres, key=lambda i: (centres[i][0] - x) ** 2 + (centres[i][1] - y) ** 2
            )
            near += nearest == s["id"]
            total += 1
    assert near / total >= 0.95
    assert project(model, [c.features for c in customers[:2]])["series"] == []


def test_the_api_accepts_the_families_fitting_knows_and_printable_names():
    assert set(get_args(Family)) == set(FAMILIES)
    assert RefitIn().algorithms == list(FAMILIES)
    assert RenameIn(name="  VIP shoppers \t").name == "VIP shoppers"
    assert RenameIn(name="Familie 👨\u200d👩\u200d👧").name.endswith("👧")  # joiners are fine
    for bad in ("", "   ", "x" * 101, "a\nb", "bell\u0007", "flip\u202e", "\ud800"):
        with pytest.raises(ValidationError):
            RenameIn(name=bad)
