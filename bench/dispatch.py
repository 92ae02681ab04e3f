"""Webhook deliveries per second and trigger-to-receipt latency, next to plain signed POSTs to
the same receiver measured in the same run.

The receiver is a small HTTP/1.1 server in a process of its own (keep-alive, every request
answered 200 with no body). It notes each request's ``webhook-id`` and the wall time
(``time.time_ns``) at which the request had been read in full, and counts the connections
opened to it; with ``--verify`` it also checks every signature with the standardwebhooks
library (a bad one is answered 401 and stops the run).

1. Floor: DELIVERIES POSTs from this process, each signed with ``signature_headers`` and sent
   with ``webhook_client()`` (httpx), CONCURRENCY in flight. The body is a payload the
   dispatcher rendered, so both paths send the same bytes. Latency: from the POST's start
   (before signing) to its receipt.
2. Dispatcher, backlog: DELIVERIES triggers appended to the ``triggers`` stream at once, with the
   fields ``pipelines/sinks.py`` writes and the shipped cart-abandoners rule's send action
   (cart-reminder email, at most one a day: each delivery takes a frequency-cap slot), each for
   a customer of its own with a profile and a cart. A real ``Dispatcher`` runs in this process
   with the real ``StoredOutbox``: destination ``email`` in a SQLite database under a temporary
   SEGFLOW_DATA_DIR, the shipped cart-reminder template rendered per delivery. Latency: from
   each trigger's XADD to its receipt, so here mostly its wait behind the others.
3. Paced: the floor and the dispatcher again, at RATE POSTs (triggers) per second for SECONDS,
   RATE being half the dispatcher's backlog rate unless given: the latency of a delivery that
   does not queue behind others.

Triggers are appended by a feeder process, as the dataflow appends them in production. Each
path is warmed up first (WARM_UP deliveries, not counted). Rates are deliveries over the time
from the first POST (XADD) to the last receipt.

Cores: with two or more CPUs, this process (the floor's client, the dispatcher) is pinned to one
CPU and the receiver, the feeder and the embedded Redis to the others, so their work does not
come out of the measured process's core; each path's CPU per delivery is printed for this
process (with the renderer processes it starts, which share its CPU), the receiver and Redis.
``--no-pin`` leaves the placing to the OS.

REDIS_URL, when set, must name a Redis of the benchmark's own: it is flushed.

    .venv/bin/python bench/dispatch.py [--deliveries 2500] [--concurrency 8] [--rate N]
        [--seconds 5] [--warm-up 200] [--verify] [--no-pin] [--profile dispatch.prof]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import redis
import redis.asyncio as aioredis
from pydantic import SecretStr
from redis.typing import EncodableT, FieldT
from sqlalchemy.engine import Engine
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.clock import now_ms  # noqa: E402
from app.db import make_engine  # noqa: E402
from app.dispatch import worker  # noqa: E402
from app.dispatch.deliveries import Delivery, delivery_key  # noqa: E402
from app.dispatch.outbox import StoredOutbox  # noqa: E402
from app.dispatch.rendering import TemplateRenderer  # noqa: E402
from app.dispatch.schema import DestinationIn  # noqa: E402
from app.dispatch.secret_box import SecretBox, generate_signing_secret, secret_box  # noqa: E402
from app.dispatch.store import create_destination, seed_shipped_templates  # noqa: E402
from app.dispatch.webhooks import USER_AGENT, signature_headers, webhook_client  # noqa: E402
from app.dispatch.worker import Dispatcher  # noqa: E402
from app.migrate import migrated_session  # noqa: E402
from app.profiles.keys import TRIGGERS_KEY, profile_key, recent_events_key  # noqa: E402
from app.profiles.service import get_profile  # noqa: E402
from app.redis_server import EmbeddedRedis  # noqa: E402
from app.rules.schema import parse_rule  # noqa: E402
from app.settings import Settings  # noqa: E402

RULE_FILE = ROOT / "rules" / "cart-abandoners.yaml"
RATE_LIMIT_PER_S = 10_000.0  # the most the API lets a destination have: it never throttles here
TIMEOUT_S = 10.0  # the destination's per-attempt timeout (the API's default)
WARM_UP = 200  # deliveries before each path, not counted: connections, caches, the template
BURST_CHUNK = 500  # triggers per pipelined XADD of a backlog
STALL_S = 60.0  # a path that receives nothing new for this long stops the run
# The carts' last add, 30 minutes ago, so the triggers (30 minutes later) are fresh: older ones
# would be recorded stale, not sent (a send's max_age). Fixed at the first import and inherited
# by the receiver and feeder processes, which import this module again.
ADDED_AT = int(
    os.environ.setdefault("SEGFLOW_BENCH_ADDED_AT", str(time.time_ns() // 1_000_000 - 30 * 60_000))
)
TRIGGER_AT = ADDED_AT + 30 * 60_000

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
UNAUTHORIZED = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n"


class RunStopped(Exception):
    """The run cannot give honest figures (a delivery missing, a bad signature): why."""


# --- the receiver (its own process) --------------------------------------------------------------


class ReceiptLog:
    """What the receiver saw: (webhook-id, receipt ns) per request, the connections opened, and
    the bad signatures."""

    def __init__(self, received: Any, bad: Any, verifier: Webhook | None) -> None:
        self.received = received  # shared counters the bench polls
        self.bad = bad
        self.verifier = verifier
        self.receipts: list[tuple[str, int]] = []
        self.connections = 0

    def record(self, headers: dict[str, str], body: bytes) -> bytes:
        at = time.time_ns()
        if self.verifier is not None:
            try:
                self.verifier.verify(body, headers, json_parse=False)
            except WebhookVerificationError:
                self.bad.value += 1
                return UNAUTHORIZED
        self.receipts.append((headers.get("webhook-id", ""), at))
        self.received.value += 1
        return OK

    def take(self) -> tuple[list[tuple[str, int]], int]:
        taken = self.receipts, self.connections
        self.receipts, self.connections = [], 0
        self.received.value = 0
        return taken


class WebhookReceiver(asyncio.Protocol):
    """One keep-alive connection: requests parsed as they arrive, each answered at once."""

    def __init__(self, log: ReceiptLog) -> None:
        self._log = log
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._log.connections += 1

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (end := self._buffer.find(b"\r\n\r\n")) >= 0:
            lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")[1:]
            headers = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if len(self._buffer) < end + 4 + length:
                return  # the body is still on its way
            body = bytes(self._buffer[end + 4 : end + 4 + length])
            del self._buffer[: end + 4 + length]
            assert self._transport is not None
            self._transport.write(self._log.record(headers, body))


def receive_webhooks(
    control: Connection, received: Any, bad: Any, secret: str | None, cpus: set[int] | None
) -> None:
    """The receiver process: serve on a loopback port (sent to the parent), then answer the
    parent's ``take`` (the receipts and connections since the last, and this process's CPU
    seconds) until ``stop``."""
    if cpus:
        os.sched_setaffinity(0, cpus)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        log = ReceiptLog(received, bad, Webhook(secret) if secret else None)
        server = await loop.create_server(lambda: WebhookReceiver(log), "127.0.0.1", 0)
        control.send(server.sockets[0].getsockname()[1])
        stopped = loop.create_future()

        def command() -> None:
            try:
                asked = control.recv()
            except EOFError:  # the bench is gone
                asked = "stop"
            if asked == "take":
                control.send((*log.take(), time.process_time()))
            elif not stopped.done():
                stopped.set_result(None)

        loop.add_reader(control.fileno(), command)
        await stopped
        server.close()

    asyncio.run(serve())


@dataclass(frozen=True)
class Taken:
    receipts: list[tuple[str, int]]  # (webhook-id, receipt ns)
    connections: int  # opened by the clients
    cpu_s: float  # the receiver's CPU seconds since it started


class ReceiverProcess:
    """The bench's handle on the receiver process."""

    def __init__(self, *, secret: str | None, cpus: set[int] | None) -> None:
        context = multiprocessing.get_context("spawn")  # nothing of this process's state
        self._control, child = context.Pipe()
        self._received = context.RawValue("q", 0)
        self._bad = context.RawValue("q", 0)
        self._process = context.Process(
            target=receive_webhooks,
            args=(child, self._received, self._bad, secret, cpus),
            name="bench-receiver",
            daemon=True,
        )
        self._process.start()
        child.close()
        if not self._control.poll(60):
            raise RunStopped("the receiver did not start within 60 s")
        self.url = f"http://127.0.0.1:{self._control.recv()}/hooks"
        self.pid = self._process.pid

    def take(self) -> Taken:
        """What was received since the last take (and forget it)."""
        self._control.send("take")
        receipts, connections, cpu_s = self._control.recv()
        return Taken(receipts, connections, cpu_s)

    async def wait_for(self, count: int, what: str) -> None:
        """Until ``count`` requests were received since the last take."""
        seen, progressed = -1, time.monotonic()
        while (now := self._received.value) < count:
            if self._bad.value:
                raise RunStopped(f"{what}: {self._bad.value} signatures did not verify")
            if now != seen:
                seen, progressed = now, time.monotonic()
            elif time.monotonic() - progressed > STALL_S:
                raise RunStopped(f"{what}: {now} of {count} received, none for {STALL_S:g} s")
            await asyncio.sleep(0.02)  # receipts carry their own times: this is not one

    def stop(self) -> None:
        with contextlib.suppress(OSError):  # it is gone already
            self._control.send("stop")
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()


