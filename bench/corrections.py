"""What keeping live customers' history for corrections costs an in-order stream.

The same live stream (EVENTS events of CUSTOMERS customers, in time order, read 500 at a time
with the live clock at the newest event) runs through one ``FeatureShard`` as the dataflow
runs it, and through the same shard with no history kept (the floor: late events then count
from their customer's newest instant). CPU time per event, and the ratio.

    .venv/bin/python bench/corrections.py [--events 60000] [--customers 3000] [--reps 2]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.rules.active import shipped_compiled
from pipelines.rewind import Rewind
from pipelines.segmentation import FeatureShard, catalogue_for
from pipelines.sources import StreamEvent, Tick
from tests.factories import stored_event

T0 = 1_767_225_600_000
NAMES = ["Product Viewed"] * 6 + ["Product Added"] * 2 + ["Checkout Started", "Order Completed"]
READ = 500


class NoHistory(FeatureShard):
    """The floor: a shard that keeps no history to correct late events from."""

    def _rewind_for(self, *_args: Any) -> Rewind | None:
        return None


def stream(events: int, customers: int) -> list[dict[str, Any]]:
    rng = random.Random(1)
    found, at = [], T0
    for n in range(events):
        at += rng.randrange(0, 200)
        properties = {"product_id": f"p{rng.randrange(50)}", "price": 10, "revenue": 10}
        customer = f"c{rng.randrange(customers)}"
        found.append(
            stored_event(
                message_id=f"m{n}",
                customer=customer,
                name=rng.choice(NAMES),
                at=at,
                properties=properties,
            )
        )
    return found


def cpu_us_per_event(shard: FeatureShard, events: list[dict[str, Any]]) -> float:
    start = time.process_time()
    for i in range(0, len(events), READ):
        chunk = events[i : i + READ]
        last = int(chunk[-1]["timestamp"])
        shard.on_batch([*(StreamEvent(0, "0-0", e) for e in chunk), Tick(0, last, False)])  # type: ignore[arg-type]
    return (time.process_time() - start) / len(events) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--customers", type=int, default=3_000)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    rules = shipped_compiled()
    catalogue = catalogue_for(rules, 5 * 60_000)
    events = stream(args.events, args.customers)
    print(f"{'run':>4} {'floor us/event':>15} {'kept us/event':>14} {'ratio':>6} {'kept':>6}")
    for rep in range(1, args.reps + 1):
        floor = cpu_us_per_event(NoHistory(catalogue, rules, None), events)
        shard = FeatureShard(catalogue, rules, None)
        kept = cpu_us_per_event(shard, events)
        held = len(shard.state.rewinds)
        print(f"{rep:>4} {floor:>15.1f} {kept:>14.1f} {kept / floor:>6.2f} {held:>6}")


if __name__ == "__main__":
    main()
