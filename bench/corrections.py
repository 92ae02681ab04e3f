"""What keeping live customers' history for corrections costs an in-order stream.

The same live stream (EVENTS events of CUSTOMERS customers in time order, at RATE events a
second) runs through one ``FeatureShard`` as the dataflow runs it: what arrives in each
snapshot interval is read at once with the live clock at its newest event, then the state is
snapshotted (``ShardState.freeze``, as Bytewax's snapshot calls it). And it runs through the
same shard with no history kept (the floor: late events then count from their customer's
newest instant). CPU time per event, and the ratio, at each rate: at a low one customers' events
are minutes apart (each in-order event may save a state), at a high one seconds apart.

    .venv/bin/python bench/corrections.py [--events 60000] [--customers 3000] [--rates 10,1000]
                                          [--reps 2]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.rules.active import shipped_compiled
from app.settings import Settings
from pipelines.rewind import Rewind
from pipelines.segmentation import FLOW_GC_THRESHOLD, FeatureShard, catalogue_for
from pipelines.sources import StreamEvent, Tick, collect_between_reads
from tests.factories import stored_event

T0 = 1_767_225_600_000
NAMES = ["Product Viewed"] * 6 + ["Product Added"] * 2 + ["Checkout Started", "Order Completed"]


class NoHistory(FeatureShard):
    """The floor: a shard that keeps no history to correct late events from."""

    def _rewind_for(self, *_args: Any) -> Rewind | None:
        return None


def stream(events: int, customers: int, rate: int) -> list[dict[str, Any]]:
    rng = random.Random(1)
    found, at = [], float(T0)
    for n in range(events):
        at += rng.expovariate(rate / 1000)
        properties = {"product_id": f"p{rng.randrange(50)}", "price": 10, "revenue": 10}
        customer = f"c{rng.randrange(customers)}"
        found.append(
            stored_event(
                message_id=f"m{n}",
                customer=customer,
                name=rng.choice(NAMES),
                at=int(at),
                properties=properties,
            )
        )
    return found


def epochs(events: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The events in runs of one snapshot interval of their time (live: of the wall clock)."""
    interval = Settings().snapshot_interval_s * 1000
    return [
        list(run)
        for _, run in itertools.groupby(events, key=lambda e: int(e["timestamp"]) // interval)
    ]


def cpu_us_per_event(shard: FeatureShard, runs: list[list[dict[str, Any]]]) -> float:
    gc.collect()
    start = time.process_time()
    for run in runs:
        collect_between_reads()  # as the dataflow's source does
        last = int(run[-1]["timestamp"])
        shard.on_batch([*(StreamEvent(0, "0-0", e) for e in run), Tick(0, last, False)])  # type: ignore[arg-type]
        shard.state.freeze()
    return (time.process_time() - start) / sum(map(len, runs)) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--customers", type=int, default=3_000)
    parser.add_argument("--rates", default="10,1000", help="events a second, comma-separated")
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    gc.set_threshold(*FLOW_GC_THRESHOLD)  # as the dataflow sets it
    rules = shipped_compiled()
    catalogue = catalogue_for(rules, 5 * 60_000)
    print(f"{'rate ev/s':>9} {'run':>4} {'floor us/event':>15} {'kept us/event':>14} {'ratio':>6}")
    for rate in (int(r) for r in args.rates.split(",")):
        runs = epochs(stream(args.events, args.customers, rate))
        for rep in range(1, args.reps + 1):
            floor = cpu_us_per_event(NoHistory(catalogue, rules, None), runs)
            kept = cpu_us_per_event(FeatureShard(catalogue, rules, None), runs)
            print(f"{rate:>9} {rep:>4} {floor:>15.1f} {kept:>14.1f} {kept / floor:>6.2f}")


if __name__ == "__main__":
    main()
