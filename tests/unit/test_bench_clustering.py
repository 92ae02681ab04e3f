"""bench/clustering.py's parts that need no servers run end to end at tiny sizes, and its
REES46-style file is what `segflow replay --format rees46` reads, so they cannot rot between
benchmark runs."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from app.clustering.fitting import FAMILIES
from app.events import canonical_fields
from app.ingest.replay import read_rees46
from bench import clustering as bench


def test_the_rees46_style_file_replays_without_a_failed_row(tmp_path: Path) -> None:
    now = time.time_ns() // 1_000_000
    rows = bench.rees46_rows(3_000, now_ms=now)
    path = tmp_path / "2019-Oct.csv"
    bench.write_rees46(path, rows)
    read = list(read_rees46(path))
    assert len(read) == len(rows)
    kinds: Counter[str] = Counter()
    for row in read:
        assert row.error is None, row.error
        assert row.message is not None
        fields = canonical_fields(row.message, received_at=now, source="bench")
        assert now - 31 * bench.DAY_MS <= fields["timestamp"] <= now
        kinds[fields["event"]] += 1
    assert set(kinds) == {"Product Viewed", "Product Added", "Product Removed", "Order Completed"}
    assert kinds["Product Viewed"] > kinds["Product Added"] > kinds["Order Completed"]


def test_the_personas_and_stream_parts_print_their_tables(capsys: pytest.CaptureFixture[str]):
    bench.main(
        ["--parts", "personas,stream", "--sizes", "800", "--customers", "1600",
         "--days", "2", "--steps", "2"]
    )  # fmt: skip
    out = capsys.readouterr().out
    fitted = [line for line in out.splitlines() if line.startswith("| 800 |")]
    assert {line.split(" | ")[1].removesuffix(" (chosen)") for line in fitted} == set(FAMILIES)
    assert sum("(chosen)" in line for line in fitted) == 1
    steps = [line for line in out.splitlines() if line.startswith("| day ")]
    assert [line.split(" | ")[0] for line in steps] == [
        "| day 1 12h", "| day 1 24h", "| day 2 12h", "| day 2 24h",
    ]  # fmt: skip
    summary = [line for line in out.splitlines() if line.startswith("| daily batch refit |")]
    assert len(summary) == 1
