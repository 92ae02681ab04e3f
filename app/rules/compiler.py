"""Rules -> what the engine evaluates: durable_rules rulesets over flat facts, in layers.

A customer's feature snapshot, traits and memberships become one *fact* per ruleset: a flat
mapping of short field names (``f0``, ``t0``, ``s0``, ``p0``) to values, so no fact comes near
the engine's 252-property limit and no feature name has to be spelled in its JSON. Numeric
comparisons on features compile to the engine's own operators; the rest (text, ``contains``,
``matches``, traits) is decided here in Python and reaches the engine as a boolean field, since
the engine compares numeric-looking text as numbers and knows only a small regex dialect.

A missing value (no such trait, no event yet) satisfies no comparator, so a fact leaves such a
field out, and ``not`` compiles with De Morgan plus "or the field is absent".

Rules that read other segments come in later layers: a layer is evaluated with the memberships
the earlier layers just gave. Each layer is cut into rulesets small enough for the engine's
measured limits (DEPENDENCY-FACTS.md).
"""

from __future__ import annotations

import graphlib
import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property
from typing import Any, TypeGuard

import orjson

from app.rules.schema import (
    All,
    ClusterCondition,
    ConditionNode,
    Leaf,
    Not,
    Rule,
    RuleError,
    RuleProblem,
    SegmentCondition,
    SequenceCondition,
    TraitCondition,
    snapshot_key,
)
from app.rules.schema import Any as AnyOf
from pipelines.features import FeatureSpec, Since
from pipelines.features import Sequence as SequenceSpec

# The engine's limits, with room: a fact satisfying more than 64 conditions fails (error 303),
# more than 512 alpha nodes under one parent hangs create_ruleset.
# A fact has at most one field per comparison, so 40 keeps it far from the 252-property limit.
MAX_COMPARISONS_PER_RULESET = 40
NUMBER_LIMIT = 1e15  # the engine cannot read exponents: numbers are written positionally
COMPARATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in_", "contains", "matches")
ORDERED = {"gt": "$gt", "gte": "$gte", "lt": "$lt", "lte": "$lte"}
NEGATED = {"gt": "$lte", "gte": "$lt", "lt": "$gte", "lte": "$gt"}
TIME_GROWING_BUILTINS = frozenset({"rfm_recency_ms"})  # a "since" value: grows with the clock


# --- evaluating one leaf in Python (tests fields, explanations) -------------------------------


def comparisons(leaf: Leaf) -> list[tuple[str, Any]]:
    """The comparators a leaf carries, as (word, constant)."""
    return [
        (word, getattr(leaf, word)) for word in COMPARATORS if getattr(leaf, word, None) is not None
    ]


def is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _same(value: Any, constant: Any) -> bool:
    if is_number(value) and is_number(constant):
        return bool(value == constant)
    return type(value) is type(constant) and bool(value == constant)


def holds(word: str, value: Any, constant: Any) -> bool:
    """One comparator on a value; a missing value satisfies none."""
    if value is None:
        return False
    if word == "eq":
        return _same(value, constant)
    if word == "ne":
        return not _same(value, constant)
    if word in ORDERED:
        if not (is_number(value) and is_number(constant)):
            return False
        return bool(
            value > constant
            if word == "gt"
            else value >= constant
            if word == "gte"
            else value < constant
            if word == "lt"
            else value <= constant
        )
    if word == "in_":
        return any(_same(value, item) for item in constant)
    if word == "contains":
        if isinstance(value, str):
            return isinstance(constant, str) and constant in value
        if isinstance(value, list):
            return any(_same(item, constant) for item in value)
        return False
    if word == "matches":
        return isinstance(value, str) and re.search(constant, value[:10_000]) is not None
    raise ValueError(f"unknown comparator {word!r}")


def leaf_holds(leaf: Leaf, value: Any) -> bool:
    """Every comparator of the leaf holds for ``value`` (a membership leaf: ``value`` is it)."""
    if isinstance(leaf, SegmentCondition | ClusterCondition):
        return bool(value)
    if isinstance(leaf, SequenceCondition):  # value: the time since the last completed chain
        in_last = leaf.sequence.in_last
        return is_number(value) and (in_last is None or value < in_last)
    return all(holds(word, value, constant) for word, constant in comparisons(leaf))


