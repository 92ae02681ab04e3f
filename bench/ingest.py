"""Collector throughput: events/s accepted through HTTP, next to a floor measured in the same run.

The collector runs as `segflow up` runs it (uvicorn, SEGFLOW_API_WORKERS processes) on its
embedded Redis, or on REDIS_URL when set. Clients post pre-built batches of 100 events with
unique messageIds over keep-alive connections. The floor is the same events appended with
pipelined XADD from Python (hiredis), batches of 100: what Redis and redis-py alone can take.

    .venv/bin/python bench/ingest.py [--events 200000] [--clients 8] [--processes 2]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import multiprocessing
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.streams import partition_of  # noqa: E402
from tests.helpers import descendants, free_port  # noqa: E402

BATCH = 100


def make_batches(count: int, seed: str) -> list[bytes]:
    batches = []
    for start in range(0, count, BATCH):
        messages = [
            {
                "type": "track",
                "userId": f"user-{(start + i) % 5000}",
                "event": "Product Viewed" if i % 4 else "Product Added",
                "messageId": f"{seed}-{start + i}",
                "timestamp": "2026-11-20T10:00:00.000Z",
                "properties": {"product_id": f"p{i % 97}", "price": 19.99, "quantity": 1},
                "context": {"library": {"name": "bench", "version": "1"}},
            }
            for i in range(min(BATCH, count - start))
        ]
        batches.append(orjson.dumps({"batch": messages}))
    return batches


async def _client(port: int, key: str, batches: list[bytes], latencies: list[float]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    auth = base64.b64encode(f"{key}:".encode()).decode()
    head = (
        f"POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\n"
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n"
    )
    accepted = 0
    for body in batches:
        started = time.perf_counter()
        writer.write(head.format(len(body)).encode() + body)
        headers = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", headers.lower()).group(1))  # type: ignore[union-attr]
        answer = orjson.loads(await reader.readexactly(length))
        latencies.append(time.perf_counter() - started)
        if not headers.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"collector answered {headers[:40]!r}: {answer}")
        accepted += answer["accepted"]
    writer.close()
    return accepted


def _client_process(
    port: int,
    key: str,
    batches: list[bytes],
    clients: int,
    start_at: float,
    out: multiprocessing.Queue,
) -> None:
    async def main() -> tuple[int, list[float]]:
        latencies: list[float] = []
        shares = [batches[i::clients] for i in range(clients)]
        delay = start_at - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        counts = await asyncio.gather(*(_client(port, key, s, latencies) for s in shares))
        return sum(counts), latencies

    out.put(asyncio.run(main()))


def http_run(
    port: int, key: str, batches: list[bytes], clients: int, processes: int
) -> dict[str, float]:
    queue: multiprocessing.Queue = multiprocessing.Queue()
    start_at = time.time() + 1.0
    workers = [
        multiprocessing.Process(
            target=_client_process,
            args=(port, key, batches[p::processes], max(1, clients // processes), start_at, queue),
        )
        for p in range(processes)
    ]
    for worker in workers:
        worker.start()
    results = [queue.get() for _ in workers]
    elapsed = time.time() - start_at
    for worker in workers:
        worker.join()
    accepted = sum(r[0] for r in results)
    return summary(accepted, elapsed, [lat for r in results for lat in r[1]])


def summary(events: int, seconds: float, latencies: list[float]) -> dict[str, float]:
    """Events, time, rate, and the median and 99th percentile of per-batch latencies."""
    return {
        "events": events,
        "seconds": seconds,
        "rate": events / seconds,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": statistics.quantiles(latencies, n=100)[98] * 1000,
    }


def floor_run(url: str, batches: list[bytes], partitions: int) -> dict[str, float]:
    client = redis.Redis.from_url(url)
    decoded = [orjson.loads(b)["batch"] for b in batches]
    payloads = [[(m["userId"], orjson.dumps(m)) for m in batch] for batch in decoded]
    latencies = []
    started = time.perf_counter()
    for batch in payloads:
        t0 = time.perf_counter()
        pipe = client.pipeline(transaction=False)
        for user, payload in batch:
            pipe.xadd(f"floor:{{{partition_of(user, partitions)}}}", {"e": payload})
        pipe.execute()
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    for p in range(partitions):
        client.delete(f"floor:{{{p}}}")
    return summary(sum(len(b) for b in payloads), elapsed, latencies)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU time (user + system) of ``pid`` and its descendants, by program: api, redis."""
    tick = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for proc in descendants(pid):
        try:
            stat = Path(f"/proc/{proc}/stat").read_text()
            cmdline = Path(f"/proc/{proc}/cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        used = (int(fields[11]) + int(fields[12])) / tick
        name = "redis" if b"redis-server" in cmdline else "api" if proc != pid else "supervisor"
        totals[name] = totals.get(name, 0.0) + used
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--processes", type=int, default=2, help="load-generator processes")
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="segflow-bench-"))
    port = free_port()
    env = {**os.environ, "SEGFLOW_DATA_DIR": str(data_dir)}
    env.pop("DATABASE_URL", None)
    server = subprocess.Popen(
        # The collector alone: the dataflow would share these two cores with it.
        [sys.executable, "-m", "app.cli", "up", "--port", str(port), "--no-pipeline"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    key = None
    assert server.stdout is not None
    for line in server.stdout:
        if "demo write key" in line and line.startswith("  "):
            key = line.split()[-1]
        if "Ctrl-C" in line:
            break
    if key is None:
        raise SystemExit("segflow up did not print a demo write key")
    try:
        redis_url = env.get("REDIS_URL")
        if not redis_url:
            state = orjson.loads((data_dir / "redis" / "server.json").read_bytes())
            password = (data_dir / "redis" / "password").read_text().strip()
            redis_url = f"redis://:{password}@127.0.0.1:{state['port']}/0"
        partitions = int(env.get("SEGFLOW_PARTITIONS", "4"))
        seed = uuid.uuid4().hex[:8]
        warm = make_batches(5_000, f"warm-{seed}")
        http_run(port, key, warm, args.clients, args.processes)
        batches = make_batches(args.events, seed)
        floor = floor_run(redis_url, batches, partitions)
        before = cpu_seconds(server.pid)
        http = http_run(port, key, batches, args.clients, args.processes)
        after = cpu_seconds(server.pid)
        # uvicorn's workers: the processes it spawned (none: it serves in its own process)
        api_processes = (
            sum(b"spawn_main" in cmdline for cmdline in map(_cmdline, descendants(server.pid))) or 1
        )
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=60)

    workers = api_processes
    print(
        f"\ncollector benchmark: {args.events:,} events, batches of {BATCH}, "
        f"{args.clients} connections in {args.processes} client processes, "
        f"{workers} API workers, {os.cpu_count()} cores, Redis "
        f"{'REDIS_URL' if env.get('REDIS_URL') else 'embedded'}"
    )
    print("| path | events/s | ratio to floor | p50 ms/batch | p99 ms/batch |")
    print("|---|---|---|---|---|")
    for name, row in (("floor: pipelined XADD (hiredis)", floor), ("HTTP /v1/batch", http)):
        print(
            f"| {name} | {row['rate']:,.0f} | {row['rate'] / floor['rate']:.2f} | "
            f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} |"
        )
    seconds = http["seconds"]
    used = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in after}
    print("\nCPU during the HTTP run (cores busy; microseconds of CPU per event):")
    for name in ("api", "redis"):
        if name not in used:  # an external Redis (REDIS_URL) is not this run's to measure
            print(f"- {name}: not measured (not a process of this run)")
            continue
        print(
            f"- {name}: {used[name] / seconds:.2f} cores, "
            f"{used[name] / http['events'] * 1e6:.1f} us/event"
        )


if __name__ == "__main__":
    main()
