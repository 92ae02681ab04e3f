"""Partition-aligned state against Bytewax's real placement: run with several workers (threads
of one process, or processes), every shard's state is on the worker that reads its partition,
so no event crosses between workers."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import redis

from app.cli import run_cluster
from app.settings import Settings
from pipelines.placement import shard_keys
from tests.factories import append_events, shop_events

FLOW = "tests.integration.placement_flow:flow()"
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.backend_independent
@pytest.mark.parametrize(
    ("partitions", "layout"),
    [(16, "2 workers"), (16, "3 workers"), (4, "2 processes"), (64, "2 processes")],
)
def test_each_shard_is_on_the_worker_that_reads_its_partition(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path, partitions: int, layout: str
):
    assert settings.redis_url
    now = time.time_ns() // 1_000_000
    append_events(redis_client, shop_events(3_000, customers=500, now=now, seed=3), partitions)
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url,
        "SEGFLOW_PARTITIONS": str(partitions),
        "PLACEMENT_DIR": str(tmp_path),
    }
    count = int(layout.split()[0])
    argv = [sys.executable, "-m", "bytewax.run", FLOW]
    if layout.endswith("workers"):
        assert run_cluster([*argv, "-w", str(count)], 1, env, cwd=ROOT) == 0
    else:
        assert run_cluster(argv, count, env, cwd=ROOT) == 0

    worker_of_partition: dict[int, str] = {}
    worker_of_shard: dict[str, str] = {}
    for log in tmp_path.glob("*.log"):
        for line in log.read_text().splitlines():
            kind, name = line.split()
            if kind == "partition":
                worker = worker_of_partition.setdefault(int(name), log.stem)
            else:
                worker = worker_of_shard.setdefault(name, log.stem)
            assert worker == log.stem, f"{kind} {name} on two workers"
    assert sorted(worker_of_partition) == list(range(partitions))
    assert len(set(worker_of_partition.values())) == count  # every worker reads partitions
    assert worker_of_shard, "no shard saw an event"
    for partition in range(partitions):
        for shard in shard_keys(partition, partitions):
            if shard in worker_of_shard:
                assert worker_of_shard[shard] == worker_of_partition[partition], shard
