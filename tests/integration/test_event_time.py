"""Event time through the product's own commands: `segflow up` running, `segflow replay` of a
shop's history into it, or live traffic through its collector, and every customer's
transitions, read from the admin API, compared with the oracle's (``tests/oracle.py``).

The replay is paused half-way (SIGSTOP) until the dataflow has caught up and read empty
streams for a while: a clock that jumped to the wall clock on an empty read would fire
"first order + 30 days" for customers replayed only to their second day. The dataflow is
killed (SIGKILL) in that pause; `segflow up` restarts it from its recovery state. Then a second
file, an older history of other customers, is replayed after the first (a backfill): its lane
keeps its own clock, so the first history's deadlines, long fired, change nothing in it.

Live, customers of one partition send through the collector: phones that were offline send
their queues out of order, devices whose clocks are hours off send ``originalTimestamp`` and
``sentAt``, and one sender dates its events a day ahead. Deadlines fire by the wall clock, late
events correct what they changed, and nobody's clock moves anyone else's.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import redis

from app.clock import now_ms
from app.streams import partition_of, stream_key
from tests.factories import StreamEntries, stored_events
from tests.helpers import (
    SEGFLOW,
    children,
    embedded_redis,
    start_segflow,
    wait_for,
    wait_for_line,
)
from tests.oracle import (
    HOUR,
    MINUTE,
    Change,
    event_time_ms,
    mismatch_report,
    oracle_transitions,
    raw_events,
)
from tests.personas import DAY, iso, shop_history

PARTITIONS = 4


@dataclass
class RunningSegflow:
    process: subprocess.Popen[str]
    url: str
    admin: dict[str, str]
    write_key: str
    env: dict[str, str]
    redis: redis.Redis
    seen: list[str]

    def status(self) -> dict[str, Any]:
        answer = httpx.get(f"{self.url}/api/status", headers=self.admin, timeout=10)
        answer.raise_for_status()
        found: dict[str, Any] = answer.json()
        return found

    def transitions(self, customers: list[str]) -> dict[str, list[Change]]:
        """Each customer's transitions as the admin API lists them (every page)."""
        found: dict[str, list[Change]] = {}
        with httpx.Client(base_url=self.url, headers=self.admin, timeout=10) as client:
            for customer in customers:
                changes: list[Change] = []
                cursor: str | None = None
                while True:
                    params: dict[str, str | int] = {"limit": 1000}
                    if cursor:
                        params["cursor"] = cursor
                    page = client.get(f"/api/customers/{customer}/transitions", params=params)
                    page.raise_for_status()
                    body = page.json()
                    changes += [(customer, i["segment"], i["kind"], i["at"]) for i in body["items"]]
                    cursor = body["next_cursor"]
                    if cursor is None:
                        break
                if changes:
                    found[customer] = sorted(changes, key=lambda c: (c[3], c[2] != "exit", c[1]))
        return found

    def pipeline_pid(self) -> int:
        (pid,) = [
            p
            for p in children(self.process.pid)
            if b"app.cli\x00pipeline" in Path(f"/proc/{p}/cmdline").read_bytes()
        ]
        return pid


@pytest.fixture
def segflow(tmp_path: Path) -> Iterator[RunningSegflow]:
    """`segflow up` on a fresh data dir with its embedded Redis and SQLite, as `make up` runs."""
    process, port, env = start_segflow(tmp_path / "data", api_workers=1)
    seen: list[str] = []
    try:
        token = wait_for_line(process, r"^\s+admin token", seen).split()[-1]
        write_key = wait_for_line(process, r"^\s+demo write key", seen).split()[-1]
        wait_for_line(process, r"Ctrl-C", seen)
        client = embedded_redis(tmp_path / "data")
        yield RunningSegflow(
            process,
            f"http://127.0.0.1:{port}",
            {"Authorization": f"Bearer {token}"},
            write_key,
            env,
            client,
            seen,
        )
        client.close()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def other_customers(
    messages: list[dict[str, Any]], prefix: str, shift_ms: int
) -> list[dict[str, Any]]:
    """The same shoppers' behaviour as other customers (``prefix``), ``shift_ms`` earlier."""
    moved = []
    for message in messages:
        copy = dict(message)
        for field in ("userId", "anonymousId", "previousId"):
            if copy.get(field):
                copy[field] = f"{prefix}{copy[field]}"
        copy["messageId"] = f"{prefix}{copy['messageId']}"
        copy["timestamp"] = iso(event_time_ms(copy["timestamp"]) - shift_ms)
        moved.append(copy)
    return moved


def write_jsonl(path: Path, messages: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(message) + "\n" for message in messages))
    return path


def stored_entries(client: redis.Redis) -> int:
    return sum(client.xlen(stream_key(p)) for p in range(PARTITIONS))


