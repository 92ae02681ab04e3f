"""What sets each cluster apart, for people (the UI's clusters page, ``segflow cluster show``):
the columns where its centre stands at least ``identity.DISTINCT`` standard deviations from
the population's mean, furthest first, in the columns' own units next to the typical
customer's value; and its most common top category when most members share it."""

from __future__ import annotations

from dataclasses import dataclass

from app.clustering.columns import NUMERIC_NAMES
from app.clustering.identity import DISTINCT
from app.clustering.model import Cluster, ClusterModel

MOST = 3
CATEGORY_SHARE = 0.5


@dataclass(frozen=True)
class Trait:
    column: str  # a column of the feature matrix (``columns``), or "top_category"
    value: float | str  # the cluster centre's, in the column's unit (or the category)
    typical: float | None  # the population's centre (its mean on the scaled axis)
    high: bool  # above the typical value (a category: True)
    standing: float  # standard deviations from the mean (a category: its share of members)

    def shown(self) -> str:
        if isinstance(self.value, str):
            return f"top category {self.value} ({self.standing:.0%})"
        arrow = "↑" if self.high else "↓"
        # + 0.0: a centre's -0.0 reads 0
        return f"{self.column} {self.value + 0.0:,.3g} {arrow} (typical {self.typical or 0.0:,.3g})"


def distinguishing(model: ClusterModel, cluster: Cluster, *, most: int = MOST) -> list[Trait]:
    """The cluster's traits that differ from the population, furthest first."""
    centre = model.prep.original(cluster.center)
    typical = model.prep.original([0.0] * model.prep.width)
    found = [
        Trait(name, centre[name], typical[name], z > 0, abs(z))
        for name, z in zip(NUMERIC_NAMES, cluster.center, strict=False)
        if abs(z) >= DISTINCT
    ]
    found.sort(key=lambda trait: -trait.standing)
    traits = found[:most]
    shares = {name: centre[f"category={name}"] for name in model.prep.categories}
    if shares:
        top = max(shares, key=lambda name: shares[name])
        if shares[top] >= CATEGORY_SHARE:
            traits.append(Trait("top_category", top, None, True, shares[top]))
    return traits
