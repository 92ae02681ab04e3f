"""Crash soak: events stream in while the dataflow is killed with SIGKILL again and again;
afterwards every profile must equal an uninterrupted run's, and every event must be counted once.

    .venv/bin/python bench/crash.py [--events 200000] [--kills 10] [--customers 5000]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.profiles.keys import profile_key  # noqa: E402
from app.redis_server import EmbeddedRedis  # noqa: E402
from app.settings import Settings  # noqa: E402
from tests.factories import append_events, processed_entries, shop_events  # noqa: E402
from tests.helpers import run_dataflow  # noqa: E402

PARTITIONS = 4


def profiles(client: redis.Redis, customers: int) -> dict[str, dict[bytes, bytes]]:
    pipe = client.pipeline(transaction=False)
    for n in range(customers):
        pipe.hgetall(profile_key(f"c{n}"))
    return {f"c{n}": p for n, p in enumerate(pipe.execute()) if p}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--customers", type=int, default=5_000)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="segflow-bench-crash-"))
    server = EmbeddedRedis.ensure(work)
    client = redis.Redis.from_url(server.url)
    env = {
        **os.environ,
        "REDIS_URL": server.url,
        "SEGFLOW_DATA_DIR": str(work),
        "SEGFLOW_PARTITIONS": str(PARTITIONS),
        "SEGFLOW_SNAPSHOT_INTERVAL_S": "1",
    }
    rng = random.Random(17)
    now = time.time_ns() // 1_000_000 - 1_000
    events = shop_events(args.events, customers=args.customers, now=now, seed=3)
    chunks = [events[i : i + 2_000] for i in range(0, len(events), 2_000)]
    kill_after = set(rng.sample(range(1, len(chunks)), args.kills))

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", "pipeline"], env=env, cwd=ROOT, start_new_session=True
        )

    started = time.perf_counter()
    pipeline = start()
    kills = 0
    try:
        for index, chunk in enumerate(chunks):
            append_events(client, chunk, PARTITIONS)
            time.sleep(rng.uniform(0.0, 0.3))
            if index in kill_after:
                time.sleep(rng.uniform(0.0, 1.5))
                os.killpg(pipeline.pid, signal.SIGKILL)
                pipeline.wait()
                kills += 1
                pipeline = start()
        while processed_entries(client) < args.events:
            if pipeline.poll() is not None:
                raise SystemExit(f"the dataflow exited with {pipeline.returncode}")
            time.sleep(0.2)
        time.sleep(2)
        crashed = profiles(client, args.customers)
        counted = processed_entries(client)
    finally:
        os.killpg(pipeline.pid, signal.SIGKILL)
        pipeline.wait()
    elapsed = time.perf_counter() - started

    for customer in crashed:
        client.delete(profile_key(customer))
    settings = Settings(REDIS_URL=server.url, SEGFLOW_PARTITIONS=PARTITIONS)  # type: ignore[call-arg]
    run_dataflow(settings)
    clean = profiles(client, args.customers)
    differing = sum(1 for c in clean.keys() | crashed.keys() if clean.get(c) != crashed.get(c))
    client.close()
    server.stop()

    print(
        f"\ncrash soak: {args.events:,} events, {args.customers:,} customers, "
        f"{kills} SIGKILLs, {elapsed:.0f} s"
    )
    print("| check | crashed run | uninterrupted run |")
    print("|---|---|---|")
    print(f"| events counted | {counted:,} | {args.events:,} |")
    print(f"| profiles | {len(crashed):,} | {len(clean):,} |")
    print(f"| profiles that differ | {differing} | 0 |")
    if differing or counted != args.events:
        raise SystemExit("the crashed run differs from the uninterrupted one")


if __name__ == "__main__":
    main()