# --- triggers and the customers they are for -----------------------------------------------------


def customers(label: str, count: int) -> list[str]:
    return [f"{label}-{n}" for n in range(count)]


def seed_profiles(client: redis.Redis, names: Sequence[str]) -> None:
    """A profile per customer as the dataflow leaves it: traits, features, recent events with a
    cart of two lines (what the cart-reminder template lists)."""
    pipe = client.pipeline(transaction=False)
    for n, customer in enumerate(names):
        lines = [
            {"product_id": f"p{n % 97}", "name": "Trail shoe", "price": 64.5, "quantity": 2},
            {"product_id": f"p{(n + 1) % 97}", "name": "Wool hat", "price": 19.0, "quantity": 1},
        ]
        events: list[dict[str, Any]] = [
            {
                "type": "track",
                "event": "Product Viewed",
                "timestamp": ADDED_AT - 120_000,
                "properties": {"product_id": lines[0]["product_id"]},
                "message_id": f"{customer}-v",
            },
            *(
                {
                    "type": "track",
                    "event": "Product Added",
                    "timestamp": ADDED_AT - 60_000 * (1 - i),
                    "properties": line,
                    "message_id": f"{customer}-a{i}",
                }
                for i, line in enumerate(lines)
            ),
        ]
        features = {"cart_value": 148.0, "first_seen": ADDED_AT - 120_000, "last_seen": ADDED_AT}
        traits = {"first_name": "Ada", "email": f"{customer}@example.com", "country": "DE"}
        pipe.hset(
            profile_key(customer),
            mapping={
                "customer_id": customer,
                "at": TRIGGER_AT,
                "features": orjson.dumps(features),
                "traits": orjson.dumps(traits),
                "segments": orjson.dumps(["cart-abandoners"]),
            },
        )
        pipe.zadd(recent_events_key(customer), {orjson.dumps(e): e["timestamp"] for e in events})
    pipe.execute()


