"""Dataflow throughput, state size and delay, next to a pass-through floor in the same run.

1. Throughput: EVENTS events of a simulated shop (``history``: visits, carts, orders, returning
   customers, over hours of event time, so windows slide and deadlines fire) are put in the
   streams, then the dataflow runs over them as `segflow pipeline` runs it (bytewax.run,
   recovery on) until caught up, as 1 process, then as 2 (one per core). Two floors run the
   same way: DESIGN.md's pass-through (the
   same source, writing nothing) and the issue's (the same source and sink, each event written
   as an empty profile, no feature logic).
   Each is timed as its run over the events less its run over empty streams, so process
   start-up is not counted.
2. State: the size of the shards' latest recovery snapshots divided by the customers in them.
3. Delay: the dataflow (`segflow pipeline`, 1 process, then 2) runs live while events are
   appended at RATE events/s; every 100th event is a probe with a customer of its own, and the
   time from its XADD to its profile being visible in Redis is recorded.
4. With ``--clusters``: the flow with clustering off (``SEGFLOW_CLUSTERING=off``), then on,
   over the same events in the same run, assigning every snapshot by a model fitted on the
   profiles the "off" run computed (published before each "on" run starts), off and on
   alternated three times: CPU of the flow's process per event (the median, and each run),
   and the share of the flow's throughput the assignment costs by it (``clusters_on_off``).

5. With ``--scaling`` (alone): the flow on 1 worker, on 2 worker threads (``-w 2``) and as 2
   processes (``-i``/``-a``), alternated ``--repeats`` times: events/s, CPU per event of the
   flow's processes and of Redis, the ratio to 1 worker; then a paper model of the cores and
   hosts for 100M events a day at 10x the mean.

    .venv/bin/python bench/pipeline.py [--events 200000] [--rate 10000] [--seconds 10] [--clusters]
    .venv/bin/python bench/pipeline.py --scaling [--events 100000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import random
import resource
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import orjson
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.cli import run_cluster  # noqa: E402
from app.events import StreamEntry  # noqa: E402
from app.profiles.keys import profile_key  # noqa: E402
from app.redis_server import EmbeddedRedis  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.streams import EVENT_FIELD, partition_of, stream_key  # noqa: E402
from pipelines.segmentation import prepare_rules, route_read  # noqa: E402
from pipelines.sources import BATCH as READ_BATCH  # noqa: E402
from pipelines.sources import SourceItem, StreamEvent, Tick  # noqa: E402
from tests.factories import append_replay, processed_entries, stored_event  # noqa: E402

PARTITIONS = 4
LANE = "replay-bench"  # the history is replayed: its deadlines fire by the replay's progress
CUSTOMERS = 20_000
CATEGORIES = ("shoes", "bags", "hats", "shirts", "socks", "coats")
PRICES = (4.5, 9.99, 12.5, 19.0, 25.0, 49.9, 89.0, 129.0, 240.0)


def _properties(rng: random.Random) -> dict[str, Any]:
    product = rng.randrange(400)
    return {
        "product_id": f"p{product}",
        "category": CATEGORIES[product % len(CATEGORIES)],
        "price": PRICES[product % len(PRICES)],
        "quantity": 1 + (rng.random() < 0.2),
    }


def _session(rng: random.Random) -> list[tuple[str, dict[str, Any]]]:
    """One visit's events as a shop sees them: a page or two, views, and for some an add,
    a checkout and an order (about 1 in 4 visits adds, 1 in 3 of those orders)."""
    steps: list[tuple[str, dict[str, Any]]] = [("Page Viewed", {"path": "/"})]
    basket = []
    for _ in range(rng.randint(1, 9)):
        item = _properties(rng)
        steps.append(("Product Viewed", item))
        if rng.random() < 0.12:
            steps.append(("Product Added", item))
            basket.append(item)
            if rng.random() < 0.15:
                steps.append(("Product Removed", {"product_id": item["product_id"]}))
                basket.pop()
    if basket and rng.random() < 0.6:
        steps.append(("Checkout Started", {}))
        if rng.random() < 0.6:
            revenue = round(sum(i["price"] * i["quantity"] for i in basket), 2)
            steps.append(("Order Completed", {"revenue": revenue}))
    return steps


def history(count: int, end: int, seed: int = 7) -> list[dict[str, Any]]:
    """``count`` events of a shop's customers over the last hours before ``end`` (ms), in time
    order: visits of 2 to 20 events a few seconds to a minute apart, by customers who come back
    (some often), so windows slide, carts are left and sessions end while the flow runs."""
    rng = random.Random(seed)
    span_ms = max(count * 60, 3_600_000)  # a busy shop: about 17 events/s of event time
    events: list[dict[str, Any]] = []
    while len(events) < count:
        regular = rng.random() < 0.3  # a tenth of the customers make a third of the visits
        customer = f"c{rng.randrange(CUSTOMERS // 10 if regular else CUSTOMERS)}"
        at = end - rng.randrange(span_ms)
        for name, properties in _session(rng):
            events.append(
                stored_event(
                    message_id=f"m{len(events)}",
                    customer=customer,
                    name=name,
                    at=at,
                    properties=properties,
                    source="bench",
                )
            )
            at += rng.randint(2_000, 60_000)
    events = events[:count]
    events.sort(key=lambda e: e["timestamp"])
    return events


def event(n: int, now: int, customer: str | None = None) -> dict[str, Any]:
    """Event ``n`` of a live run (the delay probes): a random customer's shop event."""
    rng = random.Random(n)
    name = rng.choice(
        ("Product Viewed",) * 6 + ("Product Added", "Checkout Started", "Page Viewed")
    )
    return stored_event(
        message_id=f"m{n}-{now}",
        customer=customer or f"c{rng.randrange(CUSTOMERS)}",
        name=name,
        at=now,
        properties=_properties(rng),
        source="bench",
    )


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's children that have been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def redis_cpu(client: redis.Redis) -> float:
    """CPU seconds (user + system) the Redis server has used since it started."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def run_flow(
    url: str, flow: str, recovery: Path, env: dict[str, str] | None = None, processes: int = 1
) -> tuple[float, float, float]:
    """Run ``flow`` over the streams until caught up; its wall time, the CPU time of its
    processes and Redis's CPU time meanwhile, in seconds (``env``: more environment for it)."""
    return run_layout(url, recovery, processes, 1, flow=flow, env=env)


