"""Cluster ids that last and names that read.

**Ids.** A refit's clusters are matched to the current model's by their members: both models
assign the same rows (the new fit's training and held-back sample), and the matching that
maximises the total overlap (the Hungarian method on the contingency table) pairs them. A new
cluster keeps the id (and a marketer's name) of its pair when they share at least
``MIN_JACCARD`` of their members (Jaccard index); other new clusters get fresh ids, and old
clusters left unpaired are retired.

**Names.** A cluster is named by what sets it apart from the population: its centre's columns
with the largest standardised difference from the mean (the columns are standardised, so a
centre's coordinates are those differences), at least ``DISTINCT`` away. The first gives an
adjective, the second a noun ("Frequent big spenders", "Cart-heavy browsers"); a cluster that
differs in nothing is "Typical customers". Equal names get a number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.clustering.columns import NUMERIC_NAMES

MIN_JACCARD = 0.3
DISTINCT = 0.5

# column: (adjective when high, noun when high, adjective when low, noun when low)
_WORDS: dict[str, tuple[str, str, str, str]] = {
    "recency_days": ("lapsed", "lapsed buyers", "recent", "recent buyers"),
    "frequency_90d": ("frequent", "repeat buyers", "rarely buying", "non-buyers"),
    "monetary_90d": ("high-spending", "big spenders", "low-spending", "bargain hunters"),
    "browsing_depth": ("deep-browsing", "browsers", "glancing", "glancers"),
    "session_minutes": ("long-session", "lingerers", "brief", "quick visitors"),
    "interaction_rate": ("engaged", "cart fillers", "passive", "window shoppers"),
    "cart_value": ("cart-heavy", "cart holders", "empty-cart", "empty-cart visitors"),
    "cart_items": ("many-item", "basket builders", "few-item", "light baskets"),
}


@dataclass(frozen=True)
class Matching:
    pairs: dict[int, str]  # new cluster index -> the old id it keeps
    retired: list[str]  # old ids no new cluster kept


def match(
    old_ids: Sequence[str], old_labels: np.ndarray, new_labels: np.ndarray, new_count: int
) -> Matching:
    """Pair new clusters with old ones by the rows both assigned (labels < 0: no cluster)."""
    # here, not at the top: the names (``DISTINCT``, ``name_for``) are read where a refit's
    # scikit-learn and SciPy are not loaded (the command line, the API), and SciPy takes 0.4 s
    from scipy.optimize import linear_sum_assignment

    if not old_ids:
        return Matching({}, [])
    both = (old_labels >= 0) & (new_labels >= 0)
    table = np.zeros((new_count, len(old_ids)), dtype=float)
    np.add.at(table, (new_labels[both], old_labels[both]), 1.0)
    new_sizes = np.bincount(new_labels[new_labels >= 0], minlength=new_count)
    old_sizes = np.bincount(old_labels[old_labels >= 0], minlength=len(old_ids))
    union = new_sizes[:, None] + old_sizes[None, :] - table
    jaccard = np.divide(table, union, out=np.zeros_like(table), where=union > 0)
    rows, cols = linear_sum_assignment(-jaccard)
    pairs = {
        int(r): old_ids[c] for r, c in zip(rows, cols, strict=True) if jaccard[r, c] >= MIN_JACCARD
    }
    kept = set(pairs.values())
    return Matching(pairs, [i for i in old_ids if i not in kept])


def fresh_ids(count: int, taken: Sequence[str], next_number: int) -> tuple[list[str], int]:
    """``count`` new ids ``c<n>`` never used before (numbers only grow)."""
    found: list[str] = []
    number = next_number
    used = set(taken)
    while len(found) < count:
        candidate = f"c{number}"
        number += 1
        if candidate not in used:
            found.append(candidate)
    return found, number


def name_for(center: Sequence[float], categories: Sequence[str]) -> str:
    """A readable name from a standardised centre (the module docstring says how)."""
    numeric = list(zip(NUMERIC_NAMES, center[: len(NUMERIC_NAMES)], strict=True))
    standing = sorted(
        ((name, value) for name, value in numeric if abs(value) >= DISTINCT),
        key=lambda item: -abs(item[1]),
    )
    if not standing:
        top = _top_category(center, categories)
        return f"{top} fans" if top else "Typical customers"
    first, first_value = standing[0]
    adjective = _WORDS[first][0 if first_value > 0 else 2]
    if len(standing) > 1:
        second, second_value = standing[1]
        noun = _WORDS[second][1 if second_value > 0 else 3]
    else:
        noun = "customers"
    return f"{adjective} {noun}".capitalize()


def _top_category(center: Sequence[float], categories: Sequence[str]) -> str | None:
    shares = list(center[len(NUMERIC_NAMES) :])
    if not shares:
        return None
    best = int(np.argmax(shares))
    # a category column is 0.5 x the share of members whose top category it is
    return categories[best].capitalize() if shares[best] >= 0.25 else None


def distinct_names(names: Sequence[str]) -> list[str]:
    """Equal names numbered in order: "Brief glancers", "Brief glancers 2"."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        count = seen.get(name, 0) + 1
        seen[name] = count
        out.append(name if count == 1 else f"{name} {count}")
    return out
