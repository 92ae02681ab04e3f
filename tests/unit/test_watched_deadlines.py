"""Deadlines only where they can change something: a shard that evaluates a customer only at
the instants a segment can turn (a count crossing a rule's threshold, a watched group's change,
a time since turning) gives the same transitions, at the same instants, as one evaluating at
every instant a feature changes; and its records, read through ``features_as_of``, show every
feature exactly at every instant until the customer's next evaluation."""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.features import features_as_of
from app.rules.active import shipped_compiled
from app.rules.compiler import ActiveRule, compile_rules
from app.rules.schema import parse_rule
from app.streams import LIVE
from pipelines.features import CustomerFeatures, Watch
from pipelines.records import ProfileUpdate
from pipelines.segmentation import FeatureShard, catalogue_for
from pipelines.sources import StreamEvent, Tick
from tests.factories import stored_event

MINUTE = 60_000
DAY = 24 * 60 * MINUTE
T0 = 1_767_225_600_000
CUSTOMERS = ("ann", "bob")
COMPARATORS = ("gte", "gt", "lt", "lte", "eq", "ne")
# leaves as rules write them, each with the constants it may be compared with
LEAVES = (
    ("count: {event: Product Viewed, within: 10m}", range(1, 7)),
    ("count: {event: Product Viewed, within: 3m}", range(1, 4)),
    ("count: {event: Product Added, within: 10m}", range(1, 3)),
    ("distinct: {event: Product Viewed, property: product_id, within: 10m}", range(1, 4)),
    ("sum: {event: Order Completed, property: revenue, within: 20m}", (5, 10, 25)),
    ("feature: session_events", range(1, 6)),
    ("since: {event: Product Added}", (5 * MINUTE, 12 * MINUTE)),
)
EVENTS = ("Product Viewed", "Product Viewed", "Product Added", "Order Completed", "page")


@st.composite
def rule_sets(draw: st.DrawFn) -> Any:
    texts = []
    for number in range(draw(st.integers(1, 3))):
        leaves = []
        for _ in range(draw(st.integers(1, 3))):
            leaf, constants = draw(st.sampled_from(LEAVES))
            word = draw(st.sampled_from(COMPARATORS))
            constant = draw(st.sampled_from(list(constants)))
            leaves.append(f"    - {leaf}\n      {word}: {constant}\n")
        join = draw(st.sampled_from(("all", "any")))
        texts.append(f"id: r{number}\nname: R{number}\nwhen:\n  {join}:\n" + "".join(leaves))
    rules = [parse_rule(text) for text in texts]
    return compile_rules([ActiveRule(rule, 1) for rule in rules])


@st.composite
def reads(draw: st.DrawFn) -> list[list[Any]]:
    """Reads of a live partition: events in time order, each read closed by the clock."""
    batches: list[list[Any]] = []
    now, n = T0, 0
    for _ in range(draw(st.integers(1, 12))):
        batch: list[Any] = []
        for _ in range(draw(st.integers(0, 6))):
            now += draw(
                st.sampled_from([0, 1, 1_000, MINUTE, 3 * MINUTE]) | st.integers(0, 9 * MINUTE)
            )
            n += 1
            name = draw(st.sampled_from(EVENTS))
            properties: dict[str, Any] = {"product_id": draw(st.sampled_from(["p1", "p2", "p3"]))}
            if name == "Order Completed":
                properties["revenue"] = draw(st.sampled_from([0, 10, 20]))
            entry = stored_event(
                message_id=f"m{n}",
                customer=draw(st.sampled_from(CUSTOMERS)),
                name=name,
                at=now,
                properties=properties,
            )
            if name == "page":
                entry |= {"type": "page", "event": None}
            batch.append(StreamEvent(0, f"{n}-0", entry))  # type: ignore[arg-type]
        now += draw(st.sampled_from([0, 1, MINUTE]) | st.integers(0, 40 * MINUTE))
        batch.append(Tick(0, now, inclusive=True, lane=LIVE))
        now += 1
        batches.append(batch)
    return batches


def run(shard: FeatureShard, batches: list[list[Any]]) -> list[Any]:
    out: list[Any] = []
    for batch in batches:
        found, _ = shard.on_batch(batch)
        out += found
    return out