class Trigger(NamedTuple):
    id: str
    fields: dict[FieldT, EncodableT]  # the stream entry


def make_trigger(customer: str, rule: str, send: dict[str, Any]) -> Trigger:
    """A cart-abandoners enter for ``customer``, as ``pipelines/sinks.py`` appends it."""
    trigger_id = f"{customer}:{rule}:enter:{TRIGGER_AT}:0"
    return Trigger(
        trigger_id,
        {
            "trigger_id": trigger_id,
            "customer_id": customer,
            "segment": rule,
            "kind": "enter",
            "at": TRIGGER_AT,
            "rule_version": 1,
            "destination": send["destination"],
            "template": send["template"],
            "send": orjson.dumps(send),
        },
    )


def feed_triggers(
    url: str,
    triggers: list[Trigger],
    rate: float | None,
    cpus: set[int] | None,
    ready: Any,
    go: Any,
    sent_out: Any,
) -> None:
    """The feeder process: once ``go`` is set, XADD the triggers, all at once (pipelined, in
    chunks) or ``rate`` a second; put {trigger id: XADD wall time in ns} on ``sent_out``."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    client = redis.Redis.from_url(url)
    client.ping()
    sent: dict[str, int] = {}
    ready.set()
    go.wait()
    if rate is None:
        for start in range(0, len(triggers), BURST_CHUNK):
            chunk = triggers[start : start + BURST_CHUNK]
            pipe = client.pipeline(transaction=False)
            for trigger in chunk:
                pipe.xadd(TRIGGERS_KEY, trigger.fields)
            at = time.time_ns()  # the chunk's first XADD; the others are a little later
            pipe.execute()
            sent.update(dict.fromkeys((trigger.id for trigger in chunk), at))
    else:
        began = time.perf_counter()
        for n, trigger in enumerate(triggers):
            delay = began + n / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent[trigger.id] = time.time_ns()
            client.xadd(TRIGGERS_KEY, trigger.fields)
    client.close()
    sent_out.put(sent)


# --- measuring -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PathResult:
    path: str
    deliveries: int
    seconds: float  # first POST / XADD to last receipt
    latencies_ms: list[float]
    connections: int  # the receiver accepted
    cpu_s: tuple[float, float, float]  # this process, the receiver, Redis

    @property
    def rate(self) -> float:
        return self.deliveries / self.seconds

    def cells(self, floor: PathResult) -> list[str]:
        p50 = statistics.median(self.latencies_ms)
        p99 = statistics.quantiles(self.latencies_ms, n=100)[98] if self.deliveries > 1 else p50
        return [
            self.path,
            f"{self.deliveries:,}",
            f"{self.connections:,}",
            f"{self.rate:,.0f}",
            f"{p50:.1f}",
            f"{p99:.1f}",
            f"{self.rate / floor.rate:.2f}",
            *(f"{1e6 * cpu / self.deliveries:,.0f}" for cpu in self.cpu_s),
        ]


COLUMNS = (
    "path",
    "deliveries",
    "connections",
    "deliveries/s",
    "p50 ms",
    "p99 ms",
    "ratio to floor",
    "CPU µs/delivery: this process (+ its renderers)",
    "receiver",
    "Redis",
)


def redis_cpu_s(client: redis.Redis) -> float:
    info: Any = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class CpuClock:
    """CPU seconds of this process, the receiver and Redis over one path."""

    def __init__(
        self, client: redis.Redis, receiver_s: float, helpers: Callable[[], float] | None = None
    ) -> None:
        self._client = client
        self._helpers = helpers or (lambda: 0.0)  # CPU of this process's helpers (renderers)
        self._started = (self._own(), receiver_s, redis_cpu_s(client))

    def _own(self) -> float:
        return time.process_time() + self._helpers()

    def stop(self, receiver_s: float) -> tuple[float, float, float]:
        own, receiver, server = self._started
        now = (self._own(), receiver_s, redis_cpu_s(self._client))
        return (now[0] - own, now[1] - receiver, now[2] - server)


def result(
    path: str, started: dict[str, int], taken: Taken, cpu_s: tuple[float, float, float]
) -> PathResult:
    """The path's figures, once every delivery was received exactly once."""
    receipts = taken.receipts
    received = dict(receipts)
    missing = started.keys() - received.keys()
    extra = received.keys() - started.keys()
    if missing or extra or len(received) != len(receipts):
        raise RunStopped(
            f"{path}: {len(receipts)} requests received for {len(started)} deliveries "
            f"({len(missing)} missing, {len(extra)} unexpected, "
            f"{len(receipts) - len(received)} repeated)"
        )
    first, last = min(started.values()), max(received.values())
    return PathResult(
        path=path,
        deliveries=len(started),
        seconds=(last - first) / 1e9,
        latencies_ms=[(received[key] - at) / 1e6 for key, at in started.items()],
        connections=taken.connections,
        cpu_s=cpu_s,
    )


