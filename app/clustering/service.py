"""Refits and renames: sample the profiles, fit every candidate, keep ids across refits, name
the clusters, record the refit in SQL and publish the model to the dataflow.

A refit is CPU work of seconds to minutes: it runs in a thread of the API (``POST
/api/clusters/refit``), in the supervisor's schedule, or in ``segflow cluster fit``; one at a
time across processes (a lock in Redis).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis
from sqlalchemy.engine import Engine
from sqlalchemy.orm import defer
from sqlmodel import col, select

from app.clustering import store
from app.clustering.choices import DEFAULT_SAMPLE as DEFAULT_SAMPLE
from app.clustering.choices import FAMILIES
from app.clustering.fitting import Fit, TooFewProfiles, fit
from app.clustering.identity import distinct_names, fresh_ids, match, name_for
from app.clustering.model import Cluster, ClusterModel
from app.db import session_scope
from app.models import ClusterName, ClusterRefit

log = logging.getLogger(__name__)

LOCK_SECONDS = 3_600


class RefitBusy(RuntimeError):
    """Another refit is under way."""


class UnknownCluster(LookupError):
    pass


class NameTaken(ValueError):
    """Another cluster has the name already (names are how rules and people tell them apart)."""


@dataclass
class Refit:
    model: ClusterModel
    fit: Fit
    kept: list[str]
    added: list[str]
    retired: list[str]
    sample_size: int


def refit(
    client: redis.Redis,
    engine: Engine,
    *,
    reason: str,
    sample_size: int = DEFAULT_SAMPLE,
    families: Sequence[str] = FAMILIES,
    max_k: int = 8,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Refit:
    """Fit on a sample of the current profiles and publish the chosen model.

    Raises ``TooFewProfiles`` (nothing recorded) and ``RefitBusy``."""
    token = str(time.time_ns())
    if not client.set(store.REFIT_LOCK_KEY, token, nx=True, ex=LOCK_SECONDS):
        raise RefitBusy("a cluster refit is already under way")
    try:
        if progress is not None:
            progress("sampling profiles")
        _, profiles = store.sample_profiles(client, sample_size, seed=seed)
        return fit_and_publish(
            client, engine, profiles, reason=reason, families=families, max_k=max_k,
            seed=seed, progress=progress,
        )  # fmt: skip
    finally:
        if client.get(store.REFIT_LOCK_KEY) == token.encode():
            client.delete(store.REFIT_LOCK_KEY)


def fit_and_publish(
    client: redis.Redis,
    engine: Engine,
    profiles: Sequence[dict[str, Any]],
    *,
    reason: str,
    families: Sequence[str] = FAMILIES,
    max_k: int = 8,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Refit:
    """The refit of ``profiles`` (a sample of features), published and recorded."""
    started = time.perf_counter()
    found = fit(profiles, families=families, max_k=max_k, seed=seed, progress=progress)
    chosen = found.chosen
    draft = chosen.model(found.prep)
    rows = np.asarray([found.prep.row(features) for features in profiles], dtype=float)
    new_labels, outliers = draft.assign_rows(rows)
    old = store.published(client)
    ids = _ids(client, engine, old, profiles, new_labels, len(chosen.sizes))
    kept = [i for i in ids if old is not None and i in old.ids]
    retired = [] if old is None else [i for i in old.ids if i not in ids]
    names = names_for(engine, ids, list(chosen.centers), found.prep.categories, old)
    clusters = [
        Cluster(cluster_id, name, size, center, named_by)
        for cluster_id, (name, named_by), size, center in zip(
            ids, names, chosen.sizes, chosen.centers, strict=True
        )
    ]
    version = store.next_version(client)
    now = int(time.time() * 1000)
    sizes = {ids[label]: int((new_labels == label).sum()) for label in range(len(ids))}
    outlier_share = round(float(outliers.mean()), 4)
    # each cluster's share of outliers among the sample's members (density noise is in none)
    outlier_shares = {
        ids[label]: round(float(outliers[new_labels == label].mean()), 4) if size else 0.0
        for label, size in enumerate(sizes.values())
    }
    quality = {
        **chosen.quality,
        "outlier_share": outlier_share,
        "outlier_shares": outlier_shares,
        "sample_size": len(profiles),
    }
    model = ClusterModel(
        version, now, chosen.algorithm, chosen.params, found.prep, chosen.kind, clusters,
        chosen.assign_data, quality,
    )  # fmt: skip
    with session_scope(engine) as session:
        session.add(
            ClusterRefit(
                reason=reason,
                algorithm=chosen.algorithm,
                params=chosen.params,
                sample_size=len(profiles),
                silhouette=chosen.quality.get("silhouette"),
                davies_bouldin=chosen.quality.get("davies_bouldin"),
                calinski_harabasz=chosen.quality.get("calinski_harabasz"),
                outlier_share=outlier_share,
                sizes=sizes,
                kept=kept,
                added=[i for i in ids if i not in kept],
                retired=retired,
                fit_seconds=round(time.perf_counter() - started, 3),
                candidates=[c.summary() for c in found.candidates],
                model_version=version,
                model=model.shown(),
            )
        )
    store.publish(client, model)
    log.info(
        "cluster refit %d (%s): %s with %d clusters, silhouette %s",
        version, reason, chosen.algorithm, len(ids), chosen.quality.get("silhouette"),
    )  # fmt: skip
    return Refit(model, found, kept, [i for i in ids if i not in kept], retired, len(profiles))


def _ids(
    client: redis.Redis,
    engine: Engine,
    old: ClusterModel | None,
    profiles: Sequence[dict[str, Any]],
    new_labels: np.ndarray,
    count: int,
) -> list[str]:
    """The new clusters' ids: an old id where the members match (``identity``), else fresh."""
    if old is None:
        return stable_ids(client, engine, None, np.empty(0), new_labels, count)
    old_rows = np.asarray([old.prep.row(features) for features in profiles], dtype=float)
    old_labels, _ = old.assign_rows(old_rows)
    return stable_ids(client, engine, old, old_labels, new_labels, count)