# --- facts ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where a fact field's value comes from."""

    kind: str  # "feature" | "trait" | "segment" | "cluster" | "test"
    key: str  # the snapshot key, trait name, segment id or cluster name
    leaf: Leaf | None = None  # for "test": the leaf decided in Python


def number_text(value: float | int) -> bytes:
    """A number as the engine can read it: positional, within +-NUMBER_LIMIT."""
    clamped = max(-NUMBER_LIMIT, min(NUMBER_LIMIT, value))
    if isinstance(clamped, int):
        return str(clamped).encode()
    text = repr(float(clamped))  # the shortest exact spelling; an exponent only when tiny
    if "e" in text:
        text = format(Decimal(text), "f")  # positional, every digit kept
    return text.encode()


@dataclass
class FactLayout:
    """The fields of one ruleset's facts."""

    fields: dict[Source, str] = field(default_factory=dict)

    def field_for(self, source: Source) -> str:
        found = self.fields.get(source)
        if found is None:
            prefix = {"feature": "f", "trait": "t", "segment": "s", "cluster": "c", "test": "p"}
            found = self.fields[source] = f"{prefix[source.kind]}{len(self.fields)}"
        return found

    def fact(
        self,
        number: int,
        features: Mapping[str, Any],
        traits: Mapping[str, Any],
        segments: frozenset[str],
        clusters: frozenset[str] = frozenset(),
    ) -> bytes:
        """The fact's JSON (numbers written for the engine), id ``number`` (facts must differ)."""
        parts = [b'"sid":"0"', b'"id":%d' % number]
        for source, name in self.fields.items():
            if source.kind == "feature":
                value = features.get(source.key)
                if is_number(value):
                    parts.append(b'"%s":%s' % (name.encode(), number_text(value)))
            elif source.kind == "segment":
                parts.append(
                    b'"%s":%s' % (name.encode(), b"true" if source.key in segments else b"false")
                )
            elif source.kind == "cluster":
                parts.append(
                    b'"%s":%s' % (name.encode(), b"true" if source.key in clusters else b"false")
                )
            else:  # a leaf decided here, on a feature's or a trait's value
                assert source.leaf is not None
                values = traits if isinstance(source.leaf, TraitCondition) else features
                verdict = leaf_holds(source.leaf, values.get(source.key))
                parts.append(b'"%s":%s' % (name.encode(), b"true" if verdict else b"false"))
        return b"{" + b",".join(parts) + b"}"


def engine_json(value: Any) -> bytes:
    """JSON the engine reads: like ``orjson.dumps`` but numbers never in exponent form."""
    if isinstance(value, dict):
        items = (orjson.dumps(str(key)) + b":" + engine_json(item) for key, item in value.items())
        return b"{" + b",".join(items) + b"}"
    if isinstance(value, list | tuple):
        return b"[" + b",".join(engine_json(item) for item in value) + b"]"
    if is_number(value):
        return number_text(value)
    return orjson.dumps(value)


# --- compiling ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompiledRuleset:
    """One engine ruleset: some rules of one layer, the JSON the engine takes, its facts."""

    name: str
    definition: dict[str, Any]  # rule id -> the engine's rule
    layout: FactLayout

    def definition_json(self) -> str:
        return engine_json(self.definition).decode()


@dataclass(frozen=True)
class ActiveRule:
    rule: Rule
    version: int

    @cached_property
    def actions(self) -> dict[str, tuple[dict[str, Any], ...]]:
        """The rule's actions by transition kind, as the triggers carry them."""
        return {
            "enter": tuple(action.model_dump(mode="json") for action in self.rule.on_enter),
            "exit": tuple(action.model_dump(mode="json") for action in self.rule.on_exit),
        }


