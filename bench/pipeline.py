"""Dataflow throughput, state size and delay, next to a pass-through floor in the same run.

1. Throughput: EVENTS events are put in the streams, then the dataflow runs over them as
   `segflow pipeline` runs it (bytewax.run, recovery on) until caught up. The floor is the same
   source and the same sink with no feature logic (each event written as an empty profile),
   under the same recovery settings.
   Each is timed as its run over the events less its run over empty streams, so process
   start-up is not counted.
2. State: the size of the shards' latest recovery snapshots divided by the customers in them.
3. Delay: the dataflow runs live while events are appended at RATE events/s; every 100th event
   is a probe with a customer of its own, and the time from its XADD to its profile being
   visible in Redis is recorded.

    .venv/bin/python bench/pipeline.py [--events 200000] [--rate 10000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.profiles.keys import profile_key  # noqa: E402
from app.redis_server import EmbeddedRedis  # noqa: E402
from app.streams import EVENT_FIELD, partition_of, stream_key  # noqa: E402
from tests.factories import append_events, processed_entries, stored_event  # noqa: E402

PARTITIONS = 4
CUSTOMERS = 20_000
NAMES = ["Product Viewed"] * 5 + ["Product Added", "Checkout Started", "Order Completed"]


def event(n: int, now: int, customer: str | None = None) -> dict[str, Any]:
    return stored_event(
        message_id=f"m{n}-{now}",
        customer=customer or f"c{(n * 7919) % CUSTOMERS}",
        name=NAMES[n % len(NAMES)],
        at=now,
        properties={
            "product_id": f"p{n % 97}",
            "price": 12.5,
            "quantity": 1,
            "revenue": 30.0,
            "category": ["shoes", "bags", "hats"][n % 3],
        },
        source="bench",
    )


def run_flow(url: str, flow: str, recovery: Path) -> float:
    """Run ``flow`` over the streams until caught up; its wall time in seconds."""
    env = {
        **os.environ,
        "REDIS_URL": url,
        "SEGFLOW_PARTITIONS": str(PARTITIONS),
        "SEGFLOW_STOP_AT_END": "1",
    }
    from bytewax.recovery import init_db_dir

    recovery.mkdir()
    init_db_dir(recovery, 1)  # type: ignore[no-untyped-call]
    argv = [sys.executable, "-m", "bytewax.run", flow, "-r", str(recovery), "-s", "2", "-b", "0"]
    started = time.perf_counter()
    subprocess.run(argv, env=env, cwd=ROOT, check=True)
    return time.perf_counter() - started


def timed(
    url: str, client: redis.Redis, events: list[dict[str, Any]], flow: str, recovery: Path
) -> float:
    """Seconds the flow spends on ``events``: its run over them less its run over nothing
    (process start-up and the last idle tick are the same in both)."""
    client.flushdb()
    empty = run_flow(url, flow, recovery.with_name(f"{recovery.name}-empty"))
    client.flushdb()
    append_events(client, events, PARTITIONS)
    return run_flow(url, flow, recovery) - empty


def floor_flow() -> Any:
    """Same source, same sink, no features: every event becomes an empty profile."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow

    from pipelines.records import ProfileUpdate
    from pipelines.sinks import ProfileSink
    from pipelines.sources import RedisStreamSource, StreamEvent

    url = os.environ["REDIS_URL"]
    flow = Dataflow("floor")
    items = op.input("events", flow, RedisStreamSource(url, PARTITIONS, stop_at_end=True))
    updates = op.filter_map(
        "pass",
        items,
        lambda i: (
            ProfileUpdate(i.event["customer_id"], i.event["timestamp"], {}, {})
            if isinstance(i, StreamEvent)
            else None
        ),
    )
    op.output("profiles", updates, ProfileSink(url))
    return flow


def state_bytes_per_customer(recovery: Path) -> tuple[float, int]:
    with sqlite3.connect(recovery / "part-0.sqlite3") as db:
        rows = db.execute(
            "SELECT step_id, state_key, ser_change FROM snaps s WHERE snap_epoch = "
            "(SELECT max(snap_epoch) FROM snaps t WHERE t.step_id = s.step_id "
            "AND t.state_key = s.state_key) AND step_id LIKE '%features%'"
        ).fetchall()
    import pickle

    total = sum(len(blob or b"") for _, _, blob in rows)
    customers = sum(len(pickle.loads(blob)) for _, _, blob in rows if blob)  # noqa: S301
    return total / max(customers, 1), customers


