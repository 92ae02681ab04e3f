"""Where cluster data lives.

- Redis: the published model (``MODEL_KEY``, JSON; ``VERSION_KEY`` its version, which the
  dataflow polls), each cluster's members (the dataflow's sink keeps them as the pseudo-segment
  ``cluster:<id>``, next to the segments' member sets), and ``MOVES_KEY``: when each customer
  last moved from one cluster to another (score = event time), for the turnover.
- SQL: every refit (``ClusterRefit``: candidates, quality, the model) and marketers' names
  (``ClusterName``).
- With ``SEGFLOW_CLUSTERING=stream``: ``SNAPSHOTS_KEY``, a capped stream of the feature
  snapshots' column inputs the sink writes (``columns.INPUTS``, no customer id), which the
  stream clusterer (``stream``) learns from.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

from app.clock import now_ms
from app.clustering.model import ClusterModel, membership
from app.features import profile_features
from app.profiles.keys import CLUSTER_MOVES_KEY, members_key

MODEL_KEY = "clusters:model"
VERSION_KEY = "clusters:version"
VERSIONS_KEY = "clusters:versions"  # INCR: the next model version
NEXT_ID_KEY = "clusters:next_id"  # INCR: the number of the next fresh cluster id
MOVES_KEY = CLUSTER_MOVES_KEY  # customer id -> event time of their last move between clusters
REFIT_LOCK_KEY = "clusters:refit-lock"
PROFILE_PATTERN = "profile:*"
SNAPSHOTS_KEY = "clusters:snapshots"
SNAPSHOT_ROWS_PER_ENTRY = 100  # snapshots per stream entry (one JSON list of rows)
SNAPSHOT_ENTRIES_KEPT = 1_000  # about: so at most about 100,000 snapshots wait in Redis


def publish(client: redis.Redis, model: ClusterModel) -> None:
    """Make ``model`` the one the dataflow assigns by (it polls ``VERSION_KEY``)."""
    pipe = client.pipeline(transaction=True)
    pipe.set(MODEL_KEY, orjson.dumps(model.shown()))
    pipe.set(VERSION_KEY, model.version)
    pipe.execute()


def publish_over(client: redis.Redis, model: ClusterModel, expected: int | None) -> bool:
    """Publish ``model`` only if the published version is still ``expected`` (nothing else
    published meanwhile: a batch refit or a rename wins over the stream clusterer)."""
    with client.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(VERSION_KEY)  # type: ignore[no-untyped-call]
            raw = pipe.get(VERSION_KEY)
            if (None if raw is None else int(raw)) != expected:
                return False
            pipe.multi()
            pipe.set(MODEL_KEY, orjson.dumps(model.shown()))
            pipe.set(VERSION_KEY, model.version)
            pipe.execute()
        except redis.WatchError:
            return False
    return True


def published(client: redis.Redis) -> ClusterModel | None:
    raw = client.get(MODEL_KEY)
    return None if raw is None else ClusterModel.from_shown(orjson.loads(raw))


async def published_async(client: aioredis.Redis) -> ClusterModel | None:
    raw = await client.get(MODEL_KEY)
    return None if raw is None else ClusterModel.from_shown(orjson.loads(raw))


def published_version(client: redis.Redis) -> int | None:
    raw = client.get(VERSION_KEY)
    return None if raw is None else int(raw)


def next_version(client: redis.Redis) -> int:
    return int(client.incr(VERSIONS_KEY))


def next_id_number(client: redis.Redis, at_least: int) -> int:
    """The number of the next fresh id: never one used before, even after Redis was emptied
    (``at_least``: one past the highest number the refits in SQL used)."""
    current = int(client.get(NEXT_ID_KEY) or 0)
    return max(current, at_least, 1)


def used_id_numbers(client: redis.Redis, upto: int) -> None:
    client.set(NEXT_ID_KEY, upto)


def sample_profiles(
    client: redis.Redis,
    most: int,
    *,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[str], list[dict[str, Any]]]:
    """Up to ``most`` profiles chosen uniformly (reservoir sampling over a SCAN of every
    profile key: a batch job's read, never a page's): their ids and features."""
    rng = random.Random(seed)
    chosen: list[bytes] = []
    seen = 0
    for seen, key in enumerate(client.scan_iter(match=PROFILE_PATTERN, count=2_000), 1):
        if len(chosen) < most:
            chosen.append(key)
        else:
            slot = rng.randrange(seen)
            if slot < most:
                chosen[slot] = key
        if progress is not None and seen % 10_000 == 0:
            progress(seen)
    ids: list[str] = []
    profiles: list[dict[str, Any]] = []
    for part in _chunks(chosen, 1_000):
        pipe = client.pipeline(transaction=False)
        for key in part:
            pipe.hmget(key, "customer_id", "features", "at", "changes")
        now = now_ms()
        for found in pipe.execute():
            customer_id, features, at, changes = found
            if customer_id is None or features is None:
                continue  # erased since the scan
            ids.append(customer_id.decode())
            record = {b"features": features, b"at": at, b"changes": changes}
            profiles.append(
                profile_features({k: v for k, v in record.items() if v is not None}, now)
            )
    return ids, profiles


def _chunks(items: list[bytes], size: int) -> Iterator[list[bytes]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def sizes(client: aioredis.Redis, ids: list[str]) -> list[int]:
    """Each cluster's members now (the sink's sets), in the order given."""
    pipe = client.pipeline(transaction=False)
    for cluster_id in ids:
        pipe.scard(members_key(membership(cluster_id)))
    found: list[int] = await pipe.execute()
    return found


async def turnover(client: aioredis.Redis, now: int, assigned: int) -> dict[str, Any]:
    """The share of assigned customers who moved between clusters in the last 24 hours."""
    moved = int(await client.zcount(MOVES_KEY, f"({now - 86_400_000}", now))
    share = round(moved / assigned, 4) if assigned else 0.0
    return {"moved_24h": moved, "assigned": assigned, "share_24h": share}