@dataclass(frozen=True)
class CompiledRules:
    """The active rule set as the dataflow evaluates it."""

    rules: dict[str, ActiveRule]
    layers: tuple[tuple[CompiledRuleset, ...], ...]
    # (snapshot key, thresholds) of every feature a rule compares that grows with the clock
    clocks: tuple[tuple[str, tuple[float, ...]], ...]
    fingerprint: str

    def next_flip(self, now: int, features: Mapping[str, Any]) -> int | None:
        """The next instant a rule's time-since comparison turns: no feature deadline marks
        it, as those values grow with the clock."""
        best = None
        for key, thresholds in self.clocks:
            at = next_flip(now, features.get(key), thresholds)
            if at is not None and (best is None or at < best):
                best = at
        return best

    def feature_specs(self) -> tuple[FeatureSpec | str, ...]:
        found: dict[FeatureSpec | str, None] = {}
        for active in self.rules.values():
            for spec in active.rule.feature_specs():
                found[spec] = None
        return tuple(found)


def _leaf_source(rule: Rule, leaf: Leaf) -> tuple[Source, bool]:
    """The leaf's field source, and whether the engine compares it itself (numbers only)."""
    if isinstance(leaf, SegmentCondition):
        return Source("segment", leaf.segment), True
    if isinstance(leaf, ClusterCondition):
        return Source("cluster", leaf.cluster), True
    if isinstance(leaf, TraitCondition):
        return Source("test", leaf.trait, leaf), False
    spec = rule.spec_of(leaf)
    assert spec is not None
    key = snapshot_key(spec)
    words = comparisons(leaf)
    numeric = bool(words) and all(
        (word in ("eq", "ne", *ORDERED) and is_number(constant))
        or (word == "in_" and all(is_number(item) for item in constant))
        for word, constant in words
    )
    if numeric:
        return Source("feature", key), True
    return Source("test", key, leaf), False


def _compile_leaf(rule: Rule, leaf: Leaf, layout: FactLayout, negate: bool) -> dict[str, Any]:
    source, native = _leaf_source(rule, leaf)
    name = layout.field_for(source)
    if not native or source.kind in ("segment", "cluster"):
        return {name: not negate}
    terms: list[dict[str, Any]] = []
    for word, constant in comparisons(leaf):
        terms.append(_comparison(name, word, constant, negate))
    if not negate:
        return terms[0] if len(terms) == 1 else {"$and": terms}
    # not(a and b) = not a or not b, or no value at all (which satisfies no comparator)
    return {"$or": [{"$nex": {name: 1}}, *terms]}


def _bound(constant: float) -> float | int:
    return max(-NUMBER_LIMIT, min(NUMBER_LIMIT, constant))


def _comparison(name: str, word: str, constant: Any, negate: bool) -> dict[str, Any]:
    if word in ORDERED:
        return {(NEGATED if negate else ORDERED)[word]: {name: _bound(constant)}}
    if word == "in_":
        options = [{name: _bound(item)} for item in constant]
        if negate:
            return {"$and": [{"$neq": {name: _bound(item)}} for item in constant]}
        return options[0] if len(options) == 1 else {"$or": options}
    equal = (word == "eq") != negate
    return {name: _bound(constant)} if equal else {"$neq": {name: _bound(constant)}}


def _compile(rule: Rule, node: ConditionNode, layout: FactLayout, negate: bool) -> dict[str, Any]:
    if isinstance(node, Not):
        return _compile(rule, node.not_, layout, not negate)
    if isinstance(node, All | AnyOf):
        children = node.all if isinstance(node, All) else node.any
        terms = [_compile(rule, child, layout, negate) for child in children]
        conjunction = isinstance(node, All) != negate
        if len(terms) == 1:
            return terms[0]
        return {"$and": terms} if conjunction else {"$or": terms}
    return _compile_leaf(rule, node, layout, negate)


def comparison_count(rule: Rule) -> int:
    """How many engine conditions the rule's tree needs (its size against the engine limit)."""
    return sum(max(1, len(comparisons(leaf))) for leaf in rule.leaves())


def _clock_leaves(rule: Rule) -> tuple[tuple[str, tuple[float, ...]], ...]:
    found = []
    for leaf in rule.leaves():
        spec = (
            None
            if isinstance(leaf, TraitCondition | SegmentCondition | ClusterCondition)
            else rule.spec_of(leaf)
        )
        if spec is None:
            continue
        grows = isinstance(spec, Since | SequenceSpec) or spec in TIME_GROWING_BUILTINS
        if not grows:
            continue
        thresholds = []
        if isinstance(leaf, SequenceCondition) and leaf.sequence.in_last is not None:
            thresholds.append(float(leaf.sequence.in_last))
        for word, constant in comparisons(leaf):
            items = constant if word == "in_" else (constant,)
            thresholds += [float(item) for item in items if is_number(item)]
        if thresholds:
            found.append((snapshot_key(spec), tuple(thresholds)))
    return tuple(found)


