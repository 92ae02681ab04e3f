"""Identity merges through the feature shard, its relayed entries fed back as the streams would
carry them: the known customer ends with the features of a twin whose every event carried the
known id from the start (DESIGN.md: "as if every event had carried the userId")."""

from __future__ import annotations

import pickle
import random
from collections.abc import Mapping
from typing import Any, cast

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.clustering.fitting import fit
from app.clustering.model import CLUSTER_PREFIX, ClusterModel, membership
from app.clustering.watch import ModelWatcher
from app.rules.active import shipped_compiled
from app.streams import ABSORB, MERGE
from pipelines.features import CustomerFeatures
from pipelines.records import Merged, ProfileUpdate, Relay, Unprocessable
from pipelines.segmentation import FeatureShard, ShardState, catalogue_for
from pipelines.sources import StreamEvent, Tick
from tests.cluster_personas import population
from tests.factories import PublishedModel, stored_event

RULES = shipped_compiled()
CATALOGUE = catalogue_for(RULES, 5 * 60_000)
T0 = 1_767_225_600_000
MINUTE = 60_000


def identify(user: str | None, anonymous: str, at: int, message_id: str) -> dict[str, Any]:
    event = stored_event(message_id=message_id, customer=user or anonymous, name="", at=at,
                         properties={})  # fmt: skip
    event.update(type="identify", event=None, user_id=user, anonymous_id=anonymous,
                 traits={"plan": "gold"})  # fmt: skip
    return event


def alias(user: str, previous: str, at: int, message_id: str) -> dict[str, Any]:
    event = stored_event(message_id=message_id, customer=user, name="", at=at, properties={})
    event.update(type="alias", event=None, previous_id=previous)
    return event


def track(customer: str, name: str, at: int, n: int, **properties: Any) -> dict[str, Any]:
    return stored_event(message_id=f"m{n}-{customer}", customer=customer, name=name, at=at,
                        properties=properties)  # fmt: skip


class Streams:
    """One shard per customer id, and the entries the shards relay fed back in order, through
    JSON like Redis carries them."""

    def __init__(self, model: ClusterModel | None = None) -> None:
        self.shards: dict[str, FeatureShard] = {}
        self.out: list[Any] = []
        self.clusters = None if model is None else cast(ModelWatcher, PublishedModel(model))

    def shard(self, customer_id: str) -> FeatureShard:
        if customer_id not in self.shards:
            self.shards[customer_id] = FeatureShard(
                CATALOGUE, RULES, None, partitions=4, clusters=self.clusters
            )
        return self.shards[customer_id]

    def send(self, event: dict[str, Any]) -> None:
        queue: list[Mapping[str, Any]] = [event]
        while queue:
            entry = orjson.loads(orjson.dumps(queue.pop(0)))
            shard = self.shard(entry["customer_id"])
            items: list[StreamEvent | Tick] = [
                StreamEvent(0, "0-0", entry),
                Tick(0, entry["timestamp"] + 1, inclusive=True),
            ]
            out, _ = shard.on_batch(items)
            for item in out:
                self.out.append(item)
                if isinstance(item, Relay):
                    queue.append(item.entry)

    def send_together(self, events: list[dict[str, Any]], most: int = 200) -> None:
        """``events`` read in one batch: each shard takes its event before any entry they
        relay comes back (the streams carry those after), and so on, breadth first."""
        queue: list[Mapping[str, Any]] = list(events)
        for _ in range(most):
            if not queue:
                return
            entry = orjson.loads(orjson.dumps(queue.pop(0)))
            out, _ = self.shard(entry["customer_id"]).on_batch(
                [StreamEvent(0, "0-0", entry), Tick(0, entry["timestamp"] + 1, inclusive=True)]
            )
            self.out += out
            queue += [item.entry for item in out if isinstance(item, Relay)]
        raise AssertionError(f"entries still relayed after {most}: {queue[:3]}")

    def customer(self, customer_id: str) -> CustomerFeatures | None:
        shard = self.shards.get(customer_id)
        return None if shard is None else shard.state.customer(customer_id)


def features(customer: CustomerFeatures | None, at: int) -> dict[str, Any]:
    assert customer is not None
    values, _ = customer.observe(at)
    return {k: v for k, v in values.items() if not k.startswith("sequence(")}


