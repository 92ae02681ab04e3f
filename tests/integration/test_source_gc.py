"""The dataflow's process collects garbage between a worker's reads, not in the middle of one:
Python's own collector is set high (a backstop), and the source collects once enough was
allocated since the last time (``collect_between_reads``)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
import redis

from pipelines.segmentation import FLOW_GC_THRESHOLD
from pipelines.sources import YOUNG_COLLECTED, RedisStreamSource
from tests.conftest import Services


class _Node:
    """Cyclic garbage: freed only by a collection."""

    def __init__(self) -> None:
        self.itself = self


@pytest.fixture
def flow_collector() -> Iterator[None]:
    """The collector set as the dataflow's process sets it, with nothing young pending."""
    thresholds = gc.get_threshold()
    gc.set_threshold(*FLOW_GC_THRESHOLD)
    gc.collect()
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)


def _garbage(freed: list[str], name: str) -> None:
    node = _Node()
    weakref.finalize(node, freed.append, name)


def test_garbage_of_a_read_is_collected_at_the_next_once_enough_was_allocated(
    services: Services, redis_client: redis.Redis, flow_collector: None
):
    source = RedisStreamSource(services.redis_url, 1)
    partition = source.build_part("input", source.list_parts()[0], None)
    freed: list[str] = []
    try:
        _garbage(freed, "early")
        partition.next_batch()  # little allocated since the last collection: none now
        assert freed == []

        kept: list[list[int]] = [[] for _ in range(YOUNG_COLLECTED)]  # a read's worth of survivors
        assert freed == []  # Python's own collector did not run (its threshold is higher)
        partition.next_batch()
        assert freed == ["early"]
        assert len(kept) == YOUNG_COLLECTED
    finally:
        partition.close()