def timed_cpu(
    url: str,
    client: redis.Redis,
    events: list[dict[str, Any]],
    flow: str,
    recovery: Path,
    *,
    env: dict[str, str] | None = None,
    before: Callable[[], None] | None = None,
    processes: int = 1,
) -> tuple[float, float, float]:
    """Seconds, CPU seconds of the flow's processes and of Redis the flow spends on
    ``events``: its run over them less its run over nothing (process start-up and the last
    idle tick are the same in both). ``before`` runs once the events are in the streams, just
    before the flow starts on them."""
    client.flushdb()
    empty = run_flow(url, flow, recovery.with_name(f"{recovery.name}-empty"), env, processes)
    client.flushdb()
    append_replay(client, events, PARTITIONS, lane=LANE)  # a shop's history: a replay
    if before is not None:
        before()
    run = run_flow(url, flow, recovery, env, processes)
    return run[0] - empty[0], run[1] - empty[1], run[2] - empty[2]


def timed(
    url: str, client: redis.Redis, events: list[dict[str, Any]], flow: str, recovery: Path
) -> tuple[float, float, float]:
    """Seconds, flow CPU seconds and Redis CPU seconds the flow spends on ``events``
    (``timed_cpu``)."""
    return timed_cpu(url, client, events, flow, recovery)


FLOW = "pipelines.segmentation:flow_from_env()"


@dataclass
class FlowRun:
    """One way to run the flow (``compare_flows``): its environment, and the cluster model
    published before it starts (None: none)."""

    label: str
    env: dict[str, str]
    model: Any = None


@dataclass
class FlowCost:
    label: str
    seconds: float  # the flow's time over the events (``timed_cpu``), the fastest run
    cpu_s: float  # the CPU of the flow's process over them, in that run
    redis_cpu_s: float = 0.0  # Redis's, in that run

    def rate(self, events: int) -> float:
        return events / self.seconds

    def cpu_us(self, events: int) -> float:
        return self.cpu_s / events * 1e6


def compare_flows(
    url: str,
    client: redis.Redis,
    events: list[dict[str, Any]],
    work: Path,
    runs: list[FlowRun],
    *,
    repeats: int = 2,
    earlier: dict[str, list[tuple[float, float, float]]] | None = None,
    after: Callable[[str], None] | None = None,
) -> dict[str, FlowCost]:
    """Each of ``runs`` over ``events`` in turn, ``repeats`` times (``timed_cpu``), and the
    fastest of each kept: on a shared machine the others' load only ever slows a run down.
    ``earlier``: runs already made, by label; ``after(label)`` is called after each run's
    first repetition, with Redis as that run left it."""
    from app.clustering import store

    found = {label: list(times) for label, times in (earlier or {}).items()}
    for n in range(repeats):
        for run in runs:
            model = run.model

            def publish(model: Any = model) -> None:
                if model is not None:
                    store.publish(client, model)

            name = f"{run.label.replace(' ', '-')}-{n}"
            times = timed_cpu(url, client, events, FLOW, work / name, env=run.env, before=publish)
            found.setdefault(run.label, []).append(times)
            if n == 0 and after is not None:
                after(run.label)
    return {label: FlowCost(label, *min(times)) for label, times in found.items()}


