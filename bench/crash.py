"""Crash soak: events stream in while the dataflow is killed with SIGKILL again and again;
afterwards every profile must equal an uninterrupted run's, and every event must be counted once.

    .venv/bin/python bench/crash.py [--events 200000] [--kills 10] [--customers 5000]
"""

from __future__ import annotations

import argparse
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
from app.streams import PROGRESS_KEY  # noqa: E402
from tests.factories import processed_entries, shop_events  # noqa: E402
from tests.helpers import (  # noqa: E402
    append_with_kills,
    customer_profiles,
    pipeline_env,
    run_dataflow,
)

PARTITIONS = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--customers", type=int, default=5_000)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="segflow-bench-crash-"))
    server = EmbeddedRedis.ensure(work)
    client = redis.Redis.from_url(server.url)
    env = pipeline_env(server.url, work, PARTITIONS, SEGFLOW_SNAPSHOT_INTERVAL_S="1")
    now = time.time_ns() // 1_000_000 - 1_000
    events = shop_events(args.events, customers=args.customers, now=now, seed=3)

    started = time.perf_counter()
    append_with_kills(
        client,
        env,
        events,
        partitions=PARTITIONS,
        chunk=2_000,
        kills=args.kills,
        seed=17,
        pause_s=(0.0, 0.3),
        timeout_s=1_800,
    )
    elapsed = time.perf_counter() - started
    crashed = customer_profiles(client, args.customers)
    counted = processed_entries(client)

    for customer in crashed:
        client.delete(profile_key(customer))
    client.delete(PROGRESS_KEY)  # the uninterrupted run counts afresh
    settings = Settings(REDIS_URL=server.url, SEGFLOW_PARTITIONS=PARTITIONS)  # type: ignore[call-arg]
    run_dataflow(settings)
    clean = customer_profiles(client, args.customers)
    clean_counted = processed_entries(client)
    differing = sum(1 for c in clean.keys() | crashed.keys() if clean.get(c) != crashed.get(c))
    client.close()
    server.stop()

    print(
        f"\ncrash soak: {args.events:,} events, {args.customers:,} customers, "
        f"{args.kills} SIGKILLs, {elapsed:.0f} s"
    )
    print("| check | crashed run | uninterrupted run |")
    print("|---|---|---|")
    print(f"| events counted | {counted:,} | {clean_counted:,} |")
    print(f"| profiles | {len(crashed):,} | {len(clean):,} |")
    print(f"| profiles that differ from the uninterrupted run | {differing} | (reference) |")
    if differing or counted != args.events or clean_counted != args.events:
        raise SystemExit("the crashed run differs from the uninterrupted one")


if __name__ == "__main__":
    main()
