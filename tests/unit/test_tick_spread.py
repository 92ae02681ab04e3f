"""A live tick reaches the shards that took events since their partition's last tick, and every
shard of the partition at most every ``IDLE_TICK_MS``; replay ticks and a replay's end reach
every shard, as without a ``TickSpread``."""

from __future__ import annotations

from pipelines.placement import shard_keys
from pipelines.segmentation import TickSpread, route_read, shard_of
from pipelines.sources import IDLE_TICK_MS, SourceItem, StreamEvent, Tick
from tests.factories import stored_event

PARTITIONS = 4


def view(n: int, customer: str, partition: int = 0) -> StreamEvent:
    entry = stored_event(
        message_id=f"m{n}", customer=customer, name="Product Viewed", at=n, properties={}
    )
    return StreamEvent(partition, f"{n}-0", entry)  # type: ignore[arg-type]


def ticked(routed: list[tuple[str, list[SourceItem]]]) -> set[str]:
    return {shard for shard, items in routed if any(isinstance(i, Tick) for i in items)}


def test_a_live_tick_reaches_every_shard_then_only_those_with_events_until_its_interval():
    now = [100.0]  # the spread's clock, seconds
    spread = TickSpread(PARTITIONS, clock=lambda: now[0])
    every = set(shard_keys(0, PARTITIONS))
    first = route_read([view(1, "ann"), Tick(0, 10, inclusive=True)], PARTITIONS, spread)
    assert ticked(first) == every  # the first tick of the partition: every shard

    now[0] += IDLE_TICK_MS / 1000 / 2
    soon = route_read([view(2, "bob"), Tick(0, 20, inclusive=True)], PARTITIONS, spread)
    quiet = route_read([Tick(0, 30, inclusive=True)], PARTITIONS, spread)
    assert ticked(soon) == {shard_of("bob", 0, PARTITIONS)}  # bob's events end at it
    assert ticked(quiet) == set()

    now[0] = 100.0 + 2 * IDLE_TICK_MS / 1000
    later = route_read([Tick(0, 40, inclusive=True)], PARTITIONS, spread)
    assert ticked(later) == every  # the interval passed: every shard's deadlines fire


def test_replay_ticks_and_a_replays_end_reach_every_shard():
    spread = TickSpread(PARTITIONS)
    every = set(shard_keys(1, PARTITIONS))
    route_read([Tick(1, 5, inclusive=True)], PARTITIONS, spread)  # spread now: live is quiet
    replay = route_read([Tick(1, 6, False, "replay-x")], PARTITIONS, spread)
    end = route_read([Tick(1, 7, True, "replay-x", True)], PARTITIONS, spread)
    assert ticked(replay) == every
    assert ticked(end) == every
    assert ticked(route_read([Tick(1, 8, inclusive=True)], PARTITIONS)) == every  # no spread