def agree_with_the_oracle(
    segflow: RunningSegflow, messages: list[dict[str, Any]], timeout_s: float
) -> None:
    """Wait until the transitions the API lists equal the oracle's for every customer of
    ``messages``; fail with the differences otherwise."""
    expected = oracle_transitions(messages)
    events = raw_events(messages)
    customers = sorted(events)
    deadline = time.monotonic() + timeout_s
    while True:
        got = segflow.transitions(customers)
        if got == expected:
            return
        if time.monotonic() > deadline:
            pytest.fail(mismatch_report(expected, got, events), pytrace=False)
        time.sleep(1)


def test_replays_into_a_running_segflow_give_the_oracles_transitions(
    segflow: RunningSegflow, tmp_path: Path
) -> None:
    first = shop_history(seed=7, scale=0.25).messages
    path = write_jsonl(tmp_path / "shop.jsonl", first)
    replay = subprocess.Popen(  # slowed down, so that it can be paused half-way
        [*SEGFLOW, "replay", str(path), "--rate", "3000"],
        env=segflow.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # Half-way through the file: pause the replay, let the dataflow catch up and read empty
    # streams, and kill it meanwhile.
    wait_for(lambda: stored_entries(segflow.redis) >= len(first) // 3, timeout_s=120)
    replay.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: segflow.status()["lag"] == 0, timeout_s=120, what="caught up")
        caught_up = time.time_ns() // 1_000_000
        # the dataflow's source has read the streams again since (its heartbeat moved on)
        wait_for(
            lambda: int(segflow.redis.get("dataflow-alive") or 0) > caught_up + 1_000,
            timeout_s=60,
            what="idle reads of the caught-up streams",
        )
        os.killpg(segflow.pipeline_pid(), signal.SIGKILL)
        wait_for_line(segflow.process, r"pipeline exited with code -9 .*restarting", segflow.seen)
    finally:
        replay.send_signal(signal.SIGCONT)
    out, _ = replay.communicate(timeout=300)
    assert replay.returncode == 0, out
    agree_with_the_oracle(segflow, first, timeout_s=180)

    # A backfill: other customers' older history, replayed after the first.
    older = other_customers(shop_history(seed=8, scale=0.25).messages, "b-", 60 * DAY)
    done = subprocess.run(
        [*SEGFLOW, "replay", str(write_jsonl(tmp_path / "older.jsonl", older))],
        env=segflow.env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    agree_with_the_oracle(segflow, older, timeout_s=180)
    agree_with_the_oracle(segflow, first, timeout_s=10)  # and the first history is untouched


# --- live -----------------------------------------------------------------------------------


def one_partition(prefix: str, count: int) -> list[str]:
    """``count`` customer ids that share partition 0: their events interleave in one stream."""
    found: list[str] = []
    n = 0
    while len(found) < count:
        candidate = f"{prefix}{n}"
        if partition_of(candidate, PARTITIONS) == 0:
            found.append(candidate)
        n += 1
    return found


PRICES = {"p1": 12.5, "p2": 40, "p3": 130, "p4": 25}


def shopping(rng: random.Random, customer: str, start: int, end: int) -> list[dict[str, Any]]:
    """A shopper's events between ``start`` and ``end``: bursts of views, adds, removes,
    checkouts and orders, a few seconds to minutes apart (real times: the sender sets them)."""
    messages: list[dict[str, Any]] = []
    at = start + rng.randint(0, 3 * MINUTE)
    while at < end:
        name = rng.choice(
            ["Product Viewed"] * 5 + ["Product Added"] * 2
            + ["Product Removed", "Checkout Started", "Order Completed"]
        )  # fmt: skip
        product = f"p{rng.randint(1, 4)}"
        properties: dict[str, Any] = {"product_id": product}
        if name == "Product Added":
            price = PRICES[product]  # one price per product (the oracle's data)
            properties |= {"price": price, "quantity": rng.randint(1, 2)}
        elif name == "Order Completed":
            properties = {"revenue": 55}
        messages.append({
            "type": "track", "userId": customer, "event": name, "properties": properties,
            "messageId": f"{customer}-{len(messages)}", "at": at,
        })  # fmt: skip
        at += rng.choice([rng.randint(2_000, 20_000), rng.randint(1 * MINUTE, 9 * MINUTE)])
    return messages


def as_sent(message: dict[str, Any], skew_ms: int, sent_at: int) -> dict[str, Any]:
    """The message as its device sends it: with its real time when ``skew_ms`` is 0, else with
    a device clock ``skew_ms`` off (``originalTimestamp`` and ``sentAt``, corrected on arrival
    as Segment does)."""
    sent = {k: v for k, v in message.items() if k != "at"}
    if skew_ms == 0:
        sent["timestamp"] = iso(message["at"])
    else:
        sent["originalTimestamp"] = iso(message["at"] + skew_ms)
        sent["sentAt"] = iso(sent_at + skew_ms)
    return sent


def test_live_traffic_with_late_events_skewed_clocks_and_a_future_timestamp(
    segflow: RunningSegflow,
) -> None:
    rng = random.Random(23)
    start = now_ms()
    customers = one_partition("live-", 10)
    offline, waiter, attacker = customers[:8], customers[8], customers[9]
    skews = {c: rng.choice([0, 3 * HOUR, -2 * DAY]) for c in offline}
    # Phones that were offline for most of an hour send their queues, each event up to 4 min
    # after later ones of its customer (within the allowed lateness of 5 min): deadlines
    # past many of these instants have fired by the wall clock before they come.
    history = [m for c in offline for m in shopping(rng, c, start - 45 * MINUTE, start - MINUTE)]
    order = sorted(history, key=lambda m: m["at"] + rng.uniform(0, 4 * MINUTE))
    # The waiter's cart becomes abandoned 20 s from now (after the sends below, which take a
    # few seconds); the attacker, in the same partition, dates its events 23 h ahead just after.
    due = start + 20_000
    cart: dict[str, Any] = {
        "type": "track", "userId": waiter, "event": "Product Added", "messageId": "w-add",
        "properties": {"product_id": "p1", "price": 20}, "at": due - 30 * MINUTE,
    }  # fmt: skip
    future: list[dict[str, Any]] = [
        {"type": "track", "userId": attacker, "event": name, "messageId": f"x-{n}",
         "properties": {"product_id": "p9", "price": 5}, "timestamp": iso(start + 23 * HOUR)}
        for n, name in enumerate(["Product Viewed", "Product Added"])
    ]  # fmt: skip

    def send(messages: list[dict[str, Any]]) -> None:
        answer = httpx.post(
            f"{segflow.url}/v1/batch",
            json={"batch": messages},
            auth=(segflow.write_key, ""),
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["accepted"] == len(messages), answer.text

    for part in range(3):  # in three rounds, the dataflow caught up between them
        for at in range(part * len(order) // 3, (part + 1) * len(order) // 3, 10):
            chunk = order[at : min(at + 10, (part + 1) * len(order) // 3)]
            send([as_sent(m, skews[m["userId"]], now_ms()) for m in chunk])
        if part == 0:
            send([as_sent(cart, 0, now_ms())])
            send(future)
        wait_for(lambda: segflow.status()["lag"] == 0, timeout_s=120, what="caught up")

    # Past the waiter's deadline: every transition up to now is settled.
    wait_for(lambda: now_ms() > due + 2_000, timeout_s=120)
    horizon = now_ms()
    stored = {e.message_id: e for e in stored_events(segflow.redis, PARTITIONS)}
    ahead = [stored[m["messageId"]] for m in future]
    assert all(e.timestamp == e.received_at < e.future_timestamp for e in ahead)  # type: ignore[operator]
    for m in history:  # each device's clock is corrected to within the send's own delay
        assert 0 <= stored[m["messageId"]].timestamp - m["at"] < 30_000
    # The oracle reads the times the collector stored (skew corrected, the future clamped).
    messages = [
        {**m, "timestamp": iso(stored[m["messageId"]].timestamp)} for m in [*history, cart, *future]
    ]
    expected = {
        customer: kept
        for customer, changes in oracle_transitions(messages).items()
        if (kept := [c for c in changes if c[3] <= horizon])
    }
    assert "cart-abandoners" in {c[1] for c in expected[waiter]}
    events = raw_events(messages)
    deadline = time.monotonic() + 120
    while True:
        read_at = now_ms()
        got = segflow.transitions(customers)
        assert all(c[3] <= read_at for changes in got.values() for c in changes), got
        got = {k: kept for k, v in got.items() if (kept := [c for c in v if c[3] <= horizon])}
        if got == expected:
            break
        if time.monotonic() > deadline:
            pytest.fail(mismatch_report(expected, got, events), pytrace=False)
        time.sleep(1)

    # No deadline fired before its time by the wall clock: each trigger (cart-abandoners'
    # enter sends a reminder) was appended at or after its transition's instant.
    triggers = cast(StreamEntries, segflow.redis.xrange("triggers"))
    ours = [
        (int(entry_id.split(b"-")[0]), fields[b"customer_id"].decode(), int(fields[b"at"]))
        for entry_id, fields in triggers
        if fields[b"customer_id"].decode() in customers
    ]
    assert waiter in {customer for _, customer, _ in ours}
    for appended, customer, at in ours:
        assert appended >= at, (customer, at, appended)
