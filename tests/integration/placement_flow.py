"""The flow ``test_placement`` runs under ``bytewax.run``: the dataflow's own source and route
step, and a stateful step keyed as the dataflow's, each writing which worker (process and
thread) it ran for which partition or shard key, one file per worker in ``PLACEMENT_DIR``."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from bytewax.testing import TestingSink

from pipelines.segmentation import route_read
from pipelines.sources import RedisStreamSource, SourceItem


def _record(line: str) -> None:
    worker = f"{os.getpid()}-{threading.get_ident()}"
    with (Path(os.environ["PLACEMENT_DIR"]) / f"{worker}.log").open("a") as log:
        log.write(line + "\n")


def _route(batch: list[SourceItem], partitions: int) -> list[tuple[str, Any]]:
    for partition in {item.partition for item in batch}:
        _record(f"partition {partition}")
    return [(shard, (shard, items)) for shard, items in route_read(batch, partitions)]


class _Where(StatefulBatchLogic[Any, None, None]):
    def on_batch(self, values: list[Any]) -> tuple[Iterable[None], bool]:
        for shard in {shard for shard, _ in values}:
            _record(f"shard {shard}")
        return [], StatefulBatchLogic.RETAIN

    def snapshot(self) -> None:
        return None


def flow() -> Dataflow:
    partitions = int(os.environ["SEGFLOW_PARTITIONS"])
    source = RedisStreamSource(os.environ["REDIS_URL"], partitions, stop_at_end=True)
    flow = Dataflow("placement")
    items = op.input("events", flow, source)
    keyed: Any = op.flat_map_batch("route", items, lambda batch: _route(batch, partitions))
    seen = op.stateful_batch("features", keyed, lambda _: _Where())
    op.output("nothing", seen, TestingSink([]))
    return flow
