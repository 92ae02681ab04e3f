"""Shard keys placed with their partition's reader (``pipelines.placement``); Bytewax's own
placement is checked by ``tests/integration/test_placement.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.placement import (
    ALIGNED_MODULUS,
    SHARDS_PER_PARTITION,
    mark_recovery_store,
    partition_rank,
    settle_recovery_store,
    shard_keys,
    worker_of_key,
    worker_of_partition,
)

WORKER_COUNTS = [w for w in range(1, 33) if ALIGNED_MODULUS % w == 0]


def test_keys_do_not_change_between_processes_or_releases():
    # recovery stores hold state under these: a change must come with a new layout (LAYOUT)
    assert shard_keys(0, 4)[:3] == ("shard-0005605", "shard-0009263", "shard-0013878")


@pytest.mark.parametrize("partitions", [1, 4, 16, 64])
def test_every_shard_is_with_its_partition_for_every_worker_count(partitions: int):
    keys = [shard_keys(p, partitions) for p in range(partitions)]
    assert all(len(k) == SHARDS_PER_PARTITION for k in keys)
    assert len({key for some in keys for key in some}) == partitions * SHARDS_PER_PARTITION
    for partition, some in enumerate(keys):
        for workers in WORKER_COUNTS:
            wanted = worker_of_partition(partition, partitions, workers)
            assert {worker_of_key(key, workers) for key in some} == {wanted}


def test_partitions_rank_as_their_names_sort():
    # "events:{10}" sorts before "events:{1}" ("0" before "}")
    assert [partition_rank(p, 12) for p in (0, 10, 11, 1, 2)] == [0, 1, 2, 3, 4]


def test_a_store_of_another_layout_is_set_aside(tmp_path: Path):
    store = tmp_path / "recovery"
    assert settle_recovery_store(store, 4, "t0") is None  # none yet
    store.mkdir()
    (store / "part-0.sqlite3").write_bytes(b"old")
    aside = settle_recovery_store(store, 4, "t1")  # no layout: from before aligned keys
    assert aside == tmp_path / "recovery.old-t1"
    assert (aside / "part-0.sqlite3").read_bytes() == b"old"
    assert not store.exists()
    store.mkdir()
    mark_recovery_store(store, 4)
    assert settle_recovery_store(store, 4, "t2") is None
    assert store.exists()
    assert settle_recovery_store(store, 16, "t3") == tmp_path / "recovery.old-t3"
