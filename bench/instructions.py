"""The dataflow's own work per event counted in instructions (valgrind's callgrind), which a
shared machine's load does not move as it moves time: changes of a few per cent show.

``bench/pipeline.py``'s shop history (``--events``) goes through the feature shards as the
source hands them (a partition's reads, each closed by its tick) and through the profile
sink's building of its Redis commands (built, not sent), with no Bytewax and no Redis work:
first with clustering off (the floor), then on, assigned by a model fitted as a refit fits
(k-means, k by silhouette, or ``--family``'s algorithm) on the profiles the off run computed.
Each is counted in a process of its own under callgrind, less a process that only sets up
(imports, the history, the model), with ``PYTHONHASHSEED=0``; repeated runs agreed within
about 10 M instructions.

``--whole`` counts the whole flow's process instead (``bytewax.run``, 1 worker, against
Redis: Bytewax, the source and the Redis client count too), over the same shop's history but
ending at the run's start (``--ended-days N``: N days before it, so the replay's end moves the
clock past every 30-day window's exits, a month later's steady state): clustering off and on
run side by side (the URL's Redis database and the next one), so a replay's end brings both
clocks to the same wall-clock time, each less its own run over empty streams.

    .venv/bin/python bench/instructions.py [--events 20000] [--family kmeans|dbscan|...]
        [--quiet-days 0 | --whole [--ended-days 0]]

``--quiet-days N`` (the shards' count): after the history, its clock moves on N days with no
more events, a tick at each instant an event leaves 30 or 90 days, so each exit fires in a
read of its own, as a live clock fires them in a quiet month after a busy day (a replay's end
fires every due one in one read).

Needs valgrind (Debian: ``apt install valgrind``). Slow: callgrind runs about 50 times slower.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.clustering.choices import FAMILIES  # noqa: E402
from app.clustering.columns import DAY_MS  # noqa: E402
from app.clustering.columns import INPUTS as CLUSTER_INPUTS  # noqa: E402
from app.features import BUILTIN_INPUTS, DEFAULT_LATENESS_MS, Windowed  # noqa: E402
from app.redis_server import EmbeddedRedis  # noqa: E402
from bench.pipeline import LANE, PARTITIONS, history, shard_reads  # noqa: E402
from tests.factories import PublishedModel  # noqa: E402

END_MS = 1_780_000_000_000  # the history's last instant: fixed, so every run reads the same
# ``--whole``: the flow's recovery snapshot interval (seconds): its ``-s 2`` at callgrind's
# slowdown, so a counted run takes about as many snapshots per event as a real one
WHOLE_SNAPSHOT_S = 100
# ``--quiet-days``: the windows whose exits the clock's ticks follow once the events are over,
# those of the built-ins the cluster model's columns read (30 and 90 days)
QUIET_WINDOWS_MS = sorted(
    {
        spec.window_ms
        for name in CLUSTER_INPUTS
        for spec in BUILTIN_INPUTS[name]
        if isinstance(spec, Windowed) and spec.window_ms is not None
    }
)


def run(
    mode: str,
    count: int,
    url: str,
    model_path: Path,
    family: str = "kmeans",
    *,
    quiet_days: float = 0.0,
) -> None:
    """One measured process: ``setup`` (everything but the work), ``off``, ``on``, or ``fit``
    (off, natively, then the model fitted on its profiles, written to ``model_path``); with
    ``quiet_days``, the history's lane's clock then moves on that long, ticking at the
    customers' 30- and 90-day exits (``quiet_reads``), before the lane ends."""
    import gc

    from app.clustering.model import ClusterModel
    from app.rules.active import shipped_compiled
    from pipelines.records import ProfileUpdate
    from pipelines.segmentation import FLOW_GC_THRESHOLD, FeatureShard, catalogue_for
    from pipelines.sinks import _ProfilePartition

    events = history(count, END_MS)
    routed = shard_reads(events)
    if quiet_days:
        routed += quiet_reads(events, END_MS, quiet_days)
    rules = shipped_compiled()
    catalogue = catalogue_for(rules, DEFAULT_LATENESS_MS)
    model = None
    if mode in ("setup", "on"):
        model = ClusterModel.from_shown(orjson.loads(model_path.read_bytes()))
    sink = _ProfilePartition(url, None, None)
    sink._redis.send = sink._redis._queued.clear  # type: ignore[method-assign]  # built only
    if mode == "setup":
        return
    gc.set_threshold(*FLOW_GC_THRESHOLD)  # as the flow's process runs
    shards: dict[str, FeatureShard] = {}
    last: dict[str, dict[str, Any]] = {}
    watcher = PublishedModel(model) if mode == "on" else None
    for per_shard in routed:
        for shard, values in per_shard:
            logic = shards.get(shard)
            if logic is None:
                logic = shards[shard] = FeatureShard(
                    catalogue,
                    rules,
                    None,
                    None,
                    4,
                    watcher,  # type: ignore[arg-type]
                )
            out, _ = logic.on_batch([values])
            sink.write_batch(list(out))
            if mode == "fit":
                last.update(
                    (r.customer_id, r.features) for r in out if isinstance(r, ProfileUpdate)
                )
    if mode == "fit":
        from app.clustering.fitting import fit

        found = fit(list(last.values()), families=[family])
        fitted = found.chosen.model(found.prep, version=1, fitted_at=1)
        model_path.write_bytes(orjson.dumps(fitted.shown()))


