"""A replay of a million rows streams through bounded memory (``make test-slow``)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from app.streams import stream_key
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
    # The replay's own peak, from the kernel's accounting of that one child (RUSAGE_CHILDREN
    # would be the largest of every child this test run has waited for).
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        replay = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "replay", str(path)],
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
        _, status, usage = os.wait4(replay.pid, 0)
    replay.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    done = subprocess.CompletedProcess(
        replay.args, replay.returncode, out.read_text(), err.read_text()
    )
    peak_mib = usage.ru_maxrss / 1024
    assert done.returncode == 0, done.stderr
    assert f"accepted={distinct} duplicates={ROWS - distinct} failed=0" in done.stdout
    assert peak_mib < 400, f"replay peaked at {peak_mib:.0f} MiB for a {ROWS:,}-row file"
    client = redis.Redis.from_url(services.redis_url)
    stored = sum(client.xlen(stream_key(p)) for p in range(services.settings().partitions))
    assert stored == distinct