async def signed_posts(
    *,
    url: str,
    secret: SecretStr,
    body: str,
    ids: Sequence[str],
    concurrency: int,
    rate: float | None,
) -> dict[str, int]:
    """The floor's POSTs: ``concurrency`` in flight, back to back or started ``rate`` a second;
    answers {webhook-id: start ns}."""
    started: dict[str, int] = {}
    content = body.encode()
    async with webhook_client() as client:
        limit = asyncio.Semaphore(concurrency)

        async def post(webhook_id: str) -> None:
            async with limit:
                headers = {
                    "user-agent": USER_AGENT,
                    "content-type": "application/json",
                    **signature_headers(
                        secret=secret, webhook_id=webhook_id, body=body, at=datetime.now(UTC)
                    ),
                }
                answer = await client.post(url, content=content, headers=headers, timeout=TIMEOUT_S)
                if answer.status_code != 200:
                    raise RunStopped(f"floor: the receiver answered {answer.status_code}")

        if rate is None:
            pending = iter(ids)

            async def sender() -> None:
                for webhook_id in pending:
                    started[webhook_id] = time.time_ns()
                    await post(webhook_id)

            await asyncio.gather(*(sender() for _ in range(concurrency)))
            return started
        posts = []
        began = time.perf_counter()
        for n, webhook_id in enumerate(ids):
            delay = began + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            started[webhook_id] = time.time_ns()  # when it was due, if it waits for a slot
            posts.append(asyncio.ensure_future(post(webhook_id)))
        await asyncio.gather(*posts)
    return started


