"""The active rule set: what the dataflow evaluates, read from SQL and reloaded when it changes.

The rules live in SQL (``app.rules.store``); the shipped rules in ``rules/`` are stored there on
first start. ``RuleWatcher`` is how a dataflow process follows them: it reads the rule set's
revision (the newest audit row) at most once per ``POLL_S`` and, when it moved, compiles the new
set once for every worker of the process. A saved change is running within about a second.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session

from app.rules import store
from app.rules.compiler import ActiveRule, CompiledRules, compile_rules
from app.rules.engine import refusals
from app.rules.schema import Rule, RuleError, RuleProblem, load_rules_dir

SHIPPED_RULES_DIR = Path(__file__).resolve().parents[2] / "rules"
POLL_S = 1.0

log = logging.getLogger(__name__)


@functools.cache
def _shipped() -> tuple[tuple[Rule, str], ...]:
    rules = load_rules_dir(SHIPPED_RULES_DIR)  # checked as one set
    texts = {}
    for path in SHIPPED_RULES_DIR.iterdir():
        if path.suffix in (".yaml", ".yml"):
            text = path.read_text(encoding="utf-8")
            texts[store.parse_document(text).id] = text
    return tuple((rule, texts[rule.id]) for rule in rules)


def shipped_rules() -> list[Rule]:
    """The rules in ``rules/`` (read once per process: they change with a release)."""
    return [rule for rule, _ in _shipped()]


def seed(*, session: Session) -> int:
    """Store the shipped rules on first start (never again: deletions are respected)."""
    return store.seed_shipped(session=session, rules=list(_shipped()))


def shipped_compiled() -> CompiledRules:
    """The shipped rules at version 1, compiled: the rule set of a fresh install."""
    return compile_rules([ActiveRule(rule, 1) for rule in shipped_rules()])


@dataclass(frozen=True)
class RuleSet:
    revision: int
    compiled: CompiledRules


class RuleWatcher:
    """The active rule set in one database, shared by a process's workers."""

    def __init__(self, engine: Engine, *, poll_s: float = POLL_S) -> None:
        self._engine = engine
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self._checked = -float("inf")
        self._current = self._load()

    def current(self) -> RuleSet:
        """The rule set as of at most ``poll_s`` ago."""
        if time.monotonic() - self._checked < self._poll_s:
            return self._current
        with self._lock:
            if time.monotonic() - self._checked >= self._poll_s:
                try:
                    with Session(self._engine) as session:
                        moved = store.revision(session=session) != self._current.revision
                    if moved:
                        self._current = self._load()
                except Exception:  # a database hiccup or a bad set: keep the running rules
                    log.exception("rules: could not reload the rule set; the last one runs on")
                self._checked = time.monotonic()
        return self._current

    def _load(self) -> RuleSet:
        with Session(self._engine) as session:
            revision = store.revision(session=session)
            active = store.active_rules(session=session)
        compiled = compile_rules(active)
        refused = refusals(compiled)
        if refused:  # saving checks this: only a set stored by other means gets here
            raise RuleError(
                RuleProblem(rule_id, "when", None, f"the rule engine refuses it: {why}")
                for ruleset, why in refused
                for rule_id in ruleset.definition
            )
        ruleset = RuleSet(revision, compiled)
        log.info(
            "rules: revision %d, %d active rule(s): %s",
            revision,
            len(active),
            ", ".join(f"{item.rule.id}@v{item.version}" for item in active) or "none",
        )
        return ruleset