def compile_rules(active: Sequence[ActiveRule]) -> CompiledRules:
    """Layer the enabled rules by segment references and cut each layer into rulesets."""
    rules = {item.rule.id: item for item in active if item.rule.enabled}
    problems = []
    for item in rules.values():
        size = comparison_count(item.rule)
        if size > MAX_COMPARISONS_PER_RULESET:
            problems.append(
                RuleProblem(
                    item.rule.id,
                    "when",
                    None,
                    f"the condition has {size} comparisons; the engine takes at most "
                    f"{MAX_COMPARISONS_PER_RULESET} in one rule: split it into segments",
                )
            )
    if problems:
        raise RuleError(problems)
    sorter = graphlib.TopologicalSorter(
        {
            rule_id: [ref for ref in item.rule.segment_refs() if ref in rules]
            for rule_id, item in rules.items()
        }
    )
    depth: dict[str, int] = {}
    for rule_id in sorter.static_order():
        refs = [ref for ref in rules[rule_id].rule.segment_refs() if ref in rules]
        depth[rule_id] = 1 + max((depth[ref] for ref in refs), default=-1)
    layers: list[tuple[CompiledRuleset, ...]] = []
    fingerprint = hashlib.sha256()
    for level in range(1 + max(depth.values(), default=-1)):
        ids = sorted(rule_id for rule_id, d in depth.items() if d == level)
        layers.append(tuple(_rulesets(level, [rules[i] for i in ids])))
    for rule_id in sorted(rules):
        fingerprint.update(f"{rule_id}@{rules[rule_id].version};".encode())
    for layer in layers:  # the same ids and versions can hold other rules (tests, previews)
        for ruleset in layer:
            fingerprint.update(ruleset.name.encode())
    clocks: dict[str, set[float]] = {}
    for item in rules.values():
        for key, thresholds in _clock_leaves(item.rule):
            clocks.setdefault(key, set()).update(thresholds)
    merged = tuple((key, tuple(sorted(found))) for key, found in sorted(clocks.items()))
    return CompiledRules(rules, tuple(layers), merged, fingerprint.hexdigest()[:16])


def _rulesets(level: int, rules: list[ActiveRule]) -> Iterable[CompiledRuleset]:
    batch: list[ActiveRule] = []
    size = 0
    for item in rules:
        cost = comparison_count(item.rule)
        if batch and size + cost > MAX_COMPARISONS_PER_RULESET:
            yield _ruleset(level, batch)
            batch, size = [], 0
        batch.append(item)
        size += cost
    if batch:
        yield _ruleset(level, batch)


def _ruleset(level: int, rules: list[ActiveRule]) -> CompiledRuleset:
    layout = FactLayout()
    definition = {
        item.rule.id: {"all": [{"m": _compile(item.rule, item.rule.when, layout, False)}]}
        for item in rules
    }
    # the name stands for the definition and what each field of its facts reads
    fields = sorted(
        (name, source.kind, source.key, repr(source.leaf)) for source, name in layout.fields.items()
    )
    digest = hashlib.sha256(
        orjson.dumps([definition, fields], option=orjson.OPT_SORT_KEYS)
    ).hexdigest()[:12]
    name = f"segments-{level}-{digest}"
    return CompiledRuleset(name, definition, layout)


def next_flip(now: int, value: Any, thresholds: tuple[float, ...]) -> int | None:
    """The first instant after ``now`` at which a value growing 1 ms per ms (time since an
    event) crosses one of ``thresholds``: where ``gte c`` turns true, or ``gt c`` one ms later."""
    if not is_number(value):
        return None
    best = None
    for threshold in thresholds:
        for at in (now + math.ceil(threshold - value), now + math.floor(threshold - value) + 1):
            if at > now and (best is None or at < best):
                best = at
    return best