def floor_path(
    *,
    name: str,
    label: str,
    receiver: ReceiverProcess,
    client: redis.Redis,
    secret: SecretStr,
    body: str,
    count: int,
    concurrency: int,
    rate: float | None,
    warm_up: int,
) -> PathResult:
    def ids(kind: str, n: int) -> list[str]:
        return [f"{label}-{kind}-{i}" for i in range(n)]

    async def run() -> tuple[dict[str, int], Taken, tuple[float, float, float]]:
        await signed_posts(
            url=receiver.url,
            secret=secret,
            body=body,
            ids=ids("warm", warm_up),
            concurrency=concurrency,
            rate=None,
        )
        await receiver.wait_for(warm_up, label)
        clock = CpuClock(client, receiver.take().cpu_s)
        started = await signed_posts(
            url=receiver.url,
            secret=secret,
            body=body,
            ids=ids("post", count),
            concurrency=concurrency,
            rate=rate,
        )
        await receiver.wait_for(count, label)
        taken = receiver.take()
        return started, taken, clock.stop(taken.cpu_s)

    started, taken, cpu = asyncio.run(run())
    return result(name, started, taken, cpu)


@dataclass(frozen=True)
class DispatchSetup:
    url: str
    engine: Engine
    box: SecretBox
    rule: str
    send: dict[str, Any]
    cpus_apart: set[int] | None  # where the feeder runs


def dispatcher_path(
    *,
    name: str,
    label: str,
    setup: DispatchSetup,
    receiver: ReceiverProcess,
    client: redis.Redis,
    count: int,
    rate: float | None,
    warm_up: int,
    profile: Path | None = None,
) -> PathResult:
    """A real Dispatcher in this process, from the first XADD until every trigger is received."""
    warm = [make_trigger(c, setup.rule, setup.send) for c in customers(f"{label}-warm", warm_up)]
    triggers = [make_trigger(c, setup.rule, setup.send) for c in customers(label, count)]
    seed_profiles(client, customers(f"{label}-warm", warm_up) + customers(label, count))
    context = multiprocessing.get_context("spawn")
    ready, go, sent_out = context.Event(), context.Event(), context.Queue()
    feeder = context.Process(
        target=feed_triggers,
        args=(setup.url, triggers, rate, setup.cpus_apart, ready, go, sent_out),
        name="bench-feeder",
        daemon=True,
    )
    profiler = cProfile.Profile() if profile else None

    async def run() -> tuple[Taken, tuple[float, float, float]]:
        connection = aioredis.Redis.from_url(setup.url)
        renderer = TemplateRenderer()
        dispatcher = Dispatcher(
            connection,
            StoredOutbox(setup.engine, setup.box, renderer),
            allow_private=True,
            consumer=label,
        )
        running = asyncio.ensure_future(dispatcher.run())
        try:
            pipe = client.pipeline(transaction=False)
            for trigger in warm:
                pipe.xadd(TRIGGERS_KEY, trigger.fields)
            pipe.execute()
            await receiver.wait_for(warm_up, label)
            receiver.take()
            feeder.start()
            while not ready.is_set():  # the feeder's start-up is not the dispatcher's time
                await asyncio.sleep(0.01)
            clock = CpuClock(client, receiver.take().cpu_s, renderer.cpu_s)
            if profiler:
                profiler.enable()
            go.set()
            try:
                await receiver.wait_for(count, label)
            except RunStopped as stopped:
                received = {webhook_id for webhook_id, _ in receiver.take().receipts}
                first = next(t.id for t in triggers if t.id not in received)
                raise RunStopped(f"{stopped}; {first}: {stalled_reason(client, first)}") from None
            if profiler:
                profiler.disable()
            taken = receiver.take()
            return taken, clock.stop(taken.cpu_s)
        finally:
            dispatcher.stop()
            await running
            await dispatcher.close()
            await renderer.close()
            await connection.aclose()

    try:
        taken, cpu = asyncio.run(run())
        sent: dict[str, int] = sent_out.get(timeout=60)
    finally:
        if feeder.pid is not None:
            feeder.join(10)
            if feeder.is_alive():
                feeder.kill()
    if profiler and profile:
        profiler.dump_stats(profile)
    return result(name, sent, taken, cpu)


