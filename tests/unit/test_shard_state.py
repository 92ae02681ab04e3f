"""A shard's state as recovery snapshots it: only changed customers are serialized again, idle
ones are held in their compact form, and a restored shard knows every customer."""

from __future__ import annotations

import pickle

from app.features import windowed
from pipelines.features import Catalogue, CustomerFeatures
from pipelines.segmentation import IDLE_SNAPSHOTS, ShardState

CATALOGUE = Catalogue.of(windowed("count", "Product Viewed", "10m"))


def viewed(at: int) -> dict[str, object]:
    return {"type": "track", "event": "Product Viewed", "timestamp": at, "properties": {}}


def shard_with(*customer_ids: str) -> ShardState:
    state = ShardState()
    state.catalogue = CATALOGUE
    for n, customer_id in enumerate(customer_ids):
        customer = CustomerFeatures(CATALOGUE)
        customer.apply(viewed(1_000 + n))
        state.add(customer_id, customer)
    return state


def restored(state: ShardState) -> ShardState:
    copy: ShardState = pickle.loads(pickle.dumps(state))  # noqa: S301
    copy.catalogue = CATALOGUE
    return copy


def test_a_snapshot_serializes_only_the_customers_changed_since_the_last_one():
    state = shard_with("a", "b")
    pickle.dumps(state)
    before = dict(state.frozen)
    customer = state.customer("a")
    assert customer is not None
    customer.apply(viewed(5_000))
    pickle.dumps(state)
    assert state.frozen["b"] is before["b"]
    assert state.frozen["a"] != before["a"]


def test_idle_customers_are_kept_compact_and_come_back_whole():
    state = shard_with("a", "b")
    for _ in range(IDLE_SNAPSHOTS + 1):
        state.customer("b")  # b keeps changing, a is idle
        pickle.dumps(state)
    assert "a" not in state.live
    assert len(state) == 2
    again = state.customer("a")
    assert again is not None
    assert again.snapshot(2_000)["count(Product Viewed, 10m)"] == 1


def test_a_restored_shard_has_every_customer_and_nothing_erased():
    state = shard_with("a", "b", "c")
    state.forget("b")
    copy = restored(state)
    assert len(copy) == 2
    assert copy.customer("b") is None
    a = copy.customer("a")
    assert a is not None
    assert a.first_seen == 1_000
