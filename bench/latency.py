"""Accept -> membership on an idle product, measured from outside, next to the admin API's own
round trip in the same run.

`segflow up` runs with its embedded Redis in a data dir of its own. Each sample is a new
customer's 5 `Product Viewed` in one `POST /v1/batch` (the demo write key), then
`GET /api/customers/{id}` polled back to back until `browsing-enthusiasts` is among its
segments: the delay from the collector's answer to the first answer that shows it. Between
samples the product is left idle for a random pause, so every sample starts on a quiet flow.

Rows: the floor (the same GET, of a customer already in the segment, alone); accept ->
membership through HTTP; the dataflow alone (the 5 events XADDed straight into the stream ->
the profile record in Redis names the segment, Redis polled back to back). Then the CPU the
flow's process and Redis use while nothing is sent, over --idle-seconds.

    .venv/bin/python bench/latency.py [--samples 200] [--idle-seconds 10]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.profiles.keys import profile_key  # noqa: E402
from app.streams import EVENT_FIELD, partition_of, stream_key  # noqa: E402
from tests.factories import iso, stored_event  # noqa: E402
from tests.helpers import descendants, free_port  # noqa: E402

SEGMENT = "browsing-enthusiasts"  # 5+ Product Viewed in the last 10 min, no order
VIEWS = 5
PARTITIONS = 4  # `segflow up`'s default
WARM_UP = 5  # samples sent and waited for before any is measured
PAUSE_S = (0.1, 0.3)  # idle time before each sample, drawn uniformly
CEILING_S = 30.0  # a sample not visible by then stops the run


def _views(customer: str, now: int) -> list[dict[str, object]]:
    return [
        {
            "type": "track",
            "userId": customer,
            "event": "Product Viewed",
            "timestamp": iso(now - VIEWS + n),
            "messageId": f"{customer}-{n}",
            "properties": {"product_id": f"p{n}", "category": "shoes", "price": 19.0},
        }
        for n in range(VIEWS)
    ]


def _until(seen: Callable[[], bool], what: str) -> float:
    """Poll ``seen`` back to back; the perf_counter time of the first poll that saw it."""
    deadline = time.monotonic() + CEILING_S
    while not seen():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not visible within {CEILING_S:.0f} s")
    return time.perf_counter()


def http_sample(http: httpx.Client, key: str, customer: str) -> float:
    """Seconds from the collector's answer to the admin API showing the membership."""
    answer = http.post("/v1/batch", json={"batch": _views(customer, _now())}, auth=(key, ""))
    accepted = time.perf_counter()
    if answer.status_code != 200 or answer.json()["accepted"] != VIEWS:
        raise SystemExit(f"the collector answered {answer.status_code}: {answer.text}")

    def member() -> bool:
        found = http.get(f"/api/customers/{customer}")
        return found.status_code == 200 and SEGMENT in found.json()["segments"]

    return _until(member, customer) - accepted


def flow_sample(client: redis.Redis, customer: str) -> float:
    """Seconds from the XADD of the 5 events to the profile record naming the segment."""
    now = _now()
    stream = stream_key(partition_of(customer, PARTITIONS))
    pipe = client.pipeline(transaction=False)
    for n in range(VIEWS):
        entry = stored_event(
            message_id=f"{customer}-{n}",
            customer=customer,
            name="Product Viewed",
            at=now - VIEWS + n,
            properties={"product_id": f"p{n}", "category": "shoes", "price": 19.0},
            source="bench",
        )
        pipe.xadd(stream, {EVENT_FIELD: orjson.dumps(entry)})
    pipe.execute()
    added = time.perf_counter()

    def member() -> bool:
        segments = client.hget(profile_key(customer), "segments")
        return segments is not None and SEGMENT in orjson.loads(segments)

    return _until(member, customer) - added


def floor_sample(http: httpx.Client, customer: str) -> float:
    started = time.perf_counter()
    found = http.get(f"/api/customers/{customer}")
    elapsed = time.perf_counter() - started
    if found.status_code != 200 or SEGMENT not in found.json()["segments"]:
        raise SystemExit(f"the floor's customer {customer} is not in {SEGMENT}")
    return elapsed


def _now() -> int:
    return time.time_ns() // 1_000_000


