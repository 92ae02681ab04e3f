"""The dataflow's recovery store read and compacted from Python: Bytewax's SQLite files
(``recovery/part-*.sqlite3``).

Bytewax links its own copy of SQLite into its extension (3.44 here) and Python's ``sqlite3``
module links the system's (3.40). SQLite's file locks are POSIX advisory locks, which belong
to a process, not to a connection: in one process, a connection of one copy closing the file
drops the locks the other copy's connections hold, so a connection can take itself for the
last one and truncate the shared-memory index that the other copy has mapped ("multiple copies
of SQLite linked into the same application", sqlite.org/howtocorrupt.html). The dataflow died
of SIGBUS (exit 135) that way, after an erasure's finisher read the committed epoch in the
dataflow's own process.

So the dataflow's process never opens these files itself: it asks a child process
(``committed_epoch_apart``, ``compact_apart``: ``python -m pipelines.recovery_files``). Other
processes (`segflow pipeline`'s stream trimmer, tests, benchmarks) read them directly, where
SQLite's locks work as meant.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
from pathlib import Path

NO_RECOVERY = -1  # the epoch of a dataflow without a recovery store: nothing to wait for
APART_TIMEOUT_S = 120.0  # a compaction rewrites every file: generous


def committed_epoch(recovery_dir: Path | None) -> int:
    """The epoch every recovery partition has committed (``NO_RECOVERY`` without a store).
    Not in the dataflow's process: ``committed_epoch_apart`` there."""
    if recovery_dir is None:
        return NO_RECOVERY
    epochs = []
    for path in sorted(recovery_dir.glob("part-*.sqlite3")):
        with contextlib.closing(
            sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        ) as db:
            row = db.execute("SELECT MIN(commit_epoch) FROM commits").fetchone()
        epochs.append(int(row[0]) if row and row[0] is not None else 0)
    return min(epochs, default=0)


def compact(recovery_dir: Path) -> bool:
    """Rewrite each recovery file without its free pages, and empty its write-ahead log, so
    deleted snapshot rows leave the files; False when the log could not be emptied yet (the
    dataflow was reading it), to be tried again. Not in the dataflow's process:
    ``compact_apart`` there."""
    for path in sorted(recovery_dir.glob("part-*.sqlite3")):
        with contextlib.closing(sqlite3.connect(path, timeout=30, isolation_level=None)) as db:
            db.execute("PRAGMA secure_delete = ON")
            db.execute("VACUUM")
            busy, *_ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            return False
    return True


def _apart(action: str, recovery_dir: Path) -> str:
    """``action`` run by a child process over ``recovery_dir``: what it printed."""
    found = subprocess.run(  # noqa: S603 - this interpreter, this module, our arguments
        [sys.executable, "-m", __name__, action, str(recovery_dir)],
        capture_output=True,
        text=True,
        timeout=APART_TIMEOUT_S,
        check=False,
    )
    if found.returncode != 0:
        said = found.stderr.strip().splitlines()
        raise RuntimeError(
            f"{action} of the recovery store {recovery_dir} failed: "
            f"{said[-1] if said else f'exit code {found.returncode}'}"
        )
    return found.stdout.strip()


def committed_epoch_apart(recovery_dir: Path | None) -> int:
    """``committed_epoch``, read by a child process (for the dataflow's own process)."""
    if recovery_dir is None:
        return NO_RECOVERY
    return int(_apart("epoch", recovery_dir))


def compact_apart(recovery_dir: Path) -> bool:
    """``compact``, done by a child process (for the dataflow's own process)."""
    return _apart("compact", recovery_dir) == "done"


def _main(argv: list[str]) -> int:
    action, directory = argv
    if action == "epoch":
        print(committed_epoch(Path(directory)))
    elif action == "compact":
        print("done" if compact(Path(directory)) else "busy")
    else:
        print(f"unknown action {action!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