def delay_run(url: str, client: redis.Redis, rate: int, seconds: float) -> tuple[list[float], int]:
    """The delays of the probes seen within 10 s after the run, and how many were sent."""
    env = {**os.environ, "REDIS_URL": url, "SEGFLOW_PARTITIONS": str(PARTITIONS)}
    process = subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "pipelines.segmentation:flow_from_env()"],
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    # Start the clock once the dataflow answers: a first profile written, not a guessed sleep.
    warm = event(0, time.time_ns() // 1_000_000, "warm-up")
    client.xadd(stream_key(partition_of("warm-up", PARTITIONS)), {EVENT_FIELD: orjson.dumps(warm)})
    ready_by = time.monotonic() + 60
    while not client.exists(profile_key("warm-up")):
        if time.monotonic() > ready_by:
            raise SystemExit("the dataflow wrote no profile within 60 s")
        time.sleep(0.05)
    sent: dict[str, float] = {}
    delays: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        watcher = redis.Redis.from_url(url)
        while not stop.is_set() or sent:
            pending = list(sent.items())
            if pending:
                pipe = watcher.pipeline(transaction=False)
                for probe, _ in pending:
                    pipe.exists(profile_key(probe))
                seen = time.perf_counter()
                for (probe, at), exists in zip(pending, pipe.execute(), strict=True):
                    if exists:
                        delays.append(seen - at)
                        sent.pop(probe, None)
            time.sleep(0.002)
            if stop.is_set() and time.perf_counter() > deadline:
                break

    deadline = float("inf")
    thread = threading.Thread(target=watch)
    thread.start()
    per_tick = rate // 100  # appended every 10 ms
    started = time.perf_counter()
    n = probes = 0
    while time.perf_counter() - started < seconds:
        now = time.time_ns() // 1_000_000
        pipe = client.pipeline(transaction=False)
        for _ in range(per_tick):
            probe = f"probe-{n}" if n % 100 == 0 else None
            item = event(n, now, probe)
            pipe.xadd(
                stream_key(partition_of(item["customer_id"], PARTITIONS)),
                {EVENT_FIELD: orjson.dumps(item)},
            )
            n += 1
        sent_at = time.perf_counter()
        pipe.execute()
        for k in range(n - per_tick, n):
            if k % 100 == 0:
                sent[f"probe-{k}"] = sent_at
                probes += 1
        time.sleep(max(0.0, started + (n / rate) - time.perf_counter()))
    deadline = time.perf_counter() + 10
    stop.set()
    thread.join()
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return delays, probes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="segflow-bench-pipeline-"))
    server = EmbeddedRedis.ensure(work) if not os.environ.get("REDIS_URL") else None
    url = os.environ.get("REDIS_URL") or (server.url if server else "")
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
        now = time.time_ns() // 1_000_000
        events = [event(n, now - (args.events - n)) for n in range(args.events)]
        # both under the same recovery settings: snapshot cost is no feature cost
        floor_s = timed(url, client, events, "bench.pipeline:floor_flow()", work / "floor")
        recovery = work / "recovery"
        flow_s = timed(url, client, events, "pipelines.segmentation:flow_from_env()", recovery)
        assert processed_entries(client) == args.events
        per_customer, customers = state_bytes_per_customer(recovery)
        client.flushdb()
        delays, probes = delay_run(url, client, args.rate, args.seconds)
    finally:
        client.close()
        if server is not None:
            server.stop()

    floor_rate, flow_rate = args.events / floor_s, args.events / flow_s
    print(
        f"\ndataflow benchmark: {args.events:,} events, {CUSTOMERS:,} customers, "
        f"{PARTITIONS} partitions, 1 worker, recovery on (-s 2), {os.cpu_count()} cores"
    )
    print("| path | events/s | ratio to floor |")
    print("|---|---|---|")
    print(f"| floor: source -> sink, no features | {floor_rate:,.0f} | 1.00 |")
    print(f"| source -> features -> sink | {flow_rate:,.0f} | {flow_rate / floor_rate:.2f} |")
    print(f"\nrecovery state: {per_customer:,.0f} bytes per customer ({customers:,} customers)")
    if delays:
        p50 = statistics.median(delays) * 1000
        p99 = statistics.quantiles(delays, n=100)[98] * 1000 if len(delays) > 1 else p50
        print(
            f"XADD -> profile visible at {args.rate:,} events/s: p50 {p50:.0f} ms, "
            f"p99 {p99:.0f} ms ({len(delays)} of {probes} probes seen within 10 s)"
        )


if __name__ == "__main__":
    main()