def quiet_reads(
    events: list[dict[str, Any]], start: int, days: float
) -> list[list[tuple[str, list[Any]]]]:
    """The reads of a lane with no more events, its clock moving from ``start`` for ``days``:
    a tick in a customer's partition at each instant one of their events leaves 30 or 90 days
    (the windows the built-ins read), so each exit fires in a read of its own, as a live
    clock's ticks (every 100 ms) fire them in a quiet month; then the lane's end."""
    from app.streams import partition_of
    from pipelines.segmentation import route_read
    from pipelines.sources import Tick

    end = start + days * DAY_MS
    instants = sorted(
        {
            (int(event["timestamp"]) + window, partition_of(event["customer_id"], PARTITIONS))
            for event in events
            for window in QUIET_WINDOWS_MS
            if start < int(event["timestamp"]) + window <= end
        }
    )
    reads = [route_read([Tick(p, at, True, LANE)], PARTITIONS) for at, p in instants]
    last = int(end)
    reads += [route_read([Tick(p, last, True, LANE, True)], PARTITIONS) for p in range(PARTITIONS)]
    return reads


def counted(
    mode: str, count: int, url: str, model_path: Path, work: Path, quiet_days: float
) -> int:
    """Instructions of one ``run`` in a process of its own under callgrind."""
    out = work / f"callgrind.{mode}"
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable]
    argv += [__file__, "--run", mode, "--events", str(count), "--url", url]
    argv += ["--model", str(model_path), "--quiet-days", str(quiet_days)]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    subprocess.run(argv, env=env, cwd=ROOT, check=True, capture_output=True)
    return _summary(out)


