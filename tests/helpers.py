"""Real services for tests, started cheaply: the API on a loopback port, and a TCP proxy that can
cut the API off from Redis to show what the collector does when its store is unreachable."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn

from app.redis_server import free_port as free_port  # the tests take it from here


def wait_for(predicate: Callable[[], Any], *, timeout_s: float = 30.0, what: str = "") -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out{': ' + what if what else ''}"
        time.sleep(0.05)


def wait_for_epochs(recovery: Path, *, count: int = 2, timeout_s: float = 30.0) -> None:
    """Wait for the running dataflow to commit ``count`` more recovery epochs: the epoch in
    flight now (at most the one after the last committed) is then committed too, with its
    output written and its snapshots holding what it applied."""
    from pipelines.recovery_files import committed_epoch

    target = committed_epoch(recovery) + count
    wait_for(
        lambda: committed_epoch(recovery) >= target,
        timeout_s=timeout_s,
        what=f"{count} recovery epochs committed in {recovery}",
    )


def children(pid: int) -> list[int]:
    """The ids of the processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def wait_for_line(
    process: subprocess.Popen[str], pattern: str, seen: list[str], timeout_s: float = 60.0
) -> str:
    """Read ``process``'s output until a line matches ``pattern`` (each line kept in
    ``seen``); fail the test if none does within ``timeout_s``."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if re.search(pattern, line):
            return line
    raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(seen)}")


def replay_messages(
    client: Any, settings: Any, tmp_path: Path, messages: list[dict[str, Any]]
) -> None:
    """Put Segment messages into the streams as ``segflow replay`` does (all must be valid)."""
    from app.ingest.replay import replay_file

    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(m) for m in messages) + "\n")
    summary = replay_file(
        path, client=client, partitions=settings.partitions, dedup_ttl_s=settings.dedup_window_s
    )
    assert summary.failed == 0


def read_profile(client: Any, customer_id: str) -> dict[str, Any]:
    """A profile as the sink wrote it: the instant of its last change, features, traits."""
    import orjson

    from app.profiles.keys import profile_key

    fields = client.hgetall(profile_key(customer_id))
    return {
        "at": int(fields[b"at"]),
        "features": orjson.loads(fields[b"features"]),
        "traits": orjson.loads(fields[b"traits"]),
    }


SEGFLOW = [sys.executable, "-m", "app.cli"]


def start_segflow(
    data_dir: Path, *options: str, api_workers: int, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], int, dict[str, str]]:
    """`segflow up [OPTIONS]` on ``data_dir`` with its embedded Redis and SQLite (no
    ``REDIS_URL`` or ``DATABASE_URL``), as `make up` runs it, ``env`` added to the
    environment: the process (output in ``stdout``), its port and its environment."""
    found = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    found |= {"SEGFLOW_DATA_DIR": str(data_dir), "SEGFLOW_API_WORKERS": str(api_workers)}
    found |= env or {}
    port = free_port()
    return segflow_up(found, port, *options), port, found


def segflow_up(env: dict[str, str], port: int, *options: str) -> subprocess.Popen[str]:
    """`segflow up` on ``port`` with ``env`` (another start on the same data: ``env`` as
    ``start_segflow`` gave it), its output in ``stdout``."""
    return subprocess.Popen(
        [*SEGFLOW, "up", "--port", str(port), *options],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def embedded_redis(data_dir: Path) -> Any:
    """A client of the embedded Redis `segflow up` runs on ``data_dir`` (its port from
    ``server.json``, its password from the data dir, as Segflow's processes get them)."""
    import redis

    state = json.loads((data_dir / "redis" / "server.json").read_text())
    password = (data_dir / "redis" / "password").read_text().strip()
    return redis.Redis(port=state["port"], password=password)


def through_proxy(redis_url: str, port: int) -> str:
    """``redis_url`` (its password and db kept) reached through a local proxy on ``port``."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(redis_url)
    auth = f":{parts.password}@" if parts.password else ""
    return urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{port}"))


class ServerThread:
    """uvicorn serving an ASGI app in a thread, on its own port (like httpx's test server)."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test API server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


class TcpProxy:
    """Forwards a loopback port to ``target``; ``cut()`` drops every connection and refuses new
    ones until ``restore()``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.restore()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(Exception):
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        if self._server is None or writer not in self._writers:
            # cut while this connection was being opened upstream: it must not outlive the cut
            writer.transport.abort()
            up_writer.transport.abort()
            return
        self._writers.add(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()

    def cut(self) -> None:
        self._call(self._stop())

    def restore(self) -> None:
        self._call(self._start())

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


@contextlib.contextmanager
def proxied(host: str, port: int) -> Iterator[TcpProxy]:
    proxy = TcpProxy(host, port)
    try:
        yield proxy
    finally:
        proxy.close()


def run_dataflow(settings: Any, sink: Any = None) -> None:
    """The real dataflow over what the streams hold now, in this thread, until caught up."""
    from bytewax.testing import run_main

    from pipelines.segmentation import segmentation_flow

    assert settings.redis_url
    # bytewax's stub declares run_main without annotations
    run_main(segmentation_flow(settings, stop_at_end=True, sink=sink))  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def segflow_process(env: dict[str, str], *command: str) -> Iterator[subprocess.Popen[bytes]]:
    """`segflow COMMAND` in a process group of its own, killed with its children on exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", *command], env=env, start_new_session=True
    )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have ended, with its group
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def pipeline_env(
    redis_url: str,
    data_dir: Path,
    partitions: int,
    database_url: str | None = None,
    **extra: str,
) -> dict[str, str]:
    """The environment `segflow pipeline` runs in, on these streams, this data dir and this
    database (None: the SQLite file in ``data_dir``, whatever DATABASE_URL the tests run
    under: a backend's rules are in its own database)."""
    inherited = {name: value for name, value in os.environ.items() if name != "DATABASE_URL"}
    database = {"DATABASE_URL": database_url} if database_url else {}
    return {
        **inherited,
        **database,
        "REDIS_URL": redis_url,
        "SEGFLOW_DATA_DIR": str(data_dir),
        "SEGFLOW_PARTITIONS": str(partitions),
        **extra,
    }


def customer_profiles(client: Any, customers: int) -> dict[str, dict[bytes, bytes]]:
    """The profiles of customers ``c0`` .. ``c{customers - 1}`` that exist, as stored."""
    from app.profiles.keys import profile_key

    pipe = client.pipeline(transaction=False)
    for n in range(customers):
        pipe.hgetall(profile_key(f"c{n}"))
    return {f"c{n}": fields for n, fields in enumerate(pipe.execute()) if fields}


def append_with_kills(
    client: Any,
    env: dict[str, str],
    events: list[dict[str, Any]],
    *,
    partitions: int,
    chunk: int,
    kills: int,
    seed: int,
    pause_s: tuple[float, float],
    timeout_s: float = 120.0,
    workers: int = 1,
    processes: int = 1,
) -> None:
    """Append ``events`` in chunks while `segflow pipeline --workers WORKERS --processes
    PROCESSES` runs, SIGKILL it (all its processes) after ``kills`` random chunks and start it
    again each time; return once it has processed them all (its recovery state then holds
    them, and the last run is stopped)."""
    from tests.factories import append_events, processed_entries

    rng = random.Random(seed)
    chunks = [events[i : i + chunk] for i in range(0, len(events), chunk)]
    kill_after = set(rng.sample(range(1, len(chunks)), kills))

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.cli",
                "pipeline",
                "--workers",
                str(workers),
                "--processes",
                str(processes),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    def stop(process: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        assert process.stderr is not None
        process.stderr.close()

    pipeline = start()
    try:
        for index, part in enumerate(chunks):
            append_events(client, part, partitions)
            time.sleep(rng.uniform(*pause_s))
            if index in kill_after:
                stop(pipeline)
                pipeline = start()
        deadline = time.monotonic() + timeout_s
        while processed_entries(client) < len(events):
            assert pipeline.stderr is not None
            assert pipeline.poll() is None, pipeline.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, f"caught up to {processed_entries(client)}"
            time.sleep(0.2)
        # caught up: the last run's output and snapshots settle (anything a resume replayed
        # shows now, and its recovery state holds every event)
        wait_for_epochs(Path(env["SEGFLOW_DATA_DIR"]) / "recovery", timeout_s=timeout_s)
    finally:
        stop(pipeline)


def write_profiles(
    redis_url: str,
    customers: Any,
    *,
    at: int | None = None,
    segments: frozenset[str] = frozenset(),
    outlier: bool | None = None,
) -> None:
    """Customers (``tests.cluster_personas.Customer``: an id and features) as profiles, written
    by the dataflow's own sink (no traits, no events; these segments, ``cluster:<id>`` among
    them, and outlier flag), their features as of ``at`` (default now: readers grow times
    since an event from it)."""
    from app.clock import now_ms
    from pipelines.records import ProfileUpdate
    from pipelines.sinks import ProfileSink

    at = now_ms() if at is None else at

    sink = ProfileSink(redis_url).build("profiles", 1, 2)  # not worker 0: no erasure finisher
    try:
        sink.write_batch(
            [
                ProfileUpdate(c.id, at, dict(c.features), {}, segments=segments, outlier=outlier)
                for c in customers
            ]
        )
    finally:
        sink.close()


def descendants(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc), for a process tree's CPU time."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found
