"""A replay of a million rows streams through bounded memory (``make test-slow``)."""

from __future__ import annotations

import os
import random
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.conftest import Services

ROWS = 1_000_000
EVENTS = ("view", "view", "view", "addtocart", "transaction")


def write_retailrocket(path: Path, rows: int) -> int:
    """A RetailRocket-shaped file in shuffled time order; returns the distinct events in it."""
    rng = random.Random(11)
    orders = set()
    distinct = 0
    with path.open("w") as handle:
        handle.write("timestamp,visitorid,event,itemid,transactionid\n")
        for n in range(rows):
            event = rng.choice(EVENTS)
            visitor = rng.randrange(50_000)
            order = ""
            if event == "transaction":
                order = str(rng.randrange(rows // 4))
                if (visitor, order) in orders:
                    distinct -= 1  # one Order Completed per visitor and transaction
                orders.add((visitor, order))
            when = 1_433_221_332_117 + rng.randrange(10**9)
            handle.write(f"{when},{visitor},{event},{n},{order}\n")
            distinct += 1
    return distinct


@pytest.mark.slow
@pytest.mark.parametrize("services", ["embedded"], indirect=True)
def test_a_million_rows_replay_in_bounded_memory(services: Services, redis_client, tmp_path):
    path = tmp_path / "events.csv"
    distinct = write_retailrocket(path, ROWS)
    env = {**os.environ, "REDIS_URL": services.redis_url, "SEGFLOW_DATA_DIR": str(tmp_path)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "replay", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    peak_mib = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    assert done.returncode == 0, done.stderr
    assert f"accepted={distinct} duplicates={ROWS - distinct} failed=0" in done.stdout
    assert peak_mib < 400, f"replay peaked at {peak_mib:.0f} MiB for a {ROWS:,}-row file"
    stored = sum(redis.Redis.from_url(services.redis_url).xlen(f"events:{{{p}}}") for p in range(4))
    assert stored == distinct
