"""A shard's clocks, one per lane: a customer's deadlines fire by the clock of their own lane
(the wall clock for live events, a replay's progress for its events), never by another
customer's events or by another lane's clock."""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from typing import Any

from app.rules.active import shipped_compiled
from app.streams import LIVE
from pipelines.records import ProfileUpdate
from pipelines.segmentation import REPLAY_STALL_MS, FeatureShard, ShardState, catalogue_for
from pipelines.sources import StreamEvent, Tick
from tests.factories import stored_event

RULES = shipped_compiled()
CATALOGUE = catalogue_for(RULES, 5 * 60_000)
T0 = 1_767_225_600_000
MINUTE = 60_000
DAY = 24 * 60 * MINUTE
REPLAY = "replay-1"


def event(customer: str, name: str, at: int, n: int, lane: str = LIVE, **props: Any) -> StreamEvent:
    entry = stored_event(message_id=f"m{n}", customer=customer, name=name, at=at, properties=props)
    if lane != LIVE:
        entry["replay"] = lane
    return StreamEvent(0, f"{n}-0", entry)  # type: ignore[arg-type]


def transitions(out: Iterable[Any]) -> list[tuple[str, str, str, int]]:
    return [
        (update.customer_id, t.segment, t.kind, t.at)
        for update in out
        if isinstance(update, ProfileUpdate)
        for t in update.transitions
    ]


def order(customer: str, at: int, n: int, lane: str = LIVE) -> StreamEvent:
    return event(customer, "Order Completed", at, n, lane, order_id=f"o{n}", revenue=10)


def test_a_replays_deadlines_wait_for_its_progress_not_for_the_wall_clock():
    shard = FeatureShard(CATALOGUE, RULES, None)
    # a replayed order on day 0: lapsed 30 days later, by the replay's clock
    out, _ = shard.on_batch([order("ann", T0, 1, REPLAY), Tick(0, T0 + DAY, False, REPLAY)])
    # the live clock (today) passes: nothing of the replay's fires
    out2, _ = shard.on_batch([Tick(0, T0 + 400 * DAY, inclusive=True)])
    assert transitions([*out, *out2]) == []
    # the replay goes on to day 31: the lapse fires, dated at day 30
    out3, _ = shard.on_batch([Tick(0, T0 + 31 * DAY, False, REPLAY)])
    assert transitions(out3) == [("ann", "lapsed-customers", "enter", T0 + 30 * DAY)]


def test_when_a_replay_ends_its_customers_follow_the_wall_clock():
    shard = FeatureShard(CATALOGUE, RULES, None)
    shard.on_batch([Tick(0, T0 + 400 * DAY, inclusive=True)])  # the live clock: today
    out, _ = shard.on_batch([order("ann", T0, 1, REPLAY), Tick(0, T0 + DAY, False, REPLAY)])
    assert transitions(out) == []
    out, _ = shard.on_batch([Tick(0, T0 + DAY, True, REPLAY, end=True)])
    assert transitions(out) == [("ann", "lapsed-customers", "enter", T0 + 30 * DAY)]
    assert shard.state.lane_of == {}
    assert set(shard.state.lanes) == {LIVE}


def test_a_backfill_beside_live_traffic_keeps_each_lane_on_its_own_clock():
    shard = FeatureShard(CATALOGUE, RULES, None)
    today = T0 + 400 * DAY
    live, _ = shard.on_batch(
        [
            event("bob", "Product Added", today, 1, product_id="p1", price=20),
            Tick(0, today + MINUTE, inclusive=True),
        ]
    )
    # an old history of another customer, replayed now: its events are far behind the live
    # clock, and bob's cart reminder (30 min) is not moved by them
    old, _ = shard.on_batch(
        [
            order("ann", T0, 2, REPLAY),
            order("ann", T0 + DAY, 3, REPLAY),
            Tick(0, T0 + DAY, False, REPLAY),
        ]
    )
    assert transitions([*live, *old]) == []
    for minute in range(2, 30):  # the replay moves on while the wall clock does
        on, _ = shard.on_batch(
            [
                Tick(0, today + minute * MINUTE, inclusive=True),
                Tick(0, T0 + DAY + minute * MINUTE, False, REPLAY),
            ]
        )
        assert transitions(on) == []
    reminder, _ = shard.on_batch([Tick(0, today + 30 * MINUTE, inclusive=True)])
    assert transitions(reminder) == [("bob", "cart-abandoners", "enter", today + 30 * MINUTE)]


def test_a_customers_own_event_fires_their_deadlines_before_it():
    shard = FeatureShard(CATALOGUE, RULES, None)
    out, _ = shard.on_batch(
        [
            event("cy", "Product Added", T0, 1, product_id="p1", price=20),
            # the live clock has not reached 30m, but cy's own next event at 40m proves it
            event("cy", "Product Viewed", T0 + 40 * MINUTE, 2, product_id="p2"),
        ]
    )
    assert transitions(out) == [("cy", "cart-abandoners", "enter", T0 + 30 * MINUTE)]


def test_lanes_survive_a_snapshot():
    shard = FeatureShard(CATALOGUE, RULES, None)
    shard.on_batch([order("ann", T0, 1, REPLAY), Tick(0, T0 + DAY, False, REPLAY)])
    state = pickle.loads(pickle.dumps(shard.state))  # noqa: S301
    again = FeatureShard(CATALOGUE, RULES, state)
    out, _ = again.on_batch([Tick(0, T0 + 31 * DAY, False, REPLAY)])
    assert transitions(out) == [("ann", "lapsed-customers", "enter", T0 + 30 * DAY)]


def test_a_snapshot_from_before_lanes_runs_on_the_live_clock():
    old = {"frozen": {}, "deadlines": [(T0, "ann")], "scheduled": {"ann": T0}, "clock": T0 - 1,
           "processed": 0, "newest": None, "revision": None, "stale": [], "pending": {},
           "merged": {}}  # fmt: skip
    state = ShardState.__new__(ShardState)
    state.__setstate__(old)
    assert state.lanes[LIVE].heap == [(T0, "ann")]
    assert state.lanes[LIVE].at == T0 - 1


def test_a_replay_that_stopped_moving_ends_after_a_while():
    shard = FeatureShard(CATALOGUE, RULES, None)
    today = T0 + 400 * DAY
    shard.on_batch([Tick(0, today, inclusive=True)])
    out, _ = shard.on_batch([order("ann", T0, 1, REPLAY), Tick(0, T0 + DAY, False, REPLAY)])
    out2, _ = shard.on_batch([Tick(0, today + REPLAY_STALL_MS, inclusive=True)])
    assert transitions([*out, *out2]) == []
    out3, _ = shard.on_batch([Tick(0, today + REPLAY_STALL_MS + 1, inclusive=True)])
    assert transitions(out3) == [("ann", "lapsed-customers", "enter", T0 + 30 * DAY)]