def transitions(out: Iterable[Any]) -> list[tuple[str, str, str, int]]:
    return sorted(
        (update.customer_id, t.segment, t.kind, t.at)
        for update in out
        if isinstance(update, ProfileUpdate)
        for t in update.transitions
    )


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rule_sets(), reads(), st.lists(st.integers(0, 90 * MINUTE), min_size=1, max_size=8))
def test_watched_deadlines_give_every_deadlines_transitions_and_exact_records(
    rules, batches, offsets
):
    catalogue = catalogue_for(rules, 5 * MINUTE)
    every = FeatureShard(catalogue, rules, None, every_deadline=True)
    watched = FeatureShard(catalogue, rules, None, every_deadline=False)
    out_every, out_watched = run(every, batches), run(watched, batches)
    assert transitions(out_watched) == transitions(out_every)

    last = {u.customer_id: u for u in out_watched if isinstance(u, ProfileUpdate)}
    for customer_id, record in last.items():
        # the customer's next evaluation: the record is exact up to it (the flow goes on there)
        until = watched.state.scheduled.get(customer_id)
        state = watched.state.customer(customer_id)
        assert state is not None
        for offset in offsets:
            t = record.at + offset
            if until is not None and t > until:
                continue
            full = CustomerFeatures.restore(pickle.dumps(state), catalogue).snapshot(t)
            shown = features_as_of(record.features, record.at, record.changes, t)
            assert shown == full, f"{customer_id} at {record.at} + {offset}"


def test_a_count_below_its_threshold_sets_no_deadline_for_each_exit():
    """Four views and a rule asking for five: none of their exits can change a segment, so
    none is evaluated; the record carries them, and a fifth view's exit 5 -> 4 is the one
    deadline the rule needs."""
    rules = compile_rules(
        [
            ActiveRule(
                parse_rule(
                    "id: busy\nname: Busy\nwhen:\n"
                    "  all:\n    - count: {event: Product Viewed, within: 10m}\n      gte: 5\n"
                ),
                1,
            )
        ]
    )
    catalogue = catalogue_for(rules, 5 * MINUTE)
    shard = FeatureShard(catalogue, rules, None, every_deadline=False)
    views = [
        StreamEvent(
            0,
            f"{n}-0",
            stored_event(  # type: ignore[arg-type]
                message_id=f"m{n}",
                customer="ann",
                name="Product Viewed",
                at=T0 + n * MINUTE,
                properties={"product_id": "p1"},
            ),
        )
        for n in range(5)
    ]
    out, _ = shard.on_batch([*views[:4], Tick(0, T0 + 4 * MINUTE - 1, inclusive=True)])
    record = next(u for u in out if isinstance(u, ProfileUpdate))
    name = "count(Product Viewed, 10m)"
    assert [(at - T0, value) for at, feature, value in record.changes if feature == name] == [
        (10 * MINUTE, 3),
        (11 * MINUTE, 2),
        (12 * MINUTE, 1),
        (13 * MINUTE, 0),
    ]
    # nothing the rule reads can change: the one evaluation due is the record's refresh when
    # its changes end (an hour ahead), at the first 30-day exit (interaction rate, RFM)
    assert shard.state.scheduled["ann"] == T0 + 30 * DAY
    out, _ = shard.on_batch([views[4], Tick(0, T0 + 4 * MINUTE, inclusive=True)])
    assert shard.state.scheduled["ann"] == T0 + 10 * MINUTE  # the exit that leaves 4
    out, _ = shard.on_batch([Tick(0, T0 + 20 * MINUTE, inclusive=True)])
    assert transitions(out) == [("ann", "busy", "exit", T0 + 10 * MINUTE)]


def viewing(catalogue: Any, *, minutes: Iterable[int]) -> CustomerFeatures:
    """A customer who viewed a product at each of ``minutes`` after ``T0``."""
    customer = CustomerFeatures(catalogue)
    for n in minutes:
        customer.apply(
            stored_event(
                message_id=f"m{n}",
                customer="ann",
                name="Product Viewed",
                at=T0 + n * MINUTE,
                properties={"product_id": "p1"},
            )
        )
    return customer


