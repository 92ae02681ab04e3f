"""The only module that touches durable_rules: it owns the engine's rulesets and their names.

durable_rules keeps module-level state in its C engine. Facts are asserted straight to the C
engine (no ``Host``: its timer threads fire actions on other threads, and its ``post`` fires one
rule only), one state id for everything (the engine allows 1024), the customer's values inside
the fact, and every fact retracted once its matches are read. Asserting a fact fires every rule
it matches, so one call tells which segments hold.

A ruleset handle is used by one thread only (two threads sharing one lost firings when
measured): ``Rulesets.for_thread`` keeps one set per thread and rule-set version, and deletes
the handles of a version it no longer uses.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping
from typing import Any

import durable_rules_engine as _engine
import orjson

from app.rules.compiler import CompiledRules, CompiledRuleset

_NOT_HANDLED = 1  # assert result codes of the C engine
_OBSERVED = 2
_names = itertools.count()
_local = threading.local()


class RuleEngineError(RuntimeError):
    """The engine refused a ruleset or a fact (its error code is in the message)."""


class _Handle:
    def __init__(self, ruleset: CompiledRuleset) -> None:
        self.ruleset = ruleset
        # names are unique per process: the engine keeps every name it was given
        name = f"{ruleset.name}-{next(_names)}"
        try:
            self._handle = _engine.create_ruleset(name, ruleset.definition_json())
        except Exception as error:  # the C engine raises a bare Exception with a code
            raise RuleEngineError(
                f"durable_rules refused ruleset {ruleset.name}: {error}"
            ) from error
        self._facts = itertools.count()
        self._rules = frozenset(ruleset.definition)

    def matching(
        self,
        features: Mapping[str, Any],
        traits: Mapping[str, Any],
        segments: frozenset[str],
        clusters: frozenset[str],
    ) -> set[str]:
        """The rules of this ruleset that hold for these values."""
        fact = self.ruleset.layout.fact(next(self._facts), features, traits, segments, clusters)
        try:
            result = _engine.assert_fact(self._handle, fact)
        except Exception as error:
            raise RuleEngineError(
                f"durable_rules refused a fact: {error}: {fact[:200]!r}"
            ) from error
        if result[0] == _NOT_HANDLED:
            return set()
        if result[0] == _OBSERVED:  # pragma: no cover - every fact has its own id
            raise RuleEngineError("durable_rules saw the same fact twice")
        fired: set[str] = set()
        state = result[1]
        try:
            started = _engine.start_action_for_state(self._handle, state)
            if started:
                self._read_action(started[1], fired)
                while more := _engine.complete_and_start_action(self._handle, state):
                    self._read_action(more, fired)
        finally:
            _engine.retract_fact(self._handle, fact)
        return fired

    def _read_action(self, action: str, fired: set[str]) -> None:
        """Adds the rule an action of the engine fired. The engine writes one rule per action,
        ``{"<rule id>":{"m":<the fact>}}`` (``serializeResult`` in its C source), and rule ids
        are slugs, so a known id between the first quotes is the action's; anything else is
        parsed in full. Parsing every action made a snapshot at 100 rules 60 µs, not 52."""
        rule = action[2 : action.find('"', 2)]
        if action.startswith('{"') and rule in self._rules:
            fired.add(rule)
        else:
            fired.update(orjson.loads(action))

    def close(self) -> None:
        _engine.delete_ruleset(self._handle)


class Rulesets:
    """The engine's rulesets for one version of the active rules, used by one thread."""

    def __init__(self, rules: CompiledRules) -> None:
        self.rules = rules
        self._layers: list[list[_Handle]] = []
        try:
            for layer in rules.layers:
                handles: list[_Handle] = []
                self._layers.append(handles)
                for ruleset in layer:
                    handles.append(_Handle(ruleset))
        except BaseException:  # a ruleset refused: the ones made before it are deleted
            self.close()
            raise

    @classmethod
    def for_thread(cls, rules: CompiledRules) -> Rulesets:
        current: Rulesets | None = getattr(_local, "rulesets", None)
        if current is None or current.rules.fingerprint != rules.fingerprint:
            if current is not None:
                # forgotten before the next version is made: if the engine refuses that one,
                # going back to this version must make it again, not find it closed and empty
                _local.rulesets = None
                current.close()
            current = _local.rulesets = cls(rules)
        return current

    def segments(
        self,
        features: Mapping[str, Any],
        traits: Mapping[str, Any],
        clusters: frozenset[str] = frozenset(),
    ) -> frozenset[str]:
        """The ids of the rules that hold for these values, layer by layer (a later layer
        reads the memberships the earlier ones gave)."""
        members: set[str] = set()
        for layer in self._layers:
            known = frozenset(members)
            for handle in layer:
                members |= handle.matching(features, traits, known, clusters)
        return frozenset(members)

    def close(self) -> None:
        for layer in self._layers:
            for handle in layer:
                handle.close()
        self._layers = []


def refusals(rules: CompiledRules) -> list[tuple[CompiledRuleset, str]]:
    """Each ruleset of ``rules`` the engine refuses, with why (none: the set can run). Each
    ruleset made to find out is deleted at once; the rule compiler cannot foresee every limit
    of the C engine (error 113, too many expressions, for some valid conditions)."""
    refused = []
    for layer in rules.layers:
        for ruleset in layer:
            try:
                _Handle(ruleset).close()
            except RuleEngineError as error:
                refused.append((ruleset, str(error.__cause__ or error)))
    return refused
