"""A feature shard's cluster assignment: at every snapshot when a rule reads clusters, at each
record otherwise, and the two agree on every record (cluster and outlier flag)."""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any, cast

from app.clustering.fitting import fit
from app.clustering.model import CLUSTER_PREFIX, ClusterModel
from app.clustering.watch import ModelWatcher
from app.rules.active import shipped_rules
from app.rules.compiler import ActiveRule, CompiledRules, compile_rules
from app.rules.schema import parse_rule
from pipelines.records import ProfileUpdate
from pipelines.segmentation import FeatureShard, catalogue_for, reads_clusters
from pipelines.sources import StreamEvent, Tick
from tests.cluster_personas import population
from tests.factories import PublishedModel, stored_event

T0 = 1_767_225_600_000
MINUTE = 60_000
ON_A_CLUSTER = "id: in-first\nname: In the first cluster\nwhen:\n  cluster: c0\n"


def _model() -> ClusterModel:
    found = fit([c.features for c in population(800, seed=5)], families=["kmeans"], max_k=4)
    model = found.chosen.model(found.prep, version=1)
    for i, cluster in enumerate(model.clusters):
        cluster.id = cluster.name = f"c{i}"
    return model


def _rules(*extra: str) -> CompiledRules:
    rules = [*shipped_rules(), *(parse_rule(text) for text in extra)]
    return compile_rules([ActiveRule(rule, 1) for rule in rules])


def _reads(seed: int) -> list[list[Any]]:
    """Reads of a shop's stream: 30 customers viewing, adding, ordering and coming back over a
    few hours (sessions end between visits), each read closed by its tick."""
    rng = random.Random(seed)
    events = []
    for n in range(900):
        customer = f"u{rng.randrange(30)}"
        at = T0 + n * 20_000 + rng.randrange(5_000)
        kind = rng.choice(["Product Viewed"] * 5 + ["Product Added", "Order Completed"])
        properties: dict[str, Any] = {
            "product_id": f"p{rng.randrange(9)}",
            "category": rng.choice("abc"),
        }
        if kind == "Product Added":
            properties["price"] = rng.choice([5, 40, 300])
        if kind == "Order Completed":
            properties = {"revenue": rng.choice([20, 600]), "order_id": f"o{n}"}
        events.append(
            StreamEvent(
                0,
                f"{n}-0",
                stored_event(  # type: ignore[arg-type]
                    message_id=f"m{n}", customer=customer, name=kind, at=at, properties=properties
                ),
            )
        )
    reads: list[list[Any]] = []
    for start in range(0, len(events), 25):
        chunk = events[start : start + 25]
        reads.append([*chunk, Tick(0, int(chunk[-1].event["timestamp"]), True)])
    return reads


def _shard(rules: CompiledRules, model: ClusterModel) -> FeatureShard:
    published = cast(ModelWatcher, PublishedModel(model))
    return FeatureShard(catalogue_for(rules, 0), rules, None, None, 1, published)


def _records(shard: FeatureShard, reads: Iterable[list[Any]]) -> list[ProfileUpdate]:
    found = []
    for read in reads:
        out, _ = shard.on_batch(read)
        found += [record for record in out if isinstance(record, ProfileUpdate)]
    return found


def _cluster(record: ProfileUpdate) -> str | None:
    return next((s for s in record.segments if s.startswith(CLUSTER_PREFIX)), None)


def test_without_a_cluster_rule_each_record_is_assigned_as_every_snapshot_would_be() -> None:
    model = _model()
    each, at_record = _rules(ON_A_CLUSTER), _rules()
    assert reads_clusters(each)
    assert not reads_clusters(at_record)
    reads = _reads(seed=3)
    eager = _records(_shard(each, model), reads)
    lazy = _records(_shard(at_record, model), reads)
    assert [(r.customer_id, r.at) for r in lazy] == [(r.customer_id, r.at) for r in eager]
    moves = 0
    for ours, theirs in zip(lazy, eager, strict=True):
        assert _cluster(ours) == _cluster(theirs) is not None
        assert ours.outlier == theirs.outlier
        for transition in ours.transitions:
            if transition.segment.startswith(CLUSTER_PREFIX):
                assert transition.at == ours.at  # a move is dated at its record
                moves += transition.kind == "exit"
    assert moves > 0  # customers did move: the comparison compared something