NAMES = ["Product Viewed", "Product Added", "Order Completed", "Checkout Started"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.sampled_from(NAMES), st.integers(0, 20 * MINUTE), st.booleans()),
        min_size=1,
        max_size=25,
        # Two identities' events at one instant apply in their arrival order, which two
        # partitions do not share: an order of one and an add of the other at the same
        # millisecond give a cart either way (the contract's oracle calls such an instant
        # ambiguous too), so the instants here are distinct.
        unique_by=lambda step: step[1],
    ),
    st.integers(0, 20 * MINUTE),
    st.booleans(),
)
def test_a_merged_customer_has_the_features_of_one_who_always_carried_the_user_id(
    steps: list[tuple[str, int, bool]], merge_at: int, by_alias: bool
):
    """Events before the merge carry the anonymous id (or the user id, when the flag says so),
    events after it the user id; the twin carries ``twin`` throughout."""
    merged, twin = Streams(), Streams()
    steps = sorted(steps, key=lambda step: step[1])
    before = [step for step in steps if step[1] < merge_at]
    after = [step for step in steps if step[1] >= merge_at]
    for n, (name, offset, known) in enumerate(before):
        merged.send(track("user" if known else "anon", name, T0 + offset, n, product_id="p1",
                          price=10, revenue=10))  # fmt: skip
        twin.send(track("twin", name, T0 + offset, n, product_id="p1", price=10, revenue=10))
    link = (
        alias("user", "anon", T0 + merge_at, "link")
        if by_alias
        else identify("user", "anon", T0 + merge_at, "link")
    )
    merged.send(link)
    twin.send({**link, "customer_id": "twin", "user_id": "twin", "anonymous_id": None,
               "previous_id": None})  # fmt: skip
    for n, (name, offset, _) in enumerate(after, start=len(before)):
        merged.send(track("user", name, T0 + offset, n, product_id="p1", price=10, revenue=10))
        twin.send(track("twin", name, T0 + offset, n, product_id="p1", price=10, revenue=10))
    end = T0 + 30 * MINUTE
    assert merged.customer("anon") is None  # handed over
    assert features(merged.customer("user"), end) == features(twin.customer("twin"), end)
    assert merged.customer("user").segments == twin.customer("twin").segments  # type: ignore[union-attr]


def test_what_comes_for_the_anonymous_id_after_the_merge_is_forwarded():
    streams = Streams()
    streams.send(track("anon", "Product Added", T0, 1, product_id="p1", price=30))
    streams.send(identify("user", "anon", T0 + MINUTE, "link"))
    streams.send(track("anon", "Product Added", T0 + 2 * MINUTE, 2, product_id="p2", price=5))
    user = features(streams.customer("user"), T0 + 3 * MINUTE)
    assert (user["cart_value"], user["events_total"]) == (35.0, 2)
    relayed = [item.entry["type"] for item in streams.out if isinstance(item, Relay)]
    assert relayed == [MERGE, ABSORB, "track"]
    merged = [item for item in streams.out if isinstance(item, Merged)]
    assert [(item.customer_id, item.into) for item in merged] == [("anon", "user")]


def test_the_merged_customer_is_evaluated_at_once():
    streams = Streams()
    for n in range(4):
        streams.send(track("anon", "Product Viewed", T0 + n * 1000, n, product_id=f"p{n}"))
    streams.send(track("user", "Product Viewed", T0 + 4000, 4, product_id="p4"))
    streams.send(identify("user", "anon", T0 + 6000, "link"))
    updates = [i for i in streams.out if isinstance(i, ProfileUpdate) and i.customer_id == "user"]
    assert "browsing-enthusiasts" in updates[-1].segments  # 4 views of theirs, one of the user
    assert [(t.segment, t.kind, t.at) for t in updates[-1].transitions] == [
        ("browsing-enthusiasts", "enter", T0 + 6000)
    ]


def test_the_merged_customer_is_in_the_segments_the_anonymous_one_was_in():
    """The anonymous customer's enter moves to the user's transitions (the sink); the merge
    adds none, so the user's list reads as one history, and leaving happens at its instant."""
    streams = Streams()
    for n in range(5):
        streams.send(track("anon", "Product Viewed", T0 + n * 1000, n, product_id=f"p{n}"))
    streams.send(identify("user", "anon", T0 + 6000, "link"))
    (merged,) = [item for item in streams.out if isinstance(item, Merged)]
    assert merged.segments == {"browsing-enthusiasts"}
    updates = [i for i in streams.out if isinstance(i, ProfileUpdate) and i.customer_id == "user"]
    assert "browsing-enthusiasts" in updates[-1].segments
    assert updates[-1].transitions == ()
    streams.send(track("user", "Order Completed", T0 + 7000, 9, revenue=10))
    left = [i for i in streams.out if isinstance(i, ProfileUpdate) and i.customer_id == "user"]
    assert [(t.segment, t.kind, t.at) for t in left[-1].transitions] == [
        ("browsing-enthusiasts", "exit", T0 + 7000)
    ]


def test_a_repeated_identify_merges_once_and_merging_into_oneself_is_nothing():
    streams = Streams()
    streams.send(track("anon", "Product Viewed", T0, 1))
    streams.send(identify("user", "anon", T0 + 1, "first"))
    streams.send(identify("user", "anon", T0 + 2, "again"))
    streams.send(identify("user", "user", T0 + 3, "self"))
    absorbed = [i for i in streams.out if isinstance(i, Relay) and i.entry["type"] == ABSORB]
    assert len(absorbed) == 1
    assert features(streams.customer("user"), T0 + 4)["events_total"] == 1


