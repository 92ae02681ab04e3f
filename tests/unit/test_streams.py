"""Partitioning by customer and the plan of appends: which script call gets which event."""

from __future__ import annotations

import re
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.streams import (
    PartitionAppend,
    SerializedEvent,
    dedup_key,
    partition_of,
    plan_appends,
    stats_key,
    stored_flags,
    stream_key,
)
from tests.strategies import identifiers

TTL_S = 86_400
HASH_TAG = re.compile(r"\{(\d+)\}")


def expected_partition(customer_id: str, partitions: int) -> int:
    return zlib.crc32(customer_id.encode("utf-8")) % partitions


@pytest.mark.parametrize(
    ("customer_id", "partitions", "partition"),
    [
        # 0xCBF43926 = 3421780262 is CRC-32's published check value for "123456789".
        ("123456789", 16, 3421780262 % 16),
        ("123456789", 7, 3421780262 % 7),
        ("123456789", 64, 38),
        ("", 8, 0),
        ("u1", 4, 2),
        ("u1", 64, 54),
        ("customer-42", 16, 5),
        ("ünïcødé", 16, 8),
        ("顧客", 16, 11),
        ("anything", 1, 0),
    ],
)
def test_partition_of_is_crc32_of_the_utf8_id(
    customer_id: str, partitions: int, partition: int
) -> None:
    assert partition_of(customer_id, partitions) == partition


@given(identifiers, st.integers(min_value=1, max_value=1024))
def test_partition_of_is_in_range_and_matches_crc32(customer_id: str, partitions: int) -> None:
    partition = partition_of(customer_id, partitions)

    assert 0 <= partition < partitions
    assert partition == expected_partition(customer_id, partitions)


def test_keys_of_a_partition_share_its_hash_tag() -> None:
    assert stream_key(3) == "events:{3}"
    assert stats_key(3) == "stats:{3}"


def test_dedup_keys_are_per_source_and_no_source_spells_another() -> None:
    assert dedup_key("shop", "m-1") == "dedup:4:shop:m-1"
    assert dedup_key("a:b", "c") != dedup_key("a", "b:c")


serialized_events = st.lists(
    st.builds(
        SerializedEvent,
        customer_id=st.sampled_from(["u1", "u2", "u3", "anon-9", "顧客"]) | identifiers,
        message_id=st.sampled_from(["m-1", "m-2", "m-3"]) | identifiers,
        payload=st.binary(min_size=1, max_size=16),
        source=st.sampled_from(["shop", "app", "replay:x.jsonl"]),
    ),
    max_size=40,
)


@settings(max_examples=300)
@given(serialized_events, st.integers(min_value=1, max_value=8))
def test_plan_appends_groups_each_event_into_its_partition_in_order(
    events: list[SerializedEvent], partitions: int
) -> None:
    plans = plan_appends(events, partitions=partitions, dedup_ttl_s=TTL_S)

    seen_partitions = []
    for plan in plans:
        tags = {HASH_TAG.search(key).group(1) for key in plan.keys[:2]}  # type: ignore[union-attr]
        assert len(tags) == 1
        partition = int(tags.pop())
        seen_partitions.append(partition)
        assert plan.keys[:2] == [f"events:{{{partition}}}", f"stats:{{{partition}}}"]
        assert plan.args[0] == TTL_S
        assert plan.positions == sorted(plan.positions)  # caller's order kept
        assert len(plan.keys) - 2 == len(plan.args) - 1 == len(plan.positions)
        for key, payload, position in zip(
            plan.keys[2:], plan.args[1:], plan.positions, strict=True
        ):
            event = events[position]
            assert expected_partition(event.customer_id, partitions) == partition
            assert key == dedup_key(event.source, event.message_id)
            assert payload == event.payload

    assert len(seen_partitions) == len(set(seen_partitions))  # one call per partition
    assert sorted(p for plan in plans for p in plan.positions) == list(range(len(events)))


def test_plan_appends_of_nothing_is_no_calls() -> None:
    assert plan_appends([], partitions=4, dedup_ttl_s=TTL_S) == []


def run_append_script(plan: PartitionAppend, redis_keys: set[str]) -> list[int]:
    """What APPEND_SCRIPT answers: 1 for each dedup key it could SET NX, 0 for a duplicate."""
    answer = []
    for key in plan.keys[2:]:
        answer.append(0 if key in redis_keys else 1)
        redis_keys.add(key)
    return answer


@settings(max_examples=300)
@given(
    serialized_events,
    st.integers(min_value=1, max_value=8),
    st.sets(st.sampled_from(["m-1", "m-2", "m-3"])),
)
def test_stored_flags_maps_each_answer_back_to_the_callers_event(
    events: list[SerializedEvent], partitions: int, stored_before: set[str]
) -> None:
    # Some (source, messageId) pairs were stored by an earlier request.
    redis_keys = {
        dedup_key(e.source, e.message_id) for e in events if e.message_id in stored_before
    }
    plans = plan_appends(events, partitions=partitions, dedup_ttl_s=TTL_S)
    answers = [run_append_script(plan, redis_keys) for plan in plans]

    flags = stored_flags(plans, answers, len(events))

    # Expected: of the events with one (source, messageId), none stored if an earlier request
    # stored it, else exactly one, the first the script calls reach (partition by partition,
    # each in the caller's order).
    seen = {(e.source, e.message_id) for e in events if e.message_id in stored_before}
    expected = [False] * len(events)
    for plan in plans:
        for position in plan.positions:
            event = events[position]
            expected[position] = (event.source, event.message_id) not in seen
            seen.add((event.source, event.message_id))
    assert flags == expected
    assert sum(flags) == len(
        {(e.source, e.message_id) for e in events}
        - {(e.source, e.message_id) for e in events if e.message_id in stored_before}
    )


def test_stored_flags_by_hand() -> None:
    plans = [
        PartitionAppend(keys=["s", "t", "d1", "d2"], args=[TTL_S, b"a", b"b"], positions=[0, 3]),
        PartitionAppend(keys=["s", "t", "d3", "d4"], args=[TTL_S, b"c", b"d"], positions=[1, 2]),
    ]

    assert stored_flags(plans, [[1, 0], [0, 1]], 4) == [True, False, True, False]


def test_stored_flags_refuses_answers_that_do_not_match_the_plan() -> None:
    plans = plan_appends(
        [SerializedEvent("u1", "m-1", b"{}", "s"), SerializedEvent("u1", "m-2", b"{}", "s")],
        partitions=1,
        dedup_ttl_s=TTL_S,
    )

    with pytest.raises(ValueError, match="zip"):
        stored_flags(plans, [[1]], 2)