def _next_database(url: str) -> str:
    """``url`` with the Redis database after its own."""
    parts = urlsplit(url)
    database = int(parts.path.lstrip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{database + 1}"))


def whole_flow(
    url: str, count: int, family: str, work: Path, *, ended_days: float = 0.0
) -> tuple[int, int, Any]:
    """Instructions of the whole flow's process over ``count`` events (``--whole``) ending
    ``ended_days`` before the run, clustering off and on, each less its own run over empty
    streams; and the model of the "on" runs."""
    import redis

    from app.clustering import store
    from bench.pipeline import BATCH, FLOW, OFF, fitted_on_flow, flow_command, timed_cpu
    from tests.factories import append_replay

    events = history(count, time.time_ns() // 1_000_000 - int(ended_days * DAY_MS))
    urls = {"off": url, "on": _next_database(url)}
    client = redis.Redis.from_url(url)
    client.flushdb()
    timed_cpu(url, client, events, FLOW, work / "fit", env=OFF)
    model, _, _ = fitted_on_flow(client, families=(family,))

    def start(label: str, with_events: bool) -> tuple[subprocess.Popen[bytes], Path]:
        mode = label.split("-")[-1]
        target = redis.Redis.from_url(urls[mode])
        target.flushdb()
        if with_events:
            append_replay(target, events, PARTITIONS, lane=LANE)
        if mode == "on":
            store.publish(target, model)
        more = {**(OFF if mode == "off" else BATCH), "PYTHONHASHSEED": "0"}
        argv, env = flow_command(urls[mode], work / label, env=more, snapshot_s=WHOLE_SNAPSHOT_S)
        out = work / f"callgrind.{label}"
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv]
        running = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        return running, out

    found: dict[str, int] = {}
    for labels, with_events in ((("empty-off", "empty-on"), False), (("off", "on"), True)):
        started = [(label, *start(label, with_events)) for label in labels]
        for label, running, out in started:
            if running.wait() != 0:
                raise SystemExit(f"the flow's {label} run failed under callgrind")
            found[label] = _summary(out)
    client.close()
    return found["off"] - found["empty-off"], found["on"] - found["empty-on"], model


def _summary(out: Path) -> int:
    found = re.search(rb"^summary: (\d+)", out.read_bytes(), re.MULTILINE)
    if found is None:
        raise SystemExit(f"no instruction count in {out}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument(
        "--family",
        default="kmeans",
        choices=FAMILIES,
        help="The clustering algorithm the model is fitted with (default: kmeans).",
    )
    parser.add_argument(
        "--whole",
        action="store_true",
        help="Count the whole flow's process (bytewax.run against Redis), not only the shards "
        "and the sink's command building.",
    )
    parser.add_argument(
        "--ended-days",
        type=float,
        default=0.0,
        help="With --whole: the history ends this many days before the run (default 0).",
    )
    parser.add_argument(
        "--quiet-days",
        type=float,
        default=0.0,
        help="Without --whole: after the history, the clock moves on this many days with no "
        "more events, a tick at each 30- or 90-day exit (default 0).",
    )
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.whole and args.quiet_days:
        parser.error("--quiet-days counts the shards alone: not with --whole")
    if args.ended_days and not args.whole:
        parser.error("--ended-days ends the history of --whole's run: use it with --whole")
    if args.run:
        run(args.run, args.events, args.url, args.model, quiet_days=args.quiet_days)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt install valgrind)")
    work = Path(tempfile.mkdtemp(prefix="segflow-bench-instructions-"))
    server = EmbeddedRedis.ensure(work) if not os.environ.get("REDIS_URL") else None
    url = os.environ.get("REDIS_URL") or (server.url if server else "")
    model_path = work / "model.json"
    if args.whole:
        try:
            off, on, fitted = whole_flow(
                url, args.events, args.family, work, ended_days=args.ended_days
            )
        finally:
            if server is not None:
                server.stop()
            shutil.rmtree(work, ignore_errors=True)
        print(
            f"\ninstructions of the whole flow's process (bytewax.run, 1 worker), {args.events:,}"
            f" of bench/pipeline.py's events ending {_ended(args.ended_days)}, each less its run"
            " over empty streams"
        )
        label = f"clustering on ({fitted.algorithm}, {len(fitted.clusters)} clusters)"
        print_counts(off, on, label, args.events)
        return
    try:
        run("fit", args.events, url, model_path, args.family)
        model = orjson.loads(model_path.read_bytes())
        quiet = args.quiet_days
        setup = counted("setup", args.events, url, model_path, work, quiet)
        off = counted("off", args.events, url, model_path, work, quiet) - setup
        on = counted("on", args.events, url, model_path, work, quiet) - setup
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    clusters = len(model["clusters"])
    print(
        f"\ninstructions of the shards and the sink's command building, {args.events:,} of "
        f"bench/pipeline.py's events{_then_quiet(quiet)} (setup, {setup / 1e6:,.0f} M, taken off)"
    )
    print_counts(off, on, f"clustering on ({model['algorithm']}, {clusters} clusters)", args.events)


def _then_quiet(days: float) -> str:
    return f" then {days:g} quiet days (a tick at each 30- or 90-day exit)" if days else ""


def _ended(days: float) -> str:
    return "at the run's start" if not days else f"{days:g} days before the run"


def print_counts(off: int, on: int, label: str, events: int) -> None:
    print("| path | instructions (M) | per event | ratio to off |")
    print("|---|---|---|---|")
    for name, value in (("floor: clustering off", off), (label, on)):
        print(f"| {name} | {value / 1e6:,.0f} | {value / events:,.0f} | {value / off:.3f} |")
    print(f"clustering's share of the flow's instructions with it on: {1 - off / on:.1%}")


if __name__ == "__main__":
    main()