def _process(root: int, marker: bytes) -> int:
    """The descendant of ``root`` whose command line holds ``marker``."""
    deadline = time.monotonic() + CEILING_S
    while time.monotonic() < deadline:
        for pid in descendants(root):
            try:
                if marker in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return pid
            except OSError:
                continue
        time.sleep(0.2)
    raise SystemExit(f"no process of segflow up runs {marker.decode()}")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """The share of one core each process uses over ``seconds`` with nothing sent."""
    before = {name: _cpu_s(pid) for name, pid in pids.items()}
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    return {name: (_cpu_s(pid) - before[name]) / elapsed for name, pid in pids.items()}


def percentiles(seconds: list[float]) -> tuple[float, float, float]:
    """p50, p95, p99 in ms."""
    cuts = statistics.quantiles(seconds, n=100)
    return statistics.median(seconds) * 1000, cuts[94] * 1000, cuts[98] * 1000


def start(data_dir: Path, port: int) -> tuple[subprocess.Popen[str], str, str]:
    """`segflow up` on ``port``; its process, admin token and demo write key (first start)."""
    env = {**os.environ, "SEGFLOW_DATA_DIR": str(data_dir)}
    for name in ("REDIS_URL", "DATABASE_URL", "SEGFLOW_ADMIN_TOKEN"):
        env.pop(name, None)  # its own embedded Redis and SQLite, and a token it prints
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "up", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )
    assert server.stdout is not None
    token = key = None
    for line in server.stdout:
        if line.startswith("  admin token (shown once"):
            token = line.split()[-1]
        elif line.startswith("  demo write key"):
            key = line.split()[-1]
        elif "Ctrl-C" in line:
            break
    # what it logs from now on is read and dropped: a full pipe would stop it
    threading.Thread(target=server.stdout.read, daemon=True).start()
    if token is None or key is None:
        server.kill()
        raise SystemExit("segflow up did not print an admin token and a demo write key")
    return server, token, key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="segflow-bench-latency-"))
    port = free_port()
    server, token, key = start(data_dir, port)
    run = uuid.uuid4().hex[:6]
    rng = random.Random(7)
    try:
        state = orjson.loads((data_dir / "redis" / "server.json").read_bytes())
        password = (data_dir / "redis" / "password").read_text().strip()
        client = redis.Redis.from_url(f"redis://:{password}@127.0.0.1:{state['port']}/0")
        flow_pid = _process(server.pid, b"bytewax.run")
        redis_pid = _process(server.pid, b"redis-server")
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers) as http:
            for n in range(WARM_UP):  # the flow started, the rules loaded, connections open
                http_sample(http, key, f"warm-{run}-{n}")
            through_http, through_flow, floor = [], [], []
            for n in range(args.samples):  # alternated, so load elsewhere hits both alike
                time.sleep(rng.uniform(*PAUSE_S))
                through_http.append(http_sample(http, key, f"http-{run}-{n}"))
                time.sleep(rng.uniform(*PAUSE_S))
                through_flow.append(flow_sample(client, f"flow-{run}-{n}"))
                floor.append(floor_sample(http, f"http-{run}-{n}"))
        time.sleep(1.0)  # the last writes and deliveries settle
        idle = idle_cpu({"flow": flow_pid, "redis": redis_pid}, args.idle_seconds)
        client.close()
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()

    print(
        f"\nidle product, {args.samples} samples of {VIEWS} `Product Viewed` by a new customer "
        f"each, `segflow up` (embedded Redis, {PARTITIONS} partitions), {os.cpu_count()} cores"
    )
    print("| path | p50 ms | p95 ms | p99 ms | p99 ratio to floor |")
    print("|---|---|---|---|---|")
    floor_p99 = percentiles(floor)[2]
    for label, found in (
        ("floor: GET /api/customers/{id} round trip alone", floor),
        ("accept (POST /v1/batch answered) -> segment in GET /api/customers/{id}", through_http),
        ("dataflow alone: XADD -> profile record in Redis names the segment", through_flow),
    ):
        p50, p95, p99 = percentiles(found)
        print(f"| {label} | {p50:.1f} | {p95:.1f} | {p99:.1f} | {p99 / floor_p99:.1f} |")
    print(
        f"\nidle CPU over {args.idle_seconds:g} s with nothing sent: flow process "
        f"{idle['flow']:.1%} of a core, Redis {idle['redis']:.1%}"
    )


if __name__ == "__main__":
    main()
