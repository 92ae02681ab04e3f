"""A feature shard's cluster assignment: at every snapshot when a rule reads clusters, at each
record otherwise, and the two agree on every record (cluster and outlier flag); and a shard
that evaluates a customer only where the model's look-ahead finds a move gives the clusters,
at the same instants, of one evaluating at every instant a feature changes."""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any, cast

import pytest

from app.clustering.fitting import fit
from app.clustering.model import CLUSTER_PREFIX, ClusterModel
from app.clustering.watch import ModelWatcher
from app.rules.active import shipped_rules
from app.rules.compiler import ActiveRule, CompiledRules, compile_rules
from app.rules.schema import parse_rule
from pipelines.features import CustomerFeatures
from pipelines.records import ProfileUpdate
from pipelines.segmentation import FeatureShard, catalogue_for, reads_clusters
from pipelines.sources import StreamEvent, Tick
from tests.cluster_personas import population
from tests.factories import PublishedModel, stored_event

T0 = 1_767_225_600_000
MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
ON_A_CLUSTER = "id: in-first\nname: In the first cluster\nwhen:\n  cluster: c0\n"


def _model(family: str = "kmeans") -> ClusterModel:
    found = fit([c.features for c in population(800, seed=5)], families=[family], max_k=4)
    model = found.chosen.model(found.prep, version=1)
    for i, cluster in enumerate(model.clusters):
        cluster.id = cluster.name = f"c{i}"
    return model


def _rules(*extra: str) -> CompiledRules:
    rules = [*shipped_rules(), *(parse_rule(text) for text in extra)]
    return compile_rules([ActiveRule(rule, 1) for rule in rules])


def _reads(seed: int, *, month: bool = False) -> list[list[Any]]:
    """Reads of a shop's stream: 30 customers viewing, adding, ordering and coming back over a
    few hours (sessions end between visits), each read closed by its tick; with ``month``,
    then 40 days of ticks every 6 hours with a few customers back now and then, so the views,
    adds and categories leave their 30-day windows and the orders their 90 days' counts."""
    rng = random.Random(seed)
    events = []
    for n in range(900):
        customer = f"u{rng.randrange(30)}"
        at = T0 + n * 20_000 + rng.randrange(5_000)
        if month and n >= 800:  # back days later, one every few hours of event time
            at = T0 + 5 * HOUR + (n - 800) * 9 * HOUR + rng.randrange(HOUR)
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
    late = [e for e in events if int(e.event["timestamp"]) > T0 + 5 * HOUR]
    for start in range(0, len(events) - len(late), 25):
        chunk = events[start : min(start + 25, len(events) - len(late))]
        reads.append([*chunk, Tick(0, int(chunk[-1].event["timestamp"]), True)])
    clock = T0 + 5 * HOUR
    while late or clock < T0 + 45 * DAY:
        clock += 6 * HOUR
        due = [e for e in late if int(e.event["timestamp"]) <= clock]
        late = late[len(due) :]
        reads.append([*due, Tick(0, clock, True)])
    return reads


def _shard(rules: CompiledRules, model: ClusterModel, *, every: bool = False) -> FeatureShard:
    published = cast(ModelWatcher, PublishedModel(model))
    catalogue = catalogue_for(rules, 0)
    return FeatureShard(catalogue, rules, None, None, 1, published, every_deadline=every)


def _without_recency(model: ClusterModel) -> ClusterModel:
    """``model`` with its recency column made to weigh nothing: recency grows with the clock;
    a mixture or a density model reads it as of each instant assigned, not between them, so
    one that reads it may move at any evaluation; without it, only where a column's input
    changes."""
    shown = model.shown()
    shown["prep"]["means"][0], shown["prep"]["scales"][0] = 0.0, 1e30
    for cluster in shown["clusters"]:
        cluster["center"][0] = 0.0
    for points in ("means", "points"):  # a mixture's components, a density model's members
        for point in shown["assign"].get(points, ()):
            point[0] = 0.0
    return ClusterModel.from_shown(shown)


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