def stable_ids(
    client: redis.Redis,
    engine: Engine,
    old: ClusterModel | None,
    old_labels: np.ndarray,
    new_labels: np.ndarray,
    count: int,
    *,
    lineage: Sequence[str | None] = (),
) -> list[str]:
    """The ids of ``count`` new clusters, given how the current model (``old``) and the new
    one label the same rows: an old id where the members match (``identity.match``), else
    the id in ``lineage`` at the cluster's place (the stream clusterer's centres descend from
    the current model's) when no other cluster kept it, else a fresh one."""
    pairs: dict[int, str] = {}
    if old is not None:
        pairs = dict(match(old.ids, old_labels, new_labels, count).pairs)
    kept = set(pairs.values())
    for index, descended in enumerate(lineage):
        if index not in pairs and descended is not None and descended not in kept:
            pairs[index] = descended
            kept.add(descended)
    if len(pairs) == count:
        return [pairs[i] for i in range(count)]
    highest = _highest_id_number(engine, old)
    number = store.next_id_number(client, highest + 1)
    new, number = fresh_ids(count - len(pairs), [*pairs.values()], number)
    store.used_id_numbers(client, number)
    fresh = iter(new)
    return [pairs[i] if i in pairs else next(fresh) for i in range(count)]


def _highest_id_number(engine: Engine, old: ClusterModel | None) -> int:
    ids = list(old.ids) if old is not None else []
    with session_scope(engine) as session:
        for sizes in session.exec(select(ClusterRefit.sizes)):
            ids += list(sizes)
    numbers = [int(i[1:]) for i in ids if i.startswith("c") and i[1:].isdigit()]
    return max(numbers, default=0)


def names_for(
    engine: Engine,
    ids: list[str],
    centers: list[list[float]],
    categories: Sequence[str],
    old: ClusterModel | None = None,
) -> list[tuple[str, str]]:
    """Each cluster's name and who gave it: a marketer's; else, for a cluster a refit kept,
    the name it had (rules and people know it by it); else one from its centre."""
    with session_scope(engine) as session:
        given = {
            row.cluster_id: row.name
            for row in session.exec(select(ClusterName).where(col(ClusterName.cluster_id).in_(ids)))
        }
    had = {} if old is None else {c.id: c.name for c in old.clusters if c.id in ids}
    auto = distinct_names([name_for(center, categories) for center in centers])
    taken = {name.casefold() for name in [*given.values(), *had.values()]}
    out = []
    for cluster_id, name in zip(ids, auto, strict=True):
        if cluster_id in given:
            out.append((given[cluster_id], "marketer"))
        elif cluster_id in had:
            out.append((had[cluster_id], "auto"))
        else:
            fresh = name if name.casefold() not in taken else f"{name} ({cluster_id})"
            taken.add(fresh.casefold())
            out.append((fresh, "auto"))
    return out


def rename(
    client: redis.Redis, engine: Engine, cluster_id: str, name: str, by: str
) -> ClusterModel:
    """A marketer's name for a cluster of the published model; it survives refits."""
    model = store.published(client)
    if model is None or cluster_id not in model.ids:
        raise UnknownCluster(f"no cluster {cluster_id!r} in the current model")
    for other in model.clusters:
        if other.id != cluster_id and other.name.casefold() == name.casefold():
            raise NameTaken(f"cluster {other.id!r} is called {other.name!r} already")
    with session_scope(engine) as session:
        row = session.get(ClusterName, cluster_id)
        if row is None:
            session.add(ClusterName(cluster_id=cluster_id, name=name, renamed_by=by))
        else:
            row.name, row.renamed_by = name, by
    for cluster in model.clusters:
        if cluster.id == cluster_id:
            cluster.name, cluster.named_by = name, "marketer"
    # a new version: rules naming clusters read names, so the dataflow must see the change
    model.version = store.next_version(client)
    store.publish(client, model)
    return model


def refits(engine: Engine, *, before: int | None, limit: int) -> list[ClusterRefit]:
    """Refits newest first, ``before`` a refit id (the paging cursor), without their models
    (a density model's JSON is hundreds of KB: listings never show it)."""
    with session_scope(engine) as session:
        query = (
            select(ClusterRefit)
            .options(defer(ClusterRefit.model))  # type: ignore[arg-type]
            .order_by(col(ClusterRefit.id).desc())
            .limit(limit)
        )
        if before is not None:
            query = query.where(col(ClusterRefit.id) < before)
        return list(session.exec(query))


__all__ = [
    "FAMILIES",
    "NameTaken",
    "RefitBusy",
    "TooFewProfiles",
    "UnknownCluster",
    "refit",
    "rename",
]
