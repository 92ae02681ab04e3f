"""The shipped rules in the real dataflow against an independent oracle.

The oracle (``tests/oracle.py``) is written from the contract's words alone and imports
nothing from ``pipelines/`` or ``app/rules``: for every customer, segment and instant it decides
membership from the raw messages, and lists every instant where that changes.

Where the replay's timeline ends: a replay follows event time, and when it ends the clock
returns to the wall clock and every timer then due fires. The history lies in 2025, more than
90 days (the longest duration any rule names) before today, so every deadline is due by then:
the oracle follows each customer to the end of time, and the test checks that every instant it
reports is before the wall clock at which the dataflow started.

The history (``tests/personas.py``) arrives partly out of order, within the allowed lateness.
``segflow replay`` sorts its file by event time, so the replay test checks the replay's sort and
dedup; the tests of the live path below append events in the order they arrive, as the
collector does: late events are replayed in their place and what they change is corrected.
"""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
import yaml

from app.ingest.replay import replay_file
from app.profiles.keys import members_key
from app.settings import Settings
from app.streams import FAILED_EVENTS_KEY, partition_of
from tests.factories import append_events, stored_event
from tests.helpers import ServerThread, replay_messages, run_dataflow
from tests.oracle import (
    ADDED,
    CHECKOUT,
    DAY,
    HOUR,
    MINUTE,
    ORDERED,
    REMOVED,
    SECOND,
    SEGMENTS,
    VIEWED,
    AmbiguousInstant,
    event_time_ms,
    mismatch_report,
    oracle_transitions,
    raw_events,
    recorded_transitions,
)
from tests.personas import ALLOWED_LATENESS_MS, iso, shop_history

RULES_DIR = Path(__file__).resolve().parents[2] / "rules"
SEED = 20_250_101
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# (customer, segment, kind, at), the shape both sides are compared in
Change = tuple[str, str, str, int]


# --- the oracle against the rules' own examples ----------------------------------------------


def duration_ms(text: str) -> int:
    units = {"s": SECOND, "m": MINUTE, "h": HOUR, "d": DAY}
    return int(text[:-1]) * units[text[-1]]


def shipped_rules() -> dict[str, dict[str, Any]]:
    """Rule id -> the rule's YAML document (read for its id and examples only)."""
    documents = [yaml.safe_load(path.read_text()) for path in sorted(RULES_DIR.glob("*.yaml"))]
    return {document["id"]: document for document in documents}


def test_the_oracle_knows_every_shipped_rule_and_agrees_with_their_examples() -> None:
    rules = shipped_rules()
    assert sorted(rules) == sorted(SEGMENTS), "a shipped rule the oracle does not know"
    base = 1_700_000_000_000
    for rule_id, rule in rules.items():
        for example in rule["examples"]:
            messages = [
                {
                    "type": "track",
                    "userId": "x",
                    "event": given["event"],
                    "timestamp": iso(base + duration_ms(given["at"])),
                    "properties": given.get("properties", {}),
                    "messageId": f"m{n}",
                }
                for n, given in enumerate(example["given"])
            ]
            got = [
                (kind, at - base)
                for _, segment, kind, at in oracle_transitions(messages).get("x", [])
                if segment == rule_id
            ]
            expected = [(e["kind"], duration_ms(e["at"])) for e in example["expect"]]
            assert got == expected, f"{rule_id}: {example.get('name')}"


def test_same_instant_cart_changes_whose_order_matters_have_no_answer() -> None:
    at = "2025-01-01T00:00:00.000Z"
    properties = {"product_id": "p1", "price": 10}
    messages = [
        {
            "userId": "x",
            "event": ADDED,
            "timestamp": at,
            "messageId": "a",
            "properties": properties,
        },
        {
            "userId": "x",
            "event": ORDERED,
            "timestamp": at,
            "messageId": "b",
            "properties": properties,
        },
    ]
    with pytest.raises(AmbiguousInstant):
        oracle_transitions(messages)


