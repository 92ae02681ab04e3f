"""The embedded Redis: a real redis-server under the data dir, found again after a crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import redis

from app.redis_server import EmbeddedRedis


def test_starts_a_real_server_that_keeps_data_across_restarts(tmp_path: Path) -> None:
    server = EmbeddedRedis.ensure(tmp_path)
    try:
        client = redis.Redis.from_url(server.url)
        assert client.info("server")["redis_version"].startswith("6.")
        client.xadd("events:{0}", {"e": "1"})
        client.close()
    finally:
        server.stop()
    assert not (tmp_path / "redis" / "server.json").exists()

    again = EmbeddedRedis.ensure(tmp_path)
    try:
        assert again.owned
        assert redis.Redis.from_url(again.url).xlen("events:{0}") == 1  # from the AOF
    finally:
        again.stop()


def test_a_server_left_by_a_killed_owner_is_reused(tmp_path: Path) -> None:
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import time
            from pathlib import Path
            from app.redis_server import EmbeddedRedis
            server = EmbeddedRedis.ensure(Path({str(tmp_path)!r}))
            print(server.port, flush=True)
            time.sleep(600)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    port = int(owner.stdout.readline())
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    owner.stdout.close()

    found = EmbeddedRedis.ensure(tmp_path)
    try:
        assert (found.port, found.owned) == (port, False)
        assert redis.Redis.from_url(found.url).ping()
        found.stop()  # not ours to stop: it keeps running
        assert redis.Redis.from_url(found.url).ping()
    finally:
        os.kill(found.pid, signal.SIGTERM)


def test_a_stale_record_is_cleared_and_a_new_server_started(tmp_path: Path) -> None:
    state = tmp_path / "redis" / "server.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"pid": os.getpid(), "port": 1}))

    server = EmbeddedRedis.ensure(tmp_path)
    try:
        assert server.owned
        assert server.port != 1
        assert json.loads(state.read_text())["port"] == server.port
    finally:
        server.stop()


def test_a_leftover_server_that_stopped_answering_is_stopped(tmp_path: Path) -> None:
    server = EmbeddedRedis.ensure(tmp_path)
    os.kill(server.pid, signal.SIGSTOP)  # alive but not answering
    try:
        replacement = EmbeddedRedis.ensure(tmp_path)
        try:
            deadline = time.monotonic() + 5
            while server._process and server._process.poll() is None:
                assert time.monotonic() < deadline, "the hung server was not stopped"
                time.sleep(0.05)
            assert replacement.owned
            assert replacement.port != server.port
        finally:
            replacement.stop()
    finally:
        if server._process and server._process.poll() is None:
            os.kill(server.pid, signal.SIGKILL)
            server._process.wait()