def test_a_feature_read_whole_is_watched_at_its_own_windows_exits_not_its_logs_others():
    """A cluster model reads the 30-day interaction rate (adds / views), so every change of
    the 30-day view count matters; the 10-minute count on the same log does not. Views leave
    10 minutes long before they leave 30 days: those exits were all evaluated (three times as
    many deadlines with clustering on), though none can move a cluster or a segment."""
    catalogue = catalogue_for(shipped_compiled(), 5 * MINUTE)  # browsing-enthusiasts: 10m
    watch = Watch.of(catalogue.plan, {"interaction_rate_30d": None})
    customer = viewing(catalogue, minutes=(0, 1, 2))
    now = T0 + 2 * MINUTE
    values, soonest = customer.read(now)
    assert values["count(Product Viewed, 10m)"] == 3
    assert soonest == T0 + 10 * MINUTE  # the record's next change: shown, not evaluated
    assert customer.watched_deadline(now, watch) == T0 + 30 * DAY  # the first 30-day exit


def test_a_visits_end_is_watched_for_its_last_session_not_for_the_recent_visits():
    """The most of the latest two visits changes only at an event, so a cluster model that
    reads it watches no deadline for it; the last ended session changes as a visit ends,
    with no event, and a watch on it evaluates that instant."""
    catalogue = catalogue_for(shipped_compiled(), 5 * MINUTE)
    customer = viewing(catalogue, minutes=(0, 1, 3))
    now = T0 + 3 * MINUTE
    values, _ = customer.read(now)
    ends = T0 + 3 * MINUTE + 30 * MINUTE  # the session gap after the last view
    recent = ("recent_visit_products_viewed", "recent_visit_duration_ms")
    assert [values[name] for name in recent] == [3, 3 * MINUTE]
    assert values["last_session_products_viewed"] == 0
    ended = Watch.of(catalogue.plan, {"last_session_products_viewed": None})
    assert customer.watched_deadline(now, ended) == ends
    visits = Watch.of(catalogue.plan, dict.fromkeys(recent))
    assert customer.watched_deadline(now, visits) is None
    after, _ = customer.read(ends)  # as the visit ends: the last session moves, not these
    assert after["last_session_products_viewed"] == 3
    assert [after[name] for name in recent] == [3, 3 * MINUTE]


def test_a_records_refresh_never_comes_before_events_waiting_for_their_instant():
    """A replayed customer's record cuts its changes an hour ahead, and the first one left
    out (a view's 30-day exit) is where a refresh is evaluated; but when events at a later
    instant are applied and wait for it (a replay's same-instant events split across reads),
    no refresh may come before them: a deadline fires before an event, never between events
    of one instant. The add at day 40 makes the cart abandoner exit at its own instant."""
    rules = shipped_compiled()
    catalogue = catalogue_for(rules, 5 * MINUTE)

    def entry(n: int, name: str, at: int) -> StreamEvent:
        found = stored_event(
            message_id=f"m{n}",
            customer="ann",
            name=name,
            at=at,
            properties={"product_id": "p1", "price": 5},
        )
        found["replay"] = "r"
        return StreamEvent(0, f"{n}-0", found)  # type: ignore[arg-type]

    reads: list[list[Any]] = [
        [entry(1, "Product Added", T0), Tick(0, T0, False, "r")],
        [entry(2, "Product Viewed", T0 + DAY), Tick(0, T0 + DAY, False, "r")],
        [Tick(0, T0 + 40 * DAY - 1, False, "r")],
        [entry(3, "Product Viewed", T0 + 40 * DAY), Tick(0, T0 + 40 * DAY, False, "r")],
        [entry(4, "Product Added", T0 + 40 * DAY), Tick(0, T0 + 40 * DAY, False, "r")],
        [Tick(0, T0 + 41 * DAY, True, "r", end=True)],
    ]
    found = {
        every: transitions(run(FeatureShard(catalogue, rules, None, every_deadline=every), reads))
        for every in (True, False)
    }
    assert found[False] == found[True]
    assert ("ann", "cart-abandoners", "exit", T0 + 40 * DAY) in found[False]