def sample_body(setup: DispatchSetup, client: redis.Redis) -> str:
    """One payload as the dispatcher renders it (the floor sends it)."""
    (customer,) = customers("sample", 1)
    seed_profiles(client, [customer])
    now = now_ms()
    delivery = Delivery(
        id=make_trigger(customer, setup.rule, setup.send).id,
        customer_id=customer,
        rule=setup.rule,
        kind="enter",
        at=TRIGGER_AT,
        rule_version=1,
        destination=setup.send["destination"],
        template=setup.send["template"],
        send=setup.send,
        status="scheduled",
        created_at=now,
        updated_at=now,
    )

    async def render() -> str:
        connection = aioredis.Redis.from_url(setup.url)
        try:
            found = await get_profile(connection, customer)
            assert found is not None
            renderer = TemplateRenderer(processes=1)
            try:
                return await StoredOutbox(setup.engine, setup.box, renderer).payload(
                    delivery, found
                )
            finally:
                await renderer.close()
        finally:
            await connection.aclose()

    return asyncio.run(render())


def stalled_reason(client: redis.Redis, trigger_id: str) -> str:
    """What the delivery log says of a trigger (for a run that stopped)."""
    fields: Any = client.hmget(delivery_key(trigger_id), "status", "reason")
    return " ".join(value.decode() for value in fields if value) or "no delivery recorded"


# --- the run -------------------------------------------------------------------------------------


