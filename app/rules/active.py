"""The active rule set: the shipped rules in ``rules/``, compiled for the dataflow.

Rules managed through the admin API (stored with versions in SQL) will take their place; until
then every shipped rule is active at version 1.
"""

from __future__ import annotations

import functools
from pathlib import Path

from app.rules.compiler import ActiveRule, CompiledRules, compile_rules
from app.rules.schema import Rule, load_rules_dir

SHIPPED_RULES_DIR = Path(__file__).resolve().parents[2] / "rules"


@functools.cache
def _shipped() -> tuple[Rule, ...]:
    return tuple(load_rules_dir(SHIPPED_RULES_DIR))


def shipped_rules() -> list[Rule]:
    """The rules in ``rules/`` (read once per process: they change with a release)."""
    return list(_shipped())


def active_rules() -> CompiledRules:
    return compile_rules([ActiveRule(rule, 1) for rule in shipped_rules()])