def test_state_moved_through_the_streams_cannot_run_code(capsys: pytest.CaptureFixture[str]):
    """Whoever can write a stream cannot run code in the dataflow: the state's unpickler
    refuses what a customer's state does not hold, and the entry is set aside."""

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (print, ("pwned",))

    streams = Streams()
    streams.send(track("user", "Product Viewed", T0, 1))
    entry = {
        "type": ABSORB,
        "customer_id": "user",
        "from": "anon",
        "timestamp": T0,
        "message_id": "evil",
        "state": __import__("base64").b64encode(pickle.dumps(Evil())).decode(),
    }
    streams.send(entry)
    assert "pwned" not in capsys.readouterr().out
    refused = [item for item in streams.out if isinstance(item, Unprocessable)]
    assert [item.event["message_id"] for item in refused] == ["evil"]
    assert refused[0].detail.startswith("UnpicklingError: ")
    assert "builtins.print" in refused[0].detail


def test_the_tombstones_survive_a_snapshot():
    state = ShardState()
    state.merged["anon"] = "user"
    assert pickle.loads(pickle.dumps(state)).merged == {"anon": "user"}  # noqa: S301


def test_a_merged_customer_is_in_the_one_cluster_their_merged_features_give():
    """The known customer and the anonymous one may be in different clusters: after the merge
    the customer is in exactly one, the one the merged features are assigned to (an
    assignment kept from before the merge is not trusted: the other's cluster came along)."""
    found = fit([c.features for c in population(800, seed=5)], families=["kmeans"], max_k=4)
    model = found.chosen.model(found.prep, version=1)
    rng = random.Random(3)
    kinds = ["Product Viewed"] * 4 + ["Product Added", "Order Completed"]
    seen = set()
    for attempt in range(60):
        streams = Streams(model)
        for n in range(rng.randrange(2, 12)):
            who = rng.choice(["user", "anon"])
            properties = {
                "product_id": f"p{rng.randrange(4)}",
                "price": rng.choice([5, 400]),
                "revenue": rng.choice([20, 900]),
                "category": rng.choice("ab"),
            }
            streams.send(track(who, rng.choice(kinds), T0 + n * 7 * MINUTE, n, **properties))
        apart = {
            c: model.assign(features(streams.customer(c), T0 + 90 * MINUTE))[0]
            for c in ("user", "anon")
            if streams.customer(c) is not None
        }
        streams.send(identify("user", "anon", T0 + 90 * MINUTE, f"link{attempt}"))
        record = [o for o in streams.out if isinstance(o, ProfileUpdate)][-1]
        assert record.customer_id == "user"
        expected, _ = model.assign(record.features)
        assert expected is not None
        clusters = sorted(s for s in record.segments if s.startswith(CLUSTER_PREFIX))
        assert clusters == [membership(expected)], (apart, clusters)
        customer = streams.customer("user")
        assert customer is not None
        assert customer.segments == record.segments
        seen.add(len(set(apart.values())))
    assert seen == {1, 2}  # merges of customers in one cluster and in two were tried


@pytest.mark.parametrize(
    "links",
    [
        [("y", "x"), ("x", "y")],  # alias x -> y and y -> x in one batch
        [("x", "y"), ("y", "x")],
        [("y", "x"), ("z", "y"), ("x", "z")],  # x -> y -> z -> x
        [("z", "x"), ("x", "y"), ("y", "z")],
        [("y", "x"), ("z", "y"), ("x", "z"), ("z", "w")],  # w joins the cycle's way in
    ],
)
@pytest.mark.parametrize("by_alias", [True, False])
def test_identities_naming_each_other_in_one_batch_end_as_one_customer(
    links: list[tuple[str, str]], by_alias: bool
):
    streams = Streams()
    ids = sorted({name for link in links for name in link})
    for n, customer in enumerate(ids):  # a history of their own each, before the links
        streams.send(track(customer, "Product Added", T0 + n * 1000, n, product_id=customer,
                           price=10))  # fmt: skip
    at = T0 + MINUTE
    streams.send_together(
        [
            alias(user, previous, at, f"link-{n}")
            if by_alias
            else identify(user, previous, at, f"link-{n}")
            for n, (user, previous) in enumerate(links)
        ]
    )
    kept = [c for c in ids if streams.customer(c) is not None]
    assert len(kept) == 1  # one customer holds the lot, none is lost
    owner = kept[0]
    held = features(streams.customer(owner), at + 1)
    assert (held["events_total"], held["cart_items"]) == (len(ids), len(ids))
    later = [track(c, "Product Viewed", at + 2000 + n, 100 + n) for n, c in enumerate(ids)]
    streams.send_together(later)  # whichever id they come for, they come to the owner
    assert features(streams.customer(owner), at + 9000)["events_total"] == 2 * len(ids)
    # what each id's keys held (events, transitions) ends at the owner's, the sink's moves
    # done in their order: each takes what one id holds then into another
    held_by = {customer: {customer} for customer in ids}
    for move in (m for m in streams.out if isinstance(m, Merged)):
        held_by[move.into] |= held_by[move.customer_id]
        held_by[move.customer_id] = set()
    assert held_by == {c: set(ids) if c == owner else set() for c in ids}
