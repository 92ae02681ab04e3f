"""``segflow up``: start Segflow's processes and keep them running.

Each process is a plain child; one that exits (even by SIGKILL) is started again within seconds,
with a growing pause if it keeps dying at once, and the restart is logged. The embedded Redis
is one of them, the first: Ctrl-C or SIGTERM stops the children in reverse order, so Redis
last, once nothing writes to it any more.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

log = logging.getLogger("segflow.supervisor")

_POLL_S = 0.2
_STOP_TIMEOUT_S = 10.0
_QUICK_DEATH_S = 10.0  # dying sooner than this after a start counts as a crash loop
_MAX_BACKOFF_S = 30.0


@dataclass
class ProcessSpec:
    name: str
    argv: Sequence[str]
    env: dict[str, str] = field(default_factory=dict)
    # called with the pid at each start (the embedded Redis records where it runs)
    on_start: Callable[[int], None] | None = None


@dataclass
class _Child:
    spec: ProcessSpec
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = 0.0
    next_start_at: float = 0.0


class Supervisor:
    """Runs ``specs`` as children. ``state_file`` records their process groups, so that a start
    after this supervisor itself was killed can end what it left behind (uvicorn's workers
    would otherwise keep the port)."""

    def __init__(
        self, specs: Sequence[ProcessSpec], *, base_env: dict[str, str], state_file: Path
    ) -> None:
        self._children = [_Child(spec) for spec in specs]
        self._base_env = base_env
        self._state_file = state_file
        self._stopping = False

    def end_leftovers(self) -> None:
        end_leftovers(self._state_file)

    def _record_groups(self) -> None:
        groups = {c.spec.name: c.process.pid for c in self._children if c.process is not None}
        self._state_file.write_text(json.dumps(groups))

    def run(self, *, on_started: Callable[[], None] | None = None) -> None:
        """Start every process, call ``on_started``, and supervise until asked to stop."""
        previous = {
            sig: signal.signal(sig, self._ask_to_stop) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        self.end_leftovers()
        try:
            for child in self._children:
                self._start(child)
            if on_started is not None:
                on_started()
            while not self._stopping:
                self.check_once()
                time.sleep(_POLL_S)
        finally:
            self.stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def check_once(self) -> None:
        now = time.monotonic()
        for child in self._children:
            if child.process is None:
                if now >= child.next_start_at:
                    self._start(child)
                continue
            code = child.process.poll()
            if code is None:
                continue
            # Its own children (uvicorn's workers) would live on, holding the port: end them too.
            _signal_group(child.process.pid, signal.SIGKILL)
            lived = now - child.started_at
            child.backoff_s = (
                min(max(child.backoff_s * 2, 1.0), _MAX_BACKOFF_S) if lived < _QUICK_DEATH_S else 0
            )
            child.restarts += 1
            child.process = None
            child.next_start_at = now + child.backoff_s
            log.warning(
                "%s exited with code %s after %.1f s; restarting it%s (restart #%d)",
                child.spec.name,
                code,
                lived,
                f" in {child.backoff_s:.0f} s" if child.backoff_s else "",
                child.restarts,
            )

    def _start(self, child: _Child) -> None:
        env = {**self._base_env, **child.spec.env}
        child.process = subprocess.Popen(  # noqa: S603 - our own argv
            list(child.spec.argv), env=env, start_new_session=True
        )
        child.started_at = time.monotonic()
        if child.spec.on_start is not None:
            child.spec.on_start(child.process.pid)
        self._record_groups()
        log.info("started %s (pid %s)", child.spec.name, child.process.pid)

    def _ask_to_stop(self, signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        self._stopping = True

    def stop_all(self) -> None:
        self._stopping = True
        for child in reversed(self._children):
            process = child.process
            if process is None:
                continue
            if process.poll() is not None:
                _signal_group(process.pid, signal.SIGKILL)
                continue
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning(
                    "%s did not stop in %.0f s; killing it", child.spec.name, _STOP_TIMEOUT_S
                )
            _signal_group(process.pid, signal.SIGKILL)  # and whatever it left behind
            process.wait()
            log.info("stopped %s", child.spec.name)
        self._state_file.unlink(missing_ok=True)


def end_leftovers(state_file: Path) -> bool:
    """End the process groups an earlier supervisor recorded in ``state_file`` and left
    running (it was killed); whether there were any."""
    try:
        groups = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return False
    ended = False
    for name, pgid in groups.items():
        if isinstance(pgid, int) and _group_alive(pgid):
            log.warning("ending %s (process group %s) left by an earlier run", name, pgid)
            _signal_group(pgid, signal.SIGKILL)
            ended = True
    state_file.unlink(missing_ok=True)
    return ended


def _signal_group(leader_pid: int, signum: int) -> None:
    """Signal every process of a child's group (each child leads its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(leader_pid, signum)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
