"""bench/rule_saves.py runs end to end at tiny sizes, so it cannot rot between benchmark runs."""

from __future__ import annotations

import pytest

from bench import rule_saves as bench


def test_the_benchmark_prints_the_engine_and_its_floor_per_rule_count(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bench.main(["--rules", "3,12", "--saves", "6", "--warmup", "2"])
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split(" | ")
    rows = [dict(zip(header, line.split(" | "), strict=True)) for line in lines[1:]]
    assert [(row["rules"], row["saves by"]) for row in rows] == [
        ("3", "engine"),
        ("3", "compile only (floor)"),
        ("12", "engine"),
        ("12", "compile only (floor)"),
    ]
    for row in rows:
        assert float(row["RSS after MB"]) > 0
        assert float(row["ms/save"]) > 0