@pytest.mark.parametrize(
    ("family", "recency"),
    [("kmeans", False), ("gaussian_mixture", False), ("dbscan", False), ("kmeans", True)],
)
def test_the_models_look_ahead_moves_customers_when_evaluating_every_change_would(
    family: str, recency: bool
) -> None:
    """(A centroid model's moves by recency are solved, in the look-ahead as at every
    evaluation; the other kinds' are read at their next evaluation: their models here have
    the column weigh nothing.)"""
    model = _model(family) if recency else _without_recency(_model(family))
    assert model.algorithm.replace("minibatch_", "") == family
    rules = _rules(ON_A_CLUSTER)  # so every snapshot is assigned, and a move is a transition
    reads = _reads(seed=4, month=True)
    quiet = T0 + 5 * HOUR + DAY  # a day after the first hours' visits
    found = {}
    for every in (True, False):
        shard = _shard(rules, model, every=every)
        fired: list[int] = []
        fire = shard._fire_deadline

        def counted(customer_id: str, deadline: int, fire: Any = fire, fired: Any = fired) -> None:
            fired.append(deadline)
            fire(customer_id, deadline)

        shard._fire_deadline = counted  # type: ignore[method-assign]
        records = _records(shard, reads)
        moves = sorted(
            (r.customer_id, t.at, t.segment, t.kind)
            for r in records
            for t in r.transitions
            if t.segment.startswith(CLUSTER_PREFIX)
        )
        found[every] = moves, len([at for at in fired if at > quiet])
    assert found[False][0] == found[True][0]
    # customers moved as their windows emptied, with no event of theirs: the comparison
    # compared the look-ahead's moves, and it evaluated far fewer instants
    assert len([move for move in found[False][0] if move[1] > quiet]) >= 2
    assert found[False][1] < found[True][1] / 4


def test_with_a_month_of_quiet_each_record_is_still_assigned_as_every_snapshot_would_be() -> None:
    model = _model()
    reads = _reads(seed=6, month=True)
    eager = _records(_shard(_rules(ON_A_CLUSTER), model), reads)
    lazy = _records(_shard(_rules(), model), reads)
    assert [(r.customer_id, r.at) for r in lazy] == [(r.customer_id, r.at) for r in eager]
    for ours, theirs in zip(lazy, eager, strict=True):
        assert (_cluster(ours), ours.outlier) == (_cluster(theirs), theirs.outlier)


def test_a_quiet_customer_moves_by_recency_at_the_millisecond_the_model_says() -> None:
    """Recency grows with the clock and no deadline watches it: a centroid model's move by it
    is solved (``ClusterModel.recency_move``). Every customer's cluster, read every hour of
    the run from their own features then, is the one the shard's transitions put them in;
    and each move with no event of theirs at its instant comes at the first millisecond the
    model assigns them otherwise."""
    model = _model()
    assert model.kind == "centroids"
    rules = _rules(ON_A_CLUSTER)
    reads = _reads(seed=7, month=True)
    records = _records(_shard(rules, model), reads)
    events: dict[str, list[StreamEvent]] = {}
    for read in reads:
        for item in read:
            if isinstance(item, StreamEvent):
                events.setdefault(item.event["customer_id"], []).append(item)
    catalogue = catalogue_for(rules, 0)
    quiet_moves = checked = 0
    for customer_id, theirs in events.items():
        entered = [  # (instant, cluster) of each move, in time order
            (t.at, t.segment)
            for r in records
            if r.customer_id == customer_id
            for t in r.transitions
            if t.segment.startswith(CLUSTER_PREFIX) and t.kind == "enter"
        ]
        instants = {int(e.event["timestamp"]) for e in theirs}
        quiet = [at for at, _ in entered if at not in instants]
        quiet_moves += len(quiet)
        checkpoints = sorted(
            {*range(min(instants) + HOUR, T0 + 45 * DAY, HOUR), *quiet, *(at - 1 for at in quiet)}
        )
        state, applied = CustomerFeatures(catalogue), 0
        for at in checkpoints:
            while applied < len(theirs) and int(theirs[applied].event["timestamp"]) <= at:
                state.apply(theirs[applied].event)
                applied += 1
            state.expire(state.newest or at)
            expected, _ = model.assign(state.read(at)[0])
            said = [cluster for when, cluster in entered if when <= at][-1]
            assert said == CLUSTER_PREFIX + str(expected), (customer_id, at)
            checked += 1
    assert quiet_moves >= 3  # customers did move with no event of theirs
    assert checked > 10_000