def fitted_on_flow(
    client: redis.Redis, *, families: tuple[str, ...] | None = None, sample_size: int = 20_000
) -> tuple[Any, int, int]:
    """A model fitted on the profiles a flow run left in Redis, as a refit would (a uniform
    sample, every family unless ``families``): the model, the sample's size, the profiles."""
    from app.clustering import store
    from app.clustering.fitting import FAMILIES, fit

    _, profiles = store.sample_profiles(client, sample_size)
    customers = sum(1 for _ in client.scan_iter(match=store.PROFILE_PATTERN, count=2_000))
    found = fit(profiles, families=families or FAMILIES)
    model = found.chosen.model(found.prep, version=1, fitted_at=time.time_ns() // 1_000_000)
    return model, len(profiles), customers


OFF = {"SEGFLOW_CLUSTERING": "off"}
BATCH = {"SEGFLOW_CLUSTERING": "batch"}


@dataclass
class ClusterCost:
    """The flow with clustering off and on over the same events (``clusters_on_off``): every
    repetition of each, in the order they ran (off, on, off, on, ...)."""

    events: int
    off: list[FlowCost]
    on: list[FlowCost]
    model: Any  # the ClusterModel the "on" runs assigned by
    fit_sample: int  # profiles the model was fitted on
    customers: int  # profiles the flow computed

    def median_cpu_us(self, runs: list[FlowCost]) -> float:
        return statistics.median(run.cpu_us(self.events) for run in runs)

    @property
    def cost_share(self) -> float:
        """How much of the flow's throughput the assignment costs, by the CPU of the flow's
        process per event (median of the repetitions): a flow bound by its CPU runs
        ``off/on`` as fast with clustering on. Wall time on a shared machine measures the
        neighbours' load as much as the flow."""
        return 1 - self.median_cpu_us(self.off) / self.median_cpu_us(self.on)

    def rows(self) -> list[tuple[str, str, str, str, str]]:
        """(path, events/s of its fastest run, median CPU us per event, each run's CPU us per
        event, ratio of the median CPU per event to off's) per path."""
        off = self.median_cpu_us(self.off)
        found = []
        for runs in (self.off, self.on):
            cpu = self.median_cpu_us(runs)
            found.append(
                (
                    runs[0].label,
                    f"{max(run.rate(self.events) for run in runs):,.0f}",
                    f"{cpu:.1f}",
                    ", ".join(f"{run.cpu_us(self.events):.1f}" for run in runs),
                    f"{cpu / off:.2f}",
                )
            )
        return found


def flow_row(cost: FlowCost, off: FlowCost, events: int) -> tuple[str, str, str, str]:
    return (
        cost.label,
        f"{cost.rate(events):,.0f}",
        f"{cost.cpu_us(events):.1f}",
        f"{cost.rate(events) / off.rate(events):.2f}",
    )


def clusters_on_off(
    url: str,
    client: redis.Redis,
    events: list[dict[str, Any]],
    work: Path,
    *,
    families: tuple[str, ...] | None = None,
    sample_size: int = 20_000,
    repeats: int = 3,
) -> ClusterCost:
    """The flow over ``events`` with clustering off, then a model fitted on the profiles that
    run computed (``fitted_on_flow``), then the flow off and on in turn ``repeats`` times, the
    model published before each "on" run starts (``compare_flows``); the first run (fitting's
    input, its recovery files and caches cold) is not counted."""
    timed_cpu(url, client, events, FLOW, work / "clusters-off-first", env=OFF)
    model, sample, customers = fitted_on_flow(client, families=families, sample_size=sample_size)
    on_label = f"clustering on ({model.algorithm}, {len(model.clusters)} clusters)"
    off_runs, on_runs = [], []
    for n in range(repeats):
        folder = work / f"clusters-{n}"
        folder.mkdir()
        found = compare_flows(
            url,
            client,
            events,
            folder,
            [FlowRun("clustering off", OFF), FlowRun(on_label, BATCH, model)],
            repeats=1,
        )
        off_runs.append(found["clustering off"])
        on_runs.append(found[on_label])
    return ClusterCost(len(events), off_runs, on_runs, model, sample, customers)


def read_floor_flow() -> Any:
    """The pass-through floor: the same source, and nothing written."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.outputs import DynamicSink, StatelessSinkPartition

    from pipelines.sources import RedisStreamSource

    class Discard(StatelessSinkPartition[Any]):
        def write_batch(self, items: list[Any]) -> None:
            pass

    class DiscardSink(DynamicSink[Any]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> Discard:
            return Discard()

    flow = Dataflow("read_floor")
    items = op.input(
        "events", flow, RedisStreamSource(os.environ["REDIS_URL"], PARTITIONS, stop_at_end=True)
    )
    op.output("discard", items, DiscardSink())
    return flow


def floor_flow() -> Any:
    """Same source, same sink, no features: every event becomes an empty profile."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow

    from pipelines.records import ProfileUpdate
    from pipelines.sinks import ProfileSink
    from pipelines.sources import RedisStreamSource, StreamEvent

    url = os.environ["REDIS_URL"]
    flow = Dataflow("floor")
    items = op.input("events", flow, RedisStreamSource(url, PARTITIONS, stop_at_end=True))
    updates = op.filter_map(
        "pass",
        items,
        lambda i: (
            ProfileUpdate(i.event["customer_id"], i.event["timestamp"], {}, {})
            if isinstance(i, StreamEvent)
            else None
        ),
    )
    op.output("profiles", updates, ProfileSink(url))
    return flow


def shard_reads(events: list[dict[str, Any]]) -> list[list[tuple[str, list[SourceItem]]]]:
    """``events`` as the source hands them to the shards, in the order it does: each
    partition's reads of ``READ_BATCH`` entries closed by their tick, routed to their shards."""
    by_partition: dict[int, list[StreamEvent]] = {}
    for n, item in enumerate(events):
        partition = partition_of(item["customer_id"], PARTITIONS)
        entry = cast(StreamEntry, {**item, "replay": LANE})
        by_partition.setdefault(partition, []).append(StreamEvent(partition, str(n), entry))
    reads: list[tuple[int, list[SourceItem]]] = []  # (its tick's time, the read)
    for partition, read in by_partition.items():
        for start in range(0, len(read), READ_BATCH):
            chunk = read[start : start + READ_BATCH]
            at = int(chunk[-1].event["timestamp"])
            reads.append((at, [*chunk, Tick(partition, at, False, LANE)]))
    reads.sort(key=lambda read: read[0])
    return [route_read(batch, PARTITIONS) for _, batch in reads]


def compute_only(events: list[dict[str, Any]]) -> tuple[float, int, int, int]:
    """Seconds the flow's feature shards take over ``events`` in this process, with the active
    rules and no Bytewax, Redis or sink (read in the source's batches per partition, each
    followed by its tick, as the source does), the evaluations they made (an event's instant
    or a deadline; counted in a second, untimed pass), the profile records they wrote and the
    deadlines among the evaluations."""
    from app.settings import get_settings
    from pipelines.records import ProfileUpdate
    from pipelines.segmentation import FLOW_GC_THRESHOLD, FeatureShard, active_rules, catalogue_for
    from pipelines.sources import collect_between_reads

    settings = get_settings()
    rules = active_rules(settings).current().compiled
    catalogue = catalogue_for(rules, settings.allowed_lateness_ms)
    routed = shard_reads(events)
    evaluations = deadlines = 0

    class Counting(FeatureShard):
        def _changed(self, *args: Any, **kwargs: Any) -> Any:
            nonlocal evaluations
            evaluations += 1
            return super()._changed(*args, **kwargs)

        def _fire_deadline(self, *args: Any, **kwargs: Any) -> Any:
            nonlocal deadlines
            deadlines += 1
            return super()._fire_deadline(*args, **kwargs)

    def run(shard_type: type[FeatureShard]) -> int:
        shards: dict[str, FeatureShard] = {}
        records = 0
        for per_shard in routed:
            collect_between_reads()  # as the source does before each read
            for shard, values in per_shard:
                logic = shards.get(shard)
                if logic is None:
                    logic = shards[shard] = shard_type(catalogue, rules, None, None, PARTITIONS)
                out, _ = logic.on_batch([values])  # as the flow hands it a read
                records += sum(isinstance(record, ProfileUpdate) for record in out)
        return records

    thresholds = gc.get_threshold()
    gc.set_threshold(*FLOW_GC_THRESHOLD)  # as the flow's process runs
    try:
        started = time.perf_counter()
        records = run(FeatureShard)
        elapsed = time.perf_counter() - started
        run(Counting)
        return elapsed, evaluations, records, deadlines
    finally:
        gc.set_threshold(*thresholds)


def state_bytes_per_customer(recovery: Path) -> tuple[float, int]:
    with sqlite3.connect(recovery / "part-0.sqlite3") as db:
        rows = db.execute(
            "SELECT step_id, state_key, ser_change FROM snaps s WHERE snap_epoch = "
            "(SELECT max(snap_epoch) FROM snaps t WHERE t.step_id = s.step_id "
            "AND t.state_key = s.state_key) AND step_id LIKE '%features%'"
        ).fetchall()
    import pickle

    total = sum(len(blob or b"") for _, _, blob in rows)
    customers = sum(len(pickle.loads(blob)) for _, _, blob in rows if blob)  # noqa: S301
    return total / max(customers, 1), customers


def delay_run(
    url: str, client: redis.Redis, rate: int, seconds: float, work: Path, processes: int = 1
) -> tuple[list[float], int]:
    """The delays of the probes seen within 10 s after the run, and how many were sent, with
    `segflow pipeline --processes PROCESSES` running (without recovery, data dir ``work``)."""
    env = {
        **os.environ,
        "REDIS_URL": url,
        "SEGFLOW_PARTITIONS": str(PARTITIONS),
        "SEGFLOW_DATA_DIR": str(work),
    }
    command = ["pipeline", "--no-recovery", "--processes", str(processes)]
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", *command], env=env, cwd=ROOT, start_new_session=True
    )
    # Start the clock once the dataflow answers: a first profile written, not a guessed sleep.
    warm = event(0, time.time_ns() // 1_000_000, "warm-up")
    client.xadd(stream_key(partition_of("warm-up", PARTITIONS)), {EVENT_FIELD: orjson.dumps(warm)})
    ready_by = time.monotonic() + 60
    while not client.exists(profile_key("warm-up")):
        if time.monotonic() > ready_by:
            raise SystemExit("the dataflow wrote no profile within 60 s")
        time.sleep(0.05)
    sent: dict[str, float] = {}
    delays: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        watcher = redis.Redis.from_url(url)
        while not stop.is_set() or sent:
            pending = list(sent.items())
            if pending:
                pipe = watcher.pipeline(transaction=False)
                for probe, _ in pending:
                    pipe.exists(profile_key(probe))
                seen = time.perf_counter()
                for (probe, at), exists in zip(pending, pipe.execute(), strict=True):
                    if exists:
                        delays.append(seen - at)
                        sent.pop(probe, None)
            time.sleep(0.002)
            if stop.is_set() and time.perf_counter() > deadline:
                break

    deadline = float("inf")
    per_tick = rate // 100  # appended every 10 ms
    # Every tick's appends are built and encoded before the clock starts, each event stamped
    # with the time its tick is due (the sender keeps to it), so this process's own work
    # competes less with the dataflow's for the machine's cores while the delays are measured.
    connection = client.connection_pool.get_connection()
    first = time.time_ns() // 1_000_000 + 1_000
    planned = []
    for tick in range(math.ceil(seconds * 100)):
        appends = []
        for n in range(tick * per_tick, (tick + 1) * per_tick):
            item = event(n, first + tick * 10, f"probe-{n}" if n % 100 == 0 else None)
            key = stream_key(partition_of(item["customer_id"], PARTITIONS))
            appends.append(("XADD", key, "*", EVENT_FIELD, orjson.dumps(item)))
        planned.append(connection.pack_commands(appends))  # type: ignore[no-untyped-call]
    thread = threading.Thread(target=watch)
    thread.start()
    time.sleep(max(0.0, first / 1000 - time.time()))
    started = time.perf_counter()
    probes = 0
    try:
        for tick, packed in enumerate(planned):
            sent_at = time.perf_counter()
            for k in range(tick * per_tick, (tick + 1) * per_tick):
                if k % 100 == 0:  # known to the watcher before they can be seen
                    sent[f"probe-{k}"] = sent_at
                    probes += 1
            connection.send_packed_command(packed)  # type: ignore[no-untyped-call]
            for _ in range(per_tick):
                connection.read_response()
            time.sleep(max(0.0, started + (tick + 1) / 100 - time.perf_counter()))
    finally:
        client.connection_pool.release(connection)
    deadline = time.perf_counter() + 10
    stop.set()
    thread.join()
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return delays, probes


class RedisCalls:
    """The commands Redis ran between ``start`` and ``stop`` (INFO commandstats): calls and
    time by command, per event of a run. A script's own commands count under their names too
    (an EVALSHA that runs HSET and ZADD adds to evalsha, hset and zadd), and its time includes
    theirs; the time is Redis's clock around each command, so a busy machine inflates it."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._start: dict[str, dict[str, float]] = {}
        self.ran: dict[str, tuple[int, float]] = {}  # command -> (calls, usec)

    def _stats(self) -> dict[str, dict[str, float]]:
        found = cast(dict[str, dict[str, float]], self._client.info("commandstats"))
        return {name.removeprefix("cmdstat_"): stats for name, stats in found.items()}

    def start(self) -> None:
        self._start = self._stats()

    def stop(self) -> None:
        for name, stats in self._stats().items():
            was = self._start.get(name, {"calls": 0, "usec": 0})
            calls = int(stats["calls"] - was["calls"])
            if calls and name != "info":  # not this class's own
                self.ran[name] = (calls, float(stats["usec"] - was["usec"]))

    def print_per_event(self, events: int) -> None:
        print(
            f"\nRedis commands per event in the flow's run (INFO commandstats, {events:,} events):"
        )
        print("| command | calls per event | Redis time us per event |")
        print("|---|---|---|")
        for name, (calls, usec) in sorted(self.ran.items(), key=lambda kv: -kv[1][1]):
            print(f"| {name} | {calls / events:.3f} | {usec / events:.2f} |")
        scripts = sum(calls for name, (calls, _) in self.ran.items() if name in ("evalsha", "eval"))
        print(f"script calls per event: {scripts / events:.3f}")


def print_cluster_cost(cost: ClusterCost) -> None:
    print(
        f"\nclustering on against off, same {cost.events:,} events (model fitted on "
        f"{cost.fit_sample:,} of the {cost.customers:,} profiles the off run computed), "
        f"{len(cost.off)} runs of each, alternated:"
    )
    print(
        "| path | events/s (fastest run) | CPU us per event, flow process (median) "
        "| each run | ratio to off (CPU) |"
    )
    print("|---|---|---|---|---|")
    for row in cost.rows():
        print("| " + " | ".join(row) + " |")
    print(
        f"assignment costs {cost.cost_share:.1%} of the flow's throughput, by CPU per event "
        "(target: at most 10%)"
    )


# --- scaling: the flow on 1 worker, 2 worker threads, 2 processes (``--scaling``) ----------

# (label, processes, worker threads in each)
LAYOUTS = (("1 worker", 1, 1), ("-w 2", 1, 2), ("2 processes", 2, 1))
EVENTS_PER_DAY = 100_000_000
PEAK_TO_MEAN = 10
CORE_BUSY = 0.6  # the share of a core a sizing plans to keep busy at peak (headroom)


def flow_command(
    url: str,
    recovery: Path,
    workers: int = 1,
    *,
    flow: str = FLOW,
    env: dict[str, str] | None = None,
    snapshot_s: int = 2,
) -> tuple[list[str], dict[str, str]]:
    """The ``bytewax.run`` of ``flow`` over the streams at ``url`` until caught up, with
    ``workers`` worker threads, recovery on in ``recovery`` (made here, snapshots every
    ``snapshot_s`` seconds), its data directory beside it, the rules seeded as `segflow
    pipeline` seeds them: its argv and environment (``env``: more of it)."""
    from bytewax.recovery import init_db_dir

    env = {
        **os.environ,
        "REDIS_URL": url,
        "SEGFLOW_PARTITIONS": str(PARTITIONS),
        "SEGFLOW_STOP_AT_END": "1",
        "SEGFLOW_DATA_DIR": str(recovery.with_name(f"{recovery.name}-data")),
        **(env or {}),
    }
    recovery.mkdir()
    init_db_dir(recovery, 1)  # type: ignore[no-untyped-call]
    argv = [sys.executable, "-m", "bytewax.run", flow, "-w", str(workers)]
    argv += ["-r", str(recovery), "-s", str(snapshot_s), "-b", "0"]
    prepare_rules(Settings(REDIS_URL=url, SEGFLOW_DATA_DIR=env["SEGFLOW_DATA_DIR"]))
    return argv, env


def run_layout(
    url: str,
    recovery: Path,
    processes: int,
    workers: int,
    *,
    flow: str = FLOW,
    env: dict[str, str] | None = None,
) -> tuple[float, float, float]:
    """``flow`` over the streams until caught up as ``processes`` processes of ``workers``
    worker threads each, recovery on: wall time, CPU of all its processes, Redis's CPU
    meanwhile (seconds; ``env``: more environment for it)."""
    argv, env = flow_command(url, recovery, workers, flow=flow, env=env)
    client = redis.Redis.from_url(url)
    try:
        cpu, served = _children_cpu(), redis_cpu(client)
        started = time.perf_counter()
        # as `segflow pipeline` does: the processes run as one cluster
        if run_cluster(argv, processes, env, cwd=ROOT) != 0:
            raise SystemExit(f"the flow {flow} ({processes} x -w {workers}) failed")
        elapsed = time.perf_counter() - started
        return elapsed, _children_cpu() - cpu, redis_cpu(client) - served
    finally:
        client.close()


def scaling(
    url: str, client: redis.Redis, events: list[dict[str, Any]], work: Path, repeats: int
) -> dict[str, list[tuple[float, float, float]]]:
    """Each layout over ``events``, its run over them less its run over empty streams (as
    ``timed_cpu``), the layouts alternated ``repeats`` times: per layout, every run's
    (seconds, flow CPU seconds, Redis CPU seconds)."""
    found: dict[str, list[tuple[float, float, float]]] = {}
    for n in range(repeats):
        for label, processes, workers in LAYOUTS:
            name = f"scaling-{processes}x{workers}-{n}"
            client.flushdb()
            empty = run_layout(url, work / f"{name}-empty", processes, workers)
            client.flushdb()
            append_replay(client, events, PARTITIONS, lane=LANE)
            run = run_layout(url, work / name, processes, workers)
            assert processed_entries(client) == len(events), label
            found.setdefault(label, []).append(
                (run[0] - empty[0], run[1] - empty[1], run[2] - empty[2])
            )
    return found


def print_scaling(found: dict[str, list[tuple[float, float, float]]], events: int) -> None:
    """The layouts' table (median of the runs; each run's flow CPU too), and the paper model
    of cores and hosts for ``EVENTS_PER_DAY`` at ``PEAK_TO_MEAN`` times the mean."""

    def median(label: str, column: int) -> float:
        return statistics.median(run[column] for run in found[label])

    base_cpu = median("1 worker", 1)
    print(
        f"\nscaling: {events:,} events, {PARTITIONS} partitions, {os.cpu_count()} cores, "
        f"recovery on (-s 2); median of {len(found['1 worker'])} alternated runs"
    )
    print(
        "| layout | events/s | flow CPU us/event (each run) | Redis CPU us/event "
        "| flow CPU/event vs 1 worker |"
    )
    print("|---|---|---|---|---|")
    for label, _, _ in LAYOUTS:
        each = ", ".join(f"{run[1] / events * 1e6:.1f}" for run in found[label])
        print(
            f"| {label} | {events / median(label, 0):,.0f} "
            f"| {median(label, 1) / events * 1e6:.1f} ({each}) "
            f"| {median(label, 2) / events * 1e6:.1f} | {median(label, 1) / base_cpu:.2f} |"
        )
    # processes are how the flow spreads over hosts: size by their CPU per event
    flow_us = median("2 processes", 1) / events * 1e6
    redis_us = median("2 processes", 2) / events * 1e6
    peak = EVENTS_PER_DAY / 86_400 * PEAK_TO_MEAN
    flow_cores = peak * flow_us / 1e6 / CORE_BUSY
    redis_cores = peak * redis_us / 1e6 / CORE_BUSY
    cores = math.ceil(flow_cores) + math.ceil(redis_cores)
    print(
        f"\npaper model: {EVENTS_PER_DAY / 1e6:.0f}M events/day is {EVENTS_PER_DAY / 86_400:,.0f}"
        f"/s on average, {peak:,.0f}/s at {PEAK_TO_MEAN}x the mean. At the 2 processes' "
        f"{flow_us:.1f} us of flow CPU and {redis_us:.1f} us of Redis CPU per event, cores "
        f"{CORE_BUSY:.0%} busy at peak: {flow_cores:.1f} cores of flow (one worker process per "
        f"core, the partitions spread over them) and {redis_cores:.1f} of Redis, so {cores} "
        f"whole cores: {math.ceil(cores / 2)} host(s) of 2 cores like this one. The collector, "
        f"API and dispatcher are not in this count."
    )


def scaling_main(count: int, repeats: int) -> None:
    """``--scaling``: the layouts' table over ``count`` events of the shop's history."""
    work = Path(tempfile.mkdtemp(prefix="segflow-bench-scaling-"))
    server = EmbeddedRedis.ensure(work) if not os.environ.get("REDIS_URL") else None
    url = os.environ.get("REDIS_URL") or (server.url if server else "")
    client = redis.Redis.from_url(url)
    try:
        found = scaling(url, client, history(count, time.time_ns() // 1_000_000), work, repeats)
    finally:
        client.flushdb()
        client.close()
        if server is not None:
            server.stop()
    print_scaling(found, count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--clusters",
        action="store_true",
        help="Also run the flow with clustering off and on over the same events.",
    )
    parser.add_argument(
        "--cluster-repeats",
        type=int,
        default=5,
        help="Alternated pairs of runs, clustering off and on (--clusters): the share is their "
        "medians' (runs on a shared machine spread by 10%%).",
    )
    parser.add_argument(
        "--scaling",
        action="store_true",
        help="Only the flow on 1 worker, -w 2 and 2 processes (alternated), and a sizing.",
    )
    parser.add_argument("--repeats", type=int, default=2, help="Runs of each layout (--scaling).")
    args = parser.parse_args()
    if args.scaling:
        scaling_main(args.events, args.repeats)
        return

    work = Path(tempfile.mkdtemp(prefix="segflow-bench-pipeline-"))
    server = EmbeddedRedis.ensure(work) if not os.environ.get("REDIS_URL") else None
    url = os.environ.get("REDIS_URL") or (server.url if server else "")
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
        now = time.time_ns() // 1_000_000
        events = history(args.events, now)
        # all under the same recovery settings: snapshot cost is no feature cost
        read = timed(url, client, events, "bench.pipeline:read_floor_flow()", work / "read")
        floor = timed(url, client, events, "bench.pipeline:floor_flow()", work / "floor")
        recovery = work / "recovery"
        calls = RedisCalls(client)
        flow = timed_cpu(url, client, events, FLOW, recovery, before=calls.start)
        calls.stop()
        flow2 = timed_cpu(url, client, events, FLOW, work / "recovery-2", processes=2)
        compute_s, evaluations, records, deadlines = compute_only(events)
        assert processed_entries(client) == args.events
        per_customer, customers = state_bytes_per_customer(recovery)
        cost = None
        if args.clusters:
            cost = clusters_on_off(url, client, events, work, repeats=args.cluster_repeats)
        delays = {}
        for processes in (1, 2):
            client.flushdb()
            found = work / f"delay-{processes}"
            delays[processes] = delay_run(url, client, args.rate, args.seconds, found, processes)
    finally:
        client.close()
        if server is not None:
            server.stop()

    n = args.events
    read_rate, floor_rate = n / read[0], n / floor[0]
    shoppers = len({e["customer_id"] for e in events})
    print(
        f"\ndataflow benchmark: {n:,} events of {shoppers:,} "
        f"customers over {(events[-1]['timestamp'] - events[0]['timestamp']) / 3_600_000:.1f} h "
        f"of event time, {PARTITIONS} partitions, 1 worker, recovery on (-s 2), "
        f"{os.cpu_count()} cores"
    )
    print(
        "| path | events/s | ratio to read floor | ratio to sink floor "
        "| flow CPU us/event | Redis CPU us/event |"
    )
    print("|---|---|---|---|---|---|")
    for label, (seconds, cpu_s, served_s) in (
        ("floor: source -> nothing written", read),
        ("floor: source -> profile sink, no features", floor),
        ("source -> features + rules -> sink", flow),
        ("the same, as 2 processes (`segflow pipeline --processes 2`)", flow2),
    ):
        rate = n / seconds
        print(
            f"| {label} | {rate:,.0f} | {rate / read_rate:.2f} | {rate / floor_rate:.2f} "
            f"| {cpu_s / n * 1e6:.1f} | {served_s / n * 1e6:.1f} |"
        )
    compute_rate = n / compute_s
    print(
        f"| features + rules alone: no Bytewax, Redis or sink | {compute_rate:,.0f} | "
        f"{compute_rate / read_rate:.2f} | {compute_rate / floor_rate:.2f} "
        f"| {compute_s / n * 1e6:.1f} (wall) | |"
    )
    print(
        f"\nevaluations (an event, or a deadline: a value leaving a window, a session ending): "
        f"{evaluations:,}, {evaluations / args.events:.2f} per event, "
        f"{compute_s / evaluations * 1e6:.1f} us of CPU each; {records:,} profile records "
        f"({records / n:.2f} per event); {deadlines:,} of the evaluations are deadlines"
    )
    calls.print_per_event(n)
    print(f"\nrecovery state: {per_customer:,.0f} bytes per customer ({customers:,} customers)")
    if cost is not None:
        print_cluster_cost(cost)
    for processes, (seen, probes) in delays.items():
        if not seen:
            print(f"XADD -> profile, {processes} process(es): no probe seen within 10 s")
            continue
        p50 = statistics.median(seen) * 1000
        p99 = statistics.quantiles(seen, n=100)[98] * 1000 if len(seen) > 1 else p50
        print(
            f"XADD -> profile visible at {args.rate:,} events/s, `segflow pipeline --processes "
            f"{processes}`: p50 {p50:.0f} ms, p99 {p99:.0f} ms ({len(seen)} of {probes} probes "
            f"seen within 10 s)"
        )


if __name__ == "__main__":
    main()
