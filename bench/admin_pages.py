"""Server time of the admin UI's pages with a large store behind them.

    .venv/bin/python bench/admin_pages.py [--profiles 100000] [--rules 20] [--requests 200]

A fresh embedded Redis and SQLite file get ``--profiles`` customer profiles, ``--rules`` rules
(the shipped ones and generated ones), each segment's members (about 5 % of the customers),
a week of its size history at minute resolution and ``--moves`` enters and as many exits over
its last 2 days (the sink keeps at most 50,000 of each). Then a real API server on loopback is
asked for each page ``--requests`` times, one after another, by a logged-in client; the time
of each answer is measured from the request to its last byte. The floor is ``/healthz`` over
the same server and client in the same run: what any answer costs. Redis's own counters say
how many SCAN calls the pages made (a page that scans all profiles to draw itself would show
here).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis
from sqlmodel import Session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import migrate  # noqa: E402
from app.credentials import create_admin_token  # noqa: E402
from app.db import make_engine, session_scope  # noqa: E402
from app.main import create_app  # noqa: E402
from app.profiles.history import MINUTE_MS, history_key  # noqa: E402
from app.profiles.keys import members_key, moves_key, profile_key, recent_events_key  # noqa: E402
from app.profiles.moves import KEEP_MS, member  # noqa: E402
from app.redis_server import EmbeddedRedis  # noqa: E402
from app.rules import store  # noqa: E402
from app.rules.active import seed  # noqa: E402
from app.settings import Settings  # noqa: E402
from tests.helpers import ServerThread  # noqa: E402

CHUNK = 2_000
SAMPLED = 200  # customers whose pages are asked for (each with recent events)


def generated_rule(n: int) -> str:
    threshold = 1 + n % 7
    return (
        f"id: generated-{n}\nname: Generated {n}\nwhen:\n  all:\n"
        f"    - feature: events_total\n      gte: {threshold}\n"
        f"    - count: {{event: Product Viewed, within: {10 + n}m}}\n      gte: 1\n"
    )


def load_rules(settings: Settings, count: int) -> list[str]:
    engine = make_engine(settings)
    with session_scope(engine) as session:
        seed(session=session)
    with session_scope(engine) as session:
        have = [r.id for r in store.current_rules(session=session)]
        for n in range(max(0, count - len(have))):
            store.create_rule(
                session=session,
                text=generated_rule(n),
                media_type="application/yaml",
                author="bench",
                examples=lambda *_a, **_k: [],
            )
    with Session(engine) as session:
        ids = [r.id for r in store.current_rules(session=session)]
    engine.dispose()
    return ids


def load_profiles(client: redis.Redis, profiles: int, segments: list[str], now: int) -> None:
    features = {
        "events_total": 12,
        "cart_value": 40.0,
        "cart_items": 2,
        "count(Product Viewed, 10m)": 3,
        "sum(Order Completed.revenue, 1w)": 120.0,
    }
    for start in range(0, profiles, CHUNK):
        pipe = client.pipeline(transaction=False)
        for n in range(start, min(profiles, start + CHUNK)):
            customer = f"c{n}"
            pipe.hset(
                profile_key(customer),
                mapping={
                    "features": orjson.dumps(features),
                    "traits": orjson.dumps({"plan": "pro" if n % 3 else "free"}),
                    "segments": orjson.dumps(
                        [s for i, s in enumerate(segments) if (n + i) % 20 == 0]
                    ),
                    "at": now,
                    "first_seen": now - 86_400_000,
                    "last_seen": now,
                },
            )
            for i, segment in enumerate(segments):
                if (n + i) % 20 == 0:
                    pipe.sadd(members_key(segment), customer)
            if n < SAMPLED:
                for k in range(20):
                    event = {
                        "type": "track",
                        "event": "Product Viewed",
                        "timestamp": now - k,
                        "properties": {"product_id": f"p{k}"},
                    }
                    pipe.zadd(recent_events_key(customer), {orjson.dumps(event): now - k})
        pipe.execute()


def load_history(client: redis.Redis, segments: list[str], now: int, sizes: int) -> None:
    start = now - now % MINUTE_MS - 7 * 1440 * MINUTE_MS
    for segment in segments:
        pipe = client.pipeline(transaction=False)
        for m in range(7 * 1440):
            at = start + m * MINUTE_MS
            # as the recorder writes them: judged (here none an anomaly)
            pipe.zadd(history_key(segment, "minute"), {f"{at}:{sizes + m % 13}:0": at})
        pipe.execute()


def load_moves(client: redis.Redis, segments: list[str], now: int, moves: int) -> None:
    """``moves`` enters and as many exits per segment, spread over the 2 days the sink keeps."""
    step = KEEP_MS // max(moves, 1)
    for segment in segments:
        for kind in ("enter", "exit"):
            for start in range(0, moves, CHUNK):
                batch = {
                    member(f"c{n}", now - n * step, 1): now - n * step
                    for n in range(start, min(moves, start + CHUNK))
                }
                client.zadd(moves_key(segment, kind), batch)


def log_in(client: httpx.Client, token: str) -> None:
    form = client.get("/admin/login").text
    (nonce,) = re.findall(r'name="nonce" value="([^"]+)"', form)
    answer = client.post("/admin/login", data={"token": token, "nonce": nonce})
    assert answer.status_code == 303, answer.text


def timed(client: httpx.Client, paths: list[str]) -> list[float]:
    """Milliseconds of each request, in turn."""
    found = []
    for path in paths:
        started = time.perf_counter()
        answer = client.get(path)
        found.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200, (path, answer.status_code)
    return found


def scans(client: redis.Redis) -> int:
    stats: Any = client.info("commandstats")
    return int(stats.get("cmdstat_scan", {}).get("calls", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--rules", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--moves", type=int, default=50_000, help="enters (and exits) a segment")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder)
        server = EmbeddedRedis.ensure(data)
        try:
            settings = Settings(REDIS_URL=server.url, SEGFLOW_DATA_DIR=data, SEGFLOW_PARTITIONS=4)  # type: ignore[call-arg]
            migrate.upgrade(settings)
            client = redis.Redis.from_url(server.url)
            now = int(time.time() * 1000)
            loading = time.perf_counter()
            segments = load_rules(settings, options.rules)
            load_profiles(client, options.profiles, segments, now)
            load_history(client, segments, now, options.profiles // 20)
            load_moves(client, segments, now, options.moves)
            print(
                f"loaded {options.profiles:,} profiles, {len(segments)} rules, a week of size "
                f"history and {options.moves:,} enters and exits each "
                f"in {time.perf_counter() - loading:.0f} s"
            )
            engine = make_engine(settings)
            with session_scope(engine) as session:
                token = create_admin_token(session=session, name="bench")
            engine.dispose()
            run(settings, client, token, segments, options.requests)
        finally:
            server.stop()


def run(
    settings: Settings, client: redis.Redis, token: str, segments: list[str], requests: int
) -> None:
    with (
        ServerThread(create_app(settings)) as api,
        httpx.Client(  # the bearer token for the API's page; the pages use the session
            base_url=api.url, timeout=60, headers={"Authorization": f"Bearer {token}"}
        ) as browser,
    ):
        log_in(browser, token)
        customers = [f"/admin/customers/c{n % SAMPLED}" for n in range(requests)]
        pages = {
            "/healthz (floor)": ["/healthz"] * requests,
            "overview (its live figures)": ["/admin/overview/stats"] * requests,
            "segments (all, a day's history and move counts each)": ["/admin/segments"] * requests,
            "the segments API (sizes and move counts)": ["/api/segments"] * requests,
            "a segment (chart of a day, 50 members, 50 transitions)": [
                f"/admin/segments/{segments[n % len(segments)]}" for n in range(requests)
            ],
            "a customer (every rule explained)": customers,
            "rules": ["/admin/rules"] * requests,
            "deliveries": ["/admin/deliveries"] * requests,
        }
        timed(browser, [p[0] for p in pages.values()])  # warm: imports, caches, connections
        before = scans(client)
        results = {name: timed(browser, paths) for name, paths in pages.items()}
        scanned = scans(client) - before
    floor = statistics.quantiles(results["/healthz (floor)"], n=20)[18]
    print("| page | requests | p50 ms | p95 ms | p95 / floor p95 |\n|---|---|---|---|---|")
    for name, times in results.items():
        p95 = statistics.quantiles(times, n=20)[18]
        print(
            f"| {name} | {len(times)} | {statistics.median(times):.1f} | {p95:.1f} | "
            f"{p95 / floor:.1f} |"
        )
    print(f"SCAN calls made by all these page loads: {scanned}")


if __name__ == "__main__":
    main()
