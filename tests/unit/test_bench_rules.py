"""bench/rules.py runs end to end at tiny sizes, so it cannot rot between benchmark runs."""

from __future__ import annotations

import pytest

from bench import rules as bench

TINY = ["--snapshots", "200", "--seconds", "0.03", "--rules", "1,13"]


def test_the_benchmark_prints_a_row_per_rule_count(capsys):
    bench.main(TINY)
    lines = capsys.readouterr().out.splitlines()
    assert "the floor agreed on every snapshot" in lines[1]
    header = lines[2].strip("| ").split(" | ")
    rows = [dict(zip(header, line.strip("| ").split(" | "), strict=True)) for line in lines[4:]]
    assert [row["rules"] for row in rows] == ["1", "13"]
    for row in rows:
        assert float(row["engine eval/s"].replace(",", "")) > 0
        assert float(row["ratio engine/floor"]) > 0


def test_every_template_is_a_valid_rule_the_floor_can_evaluate():
    rules = bench.generated_rules(2 * len(bench.TEMPLATES))
    assert len({rule.id for rule in rules}) == len(rules)
    bench.FloorRules(rules)  # refuses leaves it cannot evaluate


def test_a_floor_that_disagrees_with_the_engine_stops_the_run(monkeypatch):
    monkeypatch.setattr(bench.FloorRules, "segments", lambda self, f, t: frozenset({"nobody"}))
    with pytest.raises(SystemExit, match="the floor disagrees with the engine"):
        bench.main(TINY)