def cpu_plan(pin: bool) -> tuple[set[int], set[int]] | None:
    """(this process's CPUs, everyone else's), or None: not pinned."""
    available = sorted(os.sched_getaffinity(0))
    if not pin or len(available) < 2:
        return None
    return {available[0]}, set(available[1:])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=2_500, help="per backlog path")
    parser.add_argument(
        "--concurrency", type=int, default=8, help="POSTs in flight (the destination's setting)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="paced paths: per second (default: half the dispatcher's backlog rate)",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the paced paths")
    parser.add_argument(
        "--warm-up", type=int, default=WARM_UP, help="deliveries before each path, not counted"
    )
    parser.add_argument("--verify", action="store_true", help="the receiver checks signatures")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument(
        "--profile", type=Path, default=None, help="write cProfile stats of the backlog dispatch"
    )
    args = parser.parse_args(argv)

    load = os.getloadavg()[0]  # other work on these cores shows in every figure
    work = Path(tempfile.mkdtemp(prefix="segflow-bench-dispatch-"))
    plan = cpu_plan(not args.no_pin)
    mine, apart = plan if plan else (None, None)
    own_cpus = os.sched_getaffinity(0)
    rule = parse_rule(RULE_FILE.read_text(encoding="utf-8"), source=str(RULE_FILE))
    send = rule.on_enter[0].model_dump(mode="json")["send"]
    secret = generate_signing_secret()
    server = EmbeddedRedis.ensure(work / "data") if not os.environ.get("REDIS_URL") else None
    url = os.environ.get("REDIS_URL") or (server.url if server else "")
    client = redis.Redis.from_url(url)
    settings = Settings(
        REDIS_URL=url,
        DATABASE_URL=None,
        SEGFLOW_DATA_DIR=work / "data",
        SEGFLOW_SECRET_KEY=None,
    )
    engine = make_engine(settings)
    receiver = None
    try:
        if server is not None and apart:
            os.sched_setaffinity(server.pid, apart)
        receiver = ReceiverProcess(secret=secret if args.verify else None, cpus=apart)
        client.flushdb()
        with migrated_session(settings) as session:
            seed_shipped_templates(session=session)
            spec = DestinationIn(
                name=send["destination"],
                kind="email",
                url=receiver.url,
                secret=SecretStr(secret),
                timeout_s=TIMEOUT_S,
                rate_limit_per_s=RATE_LIMIT_PER_S,
                concurrency=args.concurrency,
            )
            # the receiver is on loopback, which a destination may be only when allowed
            box = secret_box(settings)
            create_destination(session=session, box=box, spec=spec, allow_private=True)
        setup = DispatchSetup(url, engine, box, rule.id, send, apart)
        body = sample_body(setup, client)
        if mine:
            os.sched_setaffinity(0, mine)
        floor = floor_path(
            name=f"floor: signed POSTs, {args.concurrency} in flight",
            label="floor",
            receiver=receiver,
            client=client,
            secret=SecretStr(secret),
            body=body,
            count=args.deliveries,
            concurrency=args.concurrency,
            rate=None,
            warm_up=args.warm_up,
        )
        backlog = dispatcher_path(
            name=f"dispatcher: a backlog of {args.deliveries:,} triggers",
            label="backlog",
            setup=setup,
            receiver=receiver,
            client=client,
            count=args.deliveries,
            rate=None,
            warm_up=args.warm_up,
            profile=args.profile,
        )
        rate = args.rate or backlog.rate / 2
        paced = max(1, round(rate * args.seconds))
        paced_floor = floor_path(
            name=f"floor: signed POSTs started {rate:,.0f}/s",
            label="paced-floor",
            receiver=receiver,
            client=client,
            secret=SecretStr(secret),
            body=body,
            count=paced,
            concurrency=args.concurrency,
            rate=rate,
            warm_up=args.warm_up,
        )
        paced_dispatch = dispatcher_path(
            name=f"dispatcher: triggers appended {rate:,.0f}/s",
            label="paced",
            setup=setup,
            receiver=receiver,
            client=client,
            count=paced,
            rate=rate,
            warm_up=args.warm_up,
        )
    except RunStopped as stopped:
        raise SystemExit(f"stopped: {stopped}") from None
    finally:
        os.sched_setaffinity(0, own_cpus)
        if receiver is not None:
            receiver.stop()
        engine.dispose()
        client.close()
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    placing = (
        f"this process on CPU {min(mine)}; the receiver, the feeder and "
        f"{'the embedded Redis' if server else 'not Redis (REDIS_URL)'} on CPU "
        f"{','.join(map(str, sorted(apart)))}"
        if mine and apart
        else "not pinned: every process shares them"
    )
    print(
        f"\ndispatch benchmark: {len(own_cpus)} cores ({placing}), load average "
        f"{load:.2f} before the run; Redis {'embedded' if server else 'REDIS_URL'}, SQLite.\n"
        f"Destination {send['destination']!r}: {args.concurrency} in flight, rate limit "
        f"{RATE_LIMIT_PER_S:,.0f}/s (the API's maximum, so never the limit here), timeout "
        f"{TIMEOUT_S:g} s. Per delivery the shipped cart-reminder template is rendered "
        f"({len(body):,}-byte body) and a frequency-cap slot taken (at_most "
        f"{send['at_most']['times']} per {send['at_most']['per']}). Dispatcher: reads "
        f"{worker.READ_COUNT}, leases {worker.LEASE_COUNT}, at most {worker.MAX_IN_FLIGHT} in "
        f"flight, idles {worker.IDLE_S * 1000:g} ms. Signatures "
        f"{'verified by the receiver' if args.verify else 'not verified (--verify)'}. "
        f"{args.warm_up} warm-up deliveries per path, not counted.\n"
        "Latency: floor from the POST's start, dispatcher from the trigger's XADD, to its "
        "receipt. Connections: TCP connections the receiver accepted over the path. CPU: this "
        "process's (floor client or dispatcher), the receiver's and Redis's over the path, per "
        "delivery. Paced rows: their ratio is to the paced floor."
    )
    print(f"| {' | '.join(COLUMNS)} |")
    print(f"|{'---|' * len(COLUMNS)}")
    for row, against in (
        (floor, floor),
        (backlog, floor),
        (paced_floor, paced_floor),
        (paced_dispatch, paced_floor),
    ):
        print(f"| {' | '.join(row.cells(against))} |")


if __name__ == "__main__":
    main()
