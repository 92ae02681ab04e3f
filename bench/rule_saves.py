"""Memory across rule saves: what a save and a reload keep in the process that holds the engine.

1. Rules: the first N of ``bench/rules.py``'s generated set (counts, sums, sequences, traits).
2. A save: one rule disabled (then enabled again at the next save), the set with it compiled
   and checked in durable_rules (``refusals``, as the API does before it stores a change and
   the dataflow's ``RuleWatcher`` before it runs one), then one customer evaluated under it by
   ``Rulesets.for_thread``, as a dataflow worker does at its next batch (it drops the previous
   version's rulesets).
3. The process's resident memory (``/proc/self/statm``) after WARMUP saves and after SAVES more:
   the growth per save is what it kept. Floor: the same saves compiled only, never given to the
   engine (what compiling and Python's allocator keep alone).

    .venv/bin/python bench/rule_saves.py [--rules 100,1000] [--saves 200] [--warmup 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.rules.compiler import ActiveRule, CompiledRules, compile_rules  # noqa: E402
from app.rules.engine import Rulesets, refusals  # noqa: E402
from app.rules.schema import Rule  # noqa: E402
from bench.rules import generated_rules  # noqa: E402


def resident_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def saved(rules: Sequence[Rule], save: int) -> CompiledRules:
    """The set after save number ``save``: the rule it toggles disabled on odd saves."""
    toggled = save % len(rules)
    active = [
        ActiveRule(rule, 1 + save)
        for index, rule in enumerate(rules)
        if index != toggled or save % 2 == 0
    ]
    return compile_rules(active)


def engine_save(rules: Sequence[Rule], save: int) -> None:
    compiled = saved(rules, save)
    if refusals(compiled):
        raise SystemExit(f"the engine refused a generated set at save {save}")
    Rulesets.for_thread(compiled).segments({}, {})


def compile_only(rules: Sequence[Rule], save: int) -> None:
    saved(rules, save)


@dataclass
class Row:
    rules: int
    way: str
    saves: int
    before_mb: float
    after_mb: float
    seconds: float

    @property
    def per_save_kb(self) -> float:
        return (self.after_mb - self.before_mb) * 1024 / self.saves

    def cells(self) -> list[str]:
        return [
            str(self.rules),
            self.way,
            str(self.saves),
            f"{self.before_mb:.0f}",
            f"{self.after_mb:.0f}",
            f"{self.per_save_kb:+.0f}",
            f"{self.seconds / self.saves * 1000:.1f}",
        ]


def measure(rules: Sequence[Rule], way: str, saves: int, warmup: int) -> Row:
    step = engine_save if way == "engine" else compile_only
    for save in range(warmup):
        step(rules, save)
    before = resident_mb()
    started = time.perf_counter()
    for save in range(warmup, warmup + saves):
        step(rules, save)
    return Row(len(rules), way, saves, before, resident_mb(), time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rules", default="100,1000", help="rule counts, comma-separated")
    parser.add_argument("--saves", type=int, default=200, help="saves measured per count")
    parser.add_argument("--warmup", type=int, default=20, help="saves before the first reading")
    args = parser.parse_args(argv)
    head = ["rules", "saves by", "saves", "RSS before MB", "RSS after MB", "KB/save", "ms/save"]
    print(" | ".join(head))
    for count in (int(n) for n in args.rules.split(",")):
        rules = generated_rules(count)
        for way in ("engine", "compile only (floor)"):
            row = measure(rules, way, args.saves, args.warmup)
            print(" | ".join(row.cells()), flush=True)


if __name__ == "__main__":
    main()
