"""Redis memory per retained event, and its steady state while `segflow pipeline` trims.

    .venv/bin/python bench/retention.py [--events 100000] [--rate 1000] [--seconds 120]
                                        [--retention 20s]

First, ``--events`` shop events go in as the collector appends them (the append script: the
stream entry and the messageId's dedup key); Redis's memory per event is set against the
floor, the bytes of the event's JSON. Then `segflow pipeline` runs on a fresh Redis with
``SEGFLOW_STREAM_RETENTION=--retention`` while events arrive at ``--rate`` per second for
``--seconds``: with trimming on, the streams' memory levels off at about rate x (retention +
the snapshot interval) events instead of growing with every event.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.durations import parse_duration_ms  # noqa: E402
from app.redis_server import EmbeddedRedis  # noqa: E402
from app.streams import APPEND_SCRIPT, SerializedEvent, plan_appends, stream_key  # noqa: E402
from tests.factories import shop_events  # noqa: E402
from tests.helpers import pipeline_env  # noqa: E402

PARTITIONS = 4
CUSTOMERS = 5_000
DEDUP_TTL_S = 86_400  # the default dedup window: its keys are part of an event's cost
STEADY_DEDUP_TTL_S = 60  # the steady run's dedup keys expire within it (the least allowed)
SAMPLE_EVERY_S = 10.0
CHUNK = 500


def append(client: redis.Redis, events: list[dict[str, object]], dedup_ttl_s: int) -> None:
    """As the collector does: one append script per partition, dedup keys included."""
    serialized = [
        SerializedEvent(str(e["customer_id"]), str(e["message_id"]), orjson.dumps(e), "bench")
        for e in events
    ]
    pipe = client.pipeline(transaction=False)
    for plan in plan_appends(serialized, partitions=PARTITIONS, dedup_ttl_s=dedup_ttl_s):
        pipe.eval(APPEND_SCRIPT, len(plan.keys), *plan.keys, *plan.args)
    pipe.execute()


def streams_bytes(client: redis.Redis) -> tuple[int, int]:
    """(entries, bytes) of the partitions' streams."""
    entries = size = 0
    for partition in range(PARTITIONS):
        key = stream_key(partition)
        entries += int(client.xlen(key))
        size += int(client.memory_usage(key, samples=0) or 0)
    return entries, size


def used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def per_event(count: int, work: Path) -> list[str]:
    server = EmbeddedRedis.ensure(work / "per-event")
    client = redis.Redis.from_url(server.url)
    try:
        now = time.time_ns() // 1_000_000
        events = shop_events(count, customers=CUSTOMERS, now=now, seed=11)
        payload = sum(len(orjson.dumps(e)) for e in events) / count
        before = used(client)
        for start in range(0, count, CHUNK):
            append(client, events[start : start + CHUNK], DEDUP_TTL_S)
        total = (used(client) - before) / count
        entries, size = streams_bytes(client)
        stream = size / entries
        dedup = total - stream
    finally:
        client.close()
        server.stop()
    return [
        f"\nmemory per retained event: {count:,} shop events appended as the collector does",
        "| what | bytes per event | per million events | ratio to the floor |",
        "|---|---|---|---|",
        f"| the event's JSON (floor) | {payload:,.0f} | {payload:,.0f} MB | 1.00 |",
        f"| stream entry (`events:{{p}}`) | {stream:,.0f} | {stream:,.0f} MB | "
        f"{stream / payload:.2f} |",
        f"| dedup key (kept SEGFLOW_DEDUP_WINDOW_S) | {dedup:,.0f} | {dedup:,.0f} MB | "
        f"{dedup / payload:.2f} |",
        f"| Redis used_memory, all of it | {total:,.0f} | {total:,.0f} MB | "
        f"{total / payload:.2f} |",
    ]


def steady(rate: int, seconds: float, retention: str, work: Path) -> list[str]:
    server = EmbeddedRedis.ensure(work / "steady")
    client = redis.Redis.from_url(server.url)
    env = pipeline_env(
        server.url,
        work / "steady-data",
        PARTITIONS,
        SEGFLOW_SNAPSHOT_INTERVAL_S="1",
        SEGFLOW_TRIM_INTERVAL_S="1",
        SEGFLOW_STREAM_RETENTION=retention,
    )
    flow = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "pipeline"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    rows = []
    sent = 0
    try:
        started = time.monotonic()
        next_sample = started
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(elapsed * rate) - sent
            if due > 0:
                now = time.time_ns() // 1_000_000
                events = shop_events(due, customers=CUSTOMERS, now=now, seed=sent)
                events = [{**e, "message_id": f"s{sent + n}"} for n, e in enumerate(events)]
                append(client, events, STEADY_DEDUP_TTL_S)
                sent += due
            if time.monotonic() >= next_sample:
                entries, size = streams_bytes(client)
                rows.append((elapsed, sent, entries, size, used(client)))
                next_sample += SAMPLE_EVERY_S
            time.sleep(0.05)
        entries, size = streams_bytes(client)
        rows.append((time.monotonic() - started, sent, entries, size, used(client)))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(flow.pid, signal.SIGTERM)
        flow.wait()
        client.close()
        server.stop()
    bound = rate * (parse_duration_ms(retention) / 1000 + 2)
    lines = [
        f"\nsteady state: {rate:,} events/s for {seconds:.0f} s, "
        f"SEGFLOW_STREAM_RETENTION={retention}, dedup keys expiring after "
        f"{STEADY_DEDUP_TTL_S} s",
        "| at (s) | events sent | events retained | streams (MB) | Redis used_memory (MB) "
        "| retained / (rate x (retention + 2 s)) |",
        "|---|---|---|---|---|---|",
    ]
    for at, total, entries, size, memory in rows:
        lines.append(
            f"| {at:.0f} | {total:,} | {entries:,} | {size / 1e6:.1f} | {memory / 1e6:.1f} "
            f"| {entries / bound:.2f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=1_000)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--retention", default="20s")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="segflow-bench-retention-"))
    lines = per_event(args.events, work)
    lines += steady(args.rate, args.seconds, args.retention, work)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
