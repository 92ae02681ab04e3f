"""Event time through the product's own commands: `segflow up` running, `segflow replay` of a
shop's history into it, and every customer's transitions, read from the admin API, compared
with the oracle's (``tests/oracle.py``).

The replay is paused half-way (SIGSTOP) until the dataflow has caught up and read empty
streams for a while: a clock that jumped to the wall clock on an empty read would fire
"first order + 30 days" for customers replayed only to their second day. The dataflow is
killed (SIGKILL) in that pause; `segflow up` restarts it from its recovery state. Then a second
file, an older history of other customers, is replayed after the first (a backfill): its lane
keeps its own clock, so the first history's deadlines, long fired, change nothing in it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from app.streams import stream_key
from tests.helpers import SEGFLOW, children, start_segflow, wait_for, wait_for_line
from tests.oracle import Change, event_time_ms, mismatch_report, oracle_transitions, raw_events
from tests.personas import DAY, iso, shop_history

PARTITIONS = 4


@dataclass
class RunningSegflow:
    process: subprocess.Popen[str]
    url: str
    admin: dict[str, str]
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
        wait_for_line(process, r"Ctrl-C", seen)
        state = json.loads((tmp_path / "data" / "redis" / "server.json").read_text())
        client = redis.Redis(port=state["port"])
        yield RunningSegflow(
            process,
            f"http://127.0.0.1:{port}",
            {"Authorization": f"Bearer {token}"},
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