@pytest.mark.backend_independent
def test_a_replayed_shop_history_gives_exactly_the_oracles_transitions(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    history = shop_history(seed=SEED)
    messages = history.messages
    events = raw_events(messages)
    unique = sum(len(found) for found in events.values())

    # The data set is what it claims to be.
    assert unique >= 50_000
    duplicates = len(messages) - unique
    assert duplicates >= 500
    late = behind_newest(messages)
    assert len(late) >= 1_000
    assert max(late) <= ALLOWED_LATENESS_MS, "every late event is within the allowed lateness"
    assert ALLOWED_LATENESS_MS in late, "one exactly at the allowed lateness"
    shared_instants = sum(
        1
        for found in events.values()
        for _, group in itertools.groupby(e.at for e in found)
        if len(list(group)) > 1
    )
    assert shared_instants >= 500

    expected = oracle_transitions(messages)
    assert {segment for changes in expected.values() for _, segment, _, _ in changes} == set(
        SEGMENTS
    )

    path = tmp_path / "shop.jsonl"
    path.write_bytes(b"".join(orjson.dumps(message) + b"\n" for message in messages))
    summary = replay_file(
        path,
        client=redis_client,
        partitions=settings.partitions,
        dedup_ttl_s=settings.dedup_window_s,
    )
    assert (summary.accepted, summary.duplicates, summary.failed) == (unique, duplicates, 0)

    started = time.time_ns() // 1_000_000
    last_instant = max(at for changes in expected.values() for *_, at in changes)
    assert last_instant < started, "a deadline after the wall clock: the oracle cannot end there"
    # The sink keeps a customer's newest 1,000 transitions: compare whole histories.
    assert max(len(changes) for changes in expected.values()) < 1_000
    run_dataflow(settings)

    assert redis_client.xlen(FAILED_EVENTS_KEY) == 0
    got = recorded_transitions(redis_client, events)
    if got != expected:
        pytest.fail(mismatch_report(expected, got, events), pytrace=False)
    final = {segment: set[str]() for segment in SEGMENTS}
    for customer, changes in expected.items():
        for _, segment, kind, _ in changes:
            (final[segment].add if kind == "enter" else final[segment].discard)(customer)
    for segment, members in final.items():
        stored = redis_client.smembers(members_key(segment))
        assert {m.decode() for m in stored} == members, segment  # type: ignore[union-attr]


def behind_newest(messages: list[dict[str, Any]]) -> list[int]:
    """For each message that arrives after a newer event of its customer: how far behind the
    newest it is (duplicates of an earlier message left out)."""
    newest: dict[str, int] = {}
    seen: set[str] = set()
    found = []
    for message in messages:
        if message["messageId"] in seen:
            continue
        seen.add(message["messageId"])
        customer = message.get("userId") or message["anonymousId"]
        at = event_time_ms(message["timestamp"])
        if customer in newest and at < newest[customer]:
            found.append(newest[customer] - at)
        newest[customer] = max(newest.get(customer, at), at)
    return found


def track(customer: str, event: str, at: int, n: int, **properties: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": customer,
        "event": event,
        "timestamp": iso(at),
        "properties": properties,
        "messageId": f"{customer}-{n}",
    }


def opposite_events_at_one_instant(t0: int) -> list[dict[str, Any]]:
    """Customers with, at one instant, an event that would make them enter a segment and one
    that would make them leave it; each once in either order of arrival."""
    cases: dict[str, list[tuple[int, str, dict[str, Any]]]] = {
        # a second checkout in 24 h, and an order: never a high-intent buyer
        "checkout-order": [
            (0, CHECKOUT, {}),
            (HOUR, CHECKOUT, {}),
            (HOUR, ORDERED, {"revenue": 20.0}),
        ],
        # a fifth view in 10 min, and an order: never a browsing enthusiast
        "view-order": [
            *((minute * MINUTE, VIEWED, {"product_id": f"p{minute}"}) for minute in range(5)),
            (4 * MINUTE, ORDERED, {"revenue": 20.0}),
        ],
        # a cart of 250 stays at 250 while one product is swapped for another of its price
        "swap": [
            (0, ADDED, {"product_id": "a", "price": 100.0}),
            (MINUTE, ADDED, {"product_id": "b", "price": 150.0}),
            (2 * MINUTE, REMOVED, {"product_id": "b"}),
            (2 * MINUTE, ADDED, {"product_id": "c", "price": 150.0}),
        ],
    }
    messages = []
    for name, steps in cases.items():
        for arrival, ordered in (("as-listed", steps), ("reversed", steps[::-1])):
            customer = f"{name}-{arrival}"
            for n, (offset, event, properties) in enumerate(sorted(ordered, key=lambda s: s[0])):
                messages.append(track(customer, event, t0 + offset, n, **properties))
    return messages


def test_events_at_one_instant_apply_together(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    messages = opposite_events_at_one_instant(1_736_000_000_000)
    expected = oracle_transitions(messages)
    replay_messages(redis_client, settings, tmp_path, messages)
    run_dataflow(settings)
    events = raw_events(messages)
    got = recorded_transitions(redis_client, events)
    assert got == expected, mismatch_report(expected, got, events, shown=10)


def test_events_at_one_instant_apply_together_across_source_reads(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    # A second checkout in 24 h and an order at one instant, a thousand views between them in
    # the stream (more than one read of it): never a high-intent buyer nor a browsing enthusiast.
    t0 = 1_736_000_000_000
    messages = [
        track("split", CHECKOUT, t0, 0),
        track("split", CHECKOUT, t0 + HOUR, 1),
        *(track("split", VIEWED, t0 + HOUR, n, product_id=f"p{n}") for n in range(2, 1_002)),
        track("split", ORDERED, t0 + HOUR, 1_002, revenue=20.0),
    ]
    expected = oracle_transitions(messages)
    assert expected == {"split": [("split", "lapsed-customers", "enter", t0 + HOUR + 30 * DAY)]}
    replay_messages(redis_client, settings, tmp_path, messages)
    run_dataflow(settings)
    events = raw_events(messages)
    got = recorded_transitions(redis_client, events)
    assert got == expected, mismatch_report(expected, got, events)


# --- the live path: events appended in the order they arrive, as the collector does -----------


def arrive(client: redis.Redis, settings: Settings, messages: list[dict[str, Any]]) -> None:
    """Append ``messages`` to the streams in this order (the collector's path, not a replay's,
    which sorts a file by event time first)."""
    events = [
        stored_event(
            message_id=m["messageId"],
            customer=m["userId"],
            name=m["event"],
            at=event_time_ms(m["timestamp"]),
            properties=m["properties"],
        )
        for m in messages
    ]
    append_events(client, events, settings.partitions)


def test_a_late_event_counts_from_its_own_instant(
    settings: Settings, redis_client: redis.Redis
) -> None:
    t0 = 1_736_000_000_000
    messages = [
        *(track("ada", VIEWED, t0 + m * MINUTE, m, product_id=f"p{m}") for m in range(4)),
        track("ada", ADDED, t0 + 5 * MINUTE, 4, product_id="p9", price=5.0),
        track("ada", VIEWED, t0 + 4 * MINUTE, 5, product_id="p4"),  # a minute late
    ]
    expected = oracle_transitions(messages)
    assert ("ada", "browsing-enthusiasts", "enter", t0 + 4 * MINUTE) in expected["ada"]
    arrive(redis_client, settings, messages)
    run_dataflow(settings)
    events = raw_events(messages)
    got = recorded_transitions(redis_client, events)
    assert got == expected, mismatch_report(expected, got, events)


def test_an_event_behind_another_customers_counts_from_its_own_instant(
    settings: Settings, redis_client: redis.Redis
) -> None:
    t0 = 1_736_000_000_000
    partition = partition_of("ada", settings.partitions)
    bob = next(
        name
        for name in (f"bob{n}" for n in range(1_000))
        if partition_of(name, settings.partitions) == partition
    )
    messages = [
        # ada views five products: a browsing enthusiast from 4m ...
        *(track("ada", VIEWED, t0 + m * MINUTE, m, product_id=f"p{m}") for m in range(5)),
        # bob's clock is ahead: his views fill more than one read of the partition
        *(track(bob, VIEWED, t0 + 12 * MINUTE + n, n, product_id="p1") for n in range(1_000)),
        # ... and a sixth at 9m30s, her newest event: still one at 10m, out at 11m
        track("ada", VIEWED, t0 + 9 * MINUTE + 30 * SECOND, 5, product_id="p5"),
    ]
    expected = oracle_transitions(messages)
    assert expected["ada"] == [
        ("ada", "browsing-enthusiasts", "enter", t0 + 4 * MINUTE),
        ("ada", "browsing-enthusiasts", "exit", t0 + 11 * MINUTE),
    ]
    arrive(redis_client, settings, messages)
    run_dataflow(settings)
    events = raw_events(messages)
    got = recorded_transitions(redis_client, events)
    assert got == expected, mismatch_report(expected, got, events)


@pytest.mark.slow
def test_the_shop_history_sent_live_gives_exactly_the_oracles_transitions(
    settings: Settings,
    redis_client: redis.Redis,
    api: ServerThread,
    credentials: dict[str, str],
) -> None:
    messages = shop_history(seed=SEED).messages
    events = raw_events(messages)
    stored = duplicates = 0
    with httpx.Client(base_url=api.url, auth=(credentials["write_key"], "")) as collector:
        for start in range(0, len(messages), 400):  # in the order the messages arrive
            answer = collector.post("/v1/batch", json={"batch": messages[start : start + 400]})
            assert answer.status_code == 200, answer.text
            stored += answer.json()["accepted"]
            duplicates += answer.json()["duplicates"]
    assert (stored, duplicates) == (sum(map(len, events.values())), len(messages) - stored)
    expected = oracle_transitions(messages)
    run_dataflow(settings)
    assert redis_client.xlen(FAILED_EVENTS_KEY) == 0
    got = recorded_transitions(redis_client, events)
    if got != expected:
        pytest.fail(mismatch_report(expected, got, events), pytrace=False)
