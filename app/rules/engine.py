"""The only module that touches durable_rules: it owns the engine's rulesets and their names.

durable_rules keeps module-level state in its C engine. Facts are asserted straight to the C
engine (no ``Host``: its timer threads fire actions on other threads, and its ``post`` fires one
rule only), one state id for everything (the engine allows 1024), the customer's values inside
the fact, and every fact retracted once its matches are read. Asserting a fact fires every rule
it matches, so one call tells which segments hold.

The engine compares a feature only with the ruleset's constants, so a fact carries each feature
as the number standing for its class (``FactLayout.members(by_class=True)``): a ruleset's facts
are few, and each handle keeps the engine's answer per fact text. The engine decides every fact
it has not seen; one seen before is answered from the handle's memory.

A ruleset handle is used by one thread only (two threads sharing one lost firings when
measured): ``Rulesets.for_thread`` keeps one set per thread and rule-set version, and deletes
the handles of a version it no longer uses, or of a thread that ended.

Memory: the engine's ``delete_ruleset`` frees the ruleset but not its state, which is the most
of it (about 125 KB for the shipped rules, tens of MB at 1,000 rules): every rule save and every
reload kept one for good. A handle deletes its state first. ``delete_state`` frees the state's
action context, which the engine leaves unset until an action runs on the state (freeing it then
crashed the process), so every ruleset carries one more rule, ``_SETTLED``, that holds for the
state's own fact only: settling the state runs it to the end, which sets the context and clears
it again.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import durable_rules_engine as _engine
import orjson

from app.rules.compiler import CompiledRules, CompiledRuleset, engine_json, fact_json

_NOT_HANDLED = 1  # assert result codes of the C engine
_OBSERVED = 2
# the engine's own fact for state "0", which it makes at a ruleset's first fact otherwise
_STATE_FACT = '{"sid":"0","id":"sid-0","$s":1}'
# the rule every ruleset carries that holds for that fact alone (no rule id has a "~")
_SETTLED = "~settled"
_SETTLED_RULE = {"all": [{"m": {"$s": 1}}]}
# answers a handle keeps (then it forgets them all): a ruleset's facts by class are far fewer,
# unless it compares many features with many constants each
MAX_REMEMBERED = 65_536
_names = itertools.count()
_NO_SEGMENTS: frozenset[str] = frozenset()
_local = threading.local()


class RuleEngineError(RuntimeError):
    """The engine refused a ruleset or a fact (its error code is in the message)."""


class _Handle:
    def __init__(
        self, ruleset: CompiledRuleset, *, by_class: bool = True, clocks: Iterable[str] = ()
    ) -> None:
        """``by_class``: facts carry features by class and answers are remembered; without it
        every fact carries the values as they are and goes to the engine (tests compare).
        ``clocks``: the features that grow with the clock (remembered by class too)."""
        self.ruleset = ruleset
        # names are unique per process: the engine keeps every name it was given
        name = f"{ruleset.name}-{next(_names)}"
        definition = engine_json({**ruleset.definition, _SETTLED: _SETTLED_RULE}).decode()
        self._settled = False  # the state's action context was set and cleared: it can go
        try:
            self._handle = _engine.create_ruleset(name, definition)
        except Exception as error:  # the C engine raises a bare Exception with a code
            raise RuleEngineError(
                f"durable_rules refused ruleset {ruleset.name}: {error}"
            ) from error
        try:
            self._settle_state()
        except Exception as error:
            self.close()
            raise RuleEngineError(
                f"durable_rules refused the state of ruleset {ruleset.name}: {error}"
            ) from error
        self._facts = itertools.count()
        self._rules = frozenset(ruleset.definition)
        self._by_class = by_class
        self._answers: dict[str, frozenset[str]] = {}  # fact members -> the rules that hold
        # the same answers by the values they were given, found without building the members
        self._by_value: dict[Hashable, frozenset[str]] = {}
        self._value_key = ruleset.layout.value_key(clocks) if by_class else None

    def matching(
        self,
        features: Mapping[str, Any],
        traits: Mapping[str, Any],
        segments: frozenset[str],
        clusters: frozenset[str],
    ) -> frozenset[str]:
        """The rules of this ruleset that hold for these values."""
        key = None if self._value_key is None else self._value_key(features, segments, clusters)
        if key is None:
            return self._remembered(features, traits, segments, clusters)
        found = self._by_value.get(key)
        if found is None:
            found = self._remembered(features, traits, segments, clusters)
            _remember(self._by_value, key, found)
        return found

    def _remembered(
        self,
        features: Mapping[str, Any],
        traits: Mapping[str, Any],
        segments: frozenset[str],
        clusters: frozenset[str],
    ) -> frozenset[str]:
        """The answer for the fact these values make, from memory or from the engine."""
        members = self.ruleset.layout.members(
            features, traits, segments, clusters, by_class=self._by_class
        )
        if not self._by_class:
            return self._decide(members)
        found = self._answers.get(members)
        if found is None:
            found = self._decide(members)
            _remember(self._answers, members, found)
        return found

    def _settle_state(self) -> None:
        """Makes the engine's state "0" before any customer's fact, and drops what it fires.
        Made by the first fact instead, its own fact (no fields) matches every rule that holds
        on absent fields (a ``not``), and that firing was read as the first fact's. ``_SETTLED``
        fires here: once it ran to the end, the state can be deleted (were nothing fired, the
        state would be left to the engine rather than crash the process)."""
        state = _engine.update_state(self._handle, _STATE_FACT)
        if _engine.start_action_for_state(self._handle, state):
            while _engine.complete_and_start_action(self._handle, state):
                pass
            self._settled = True

    def _decide(self, members: str) -> frozenset[str]:
        """The rules the engine fires for a fact of ``members``, asserted and retracted."""
        fact = fact_json(next(self._facts), members)
        try:
            result = _engine.assert_fact(self._handle, fact)
        except Exception as error:
            raise RuleEngineError(
                f"durable_rules refused a fact: {error}: {fact[:200]!r}"
            ) from error
        if result[0] == _NOT_HANDLED:
            return frozenset()
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
        return frozenset(fired)

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
        """Frees the ruleset and its state (the engine frees only the ruleset otherwise)."""
        if self._settled:
            self._settled = False
            _engine.delete_state(self._handle, "0")
        _engine.delete_ruleset(self._handle)


def _remember(memory: dict[Any, frozenset[str]], key: Any, answer: frozenset[str]) -> None:
    """Keep an answer; a full memory is forgotten at once (cheaper than tracking age)."""
    if len(memory) >= MAX_REMEMBERED:
        memory.clear()
    memory[key] = answer


class Rulesets:
    """The engine's rulesets for one version of the active rules, used by one thread."""

    def __init__(self, rules: CompiledRules, *, by_class: bool = True) -> None:
        """``by_class=False``: every fact goes to the engine with its values as they are, the
        reference the remembered answers by class must agree with (tests only)."""
        self.rules = rules
        self._layers: list[list[_Handle]] = []
        # a thread that ends drops its sets without closing them: they are closed when collected
        self._finalizer = weakref.finalize(self, _close, self._layers)
        clock_keys = [key for key, _ in rules.clocks]
        try:
            for layer in rules.layers:
                handles: list[_Handle] = []
                self._layers.append(handles)
                for ruleset in layer:
                    handles.append(_Handle(ruleset, by_class=by_class, clocks=clock_keys))
        except BaseException:  # a ruleset refused: the ones made before it are deleted
            self.close()
            raise
        only = [handle for layer in self._layers for handle in layer]
        self._single = only[0] if len(only) == 1 else None

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
        if self._single is not None:  # one ruleset (most rule sets): no layers to combine
            return self._single.matching(features, traits, _NO_SEGMENTS, clusters)
        members: set[str] = set()
        for layer in self._layers:
            known = frozenset(members)
            for handle in layer:
                members |= handle.matching(features, traits, known, clusters)
        return frozenset(members)

    def close(self) -> None:
        self._finalizer()  # closes the handles once, whoever comes first
        self._single = None


def _close(layers: list[list[_Handle]]) -> None:
    for layer in layers:
        for handle in layer:
            handle.close()
    layers.clear()


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
