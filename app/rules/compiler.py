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
import operator
from bisect import bisect_left
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property
from typing import Any, TypeGuard

import orjson

from app.features import TIME_GROWING_BUILTINS, FeatureSpec, Since
from app.features import Sequence as SequenceSpec
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
    compile_pattern,
    snapshot_key,
)
from app.rules.schema import Any as AnyOf

# The engine's limits, with room: a fact satisfying more than 64 conditions fails (error 303),
# more than 512 alpha nodes under one parent hangs create_ruleset.
# A fact has at most one field per comparison, so 40 keeps it far from the 252-property limit.
MAX_COMPARISONS_PER_RULESET = 40
NUMBER_LIMIT = 1e15  # the engine cannot read exponents: numbers are written positionally
COMPARATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in_", "contains", "matches")
ORDERED = {"gt": "$gt", "gte": "$gte", "lt": "$lt", "lte": "$lte"}
NEGATED = {"gt": "$lte", "gte": "$lt", "lt": "$gte", "lte": "$gt"}


# --- evaluating one leaf in Python (tests fields, explanations) -------------------------------

# A leaf decided in Python is turned once into a predicate on its value: the rules stage calls
# it for every fact, so each comparator is chosen when the layout is built, not per value.
ValueTest = Callable[[Any], bool]


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


_ORDER = {"gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le}


def _equal_to(constant: Any) -> ValueTest:
    """``_same(value, constant)`` with the constant's half decided once."""
    try:
        numeric = is_number(constant)
    except OverflowError:  # an int too large for a float: decided per value, as _same does
        return lambda value: _same(value, constant)
    if numeric:  # then a value of the constant's type that is not a number differs from it
        return lambda value: is_number(value) and bool(value == constant)
    kind = type(constant)
    return lambda value: type(value) is kind and bool(value == constant)


def comparator(word: str, constant: Any) -> ValueTest:
    """One comparator with its constant, as a test of a present (not None) value."""
    if word == "eq":
        return _equal_to(constant)
    if word == "ne":
        equal = _equal_to(constant)
        return lambda value: not equal(value)
    if word in _ORDER:
        order = _ORDER[word]
        try:
            numeric = is_number(constant)
        except OverflowError:  # as _equal_to
            return lambda value: (
                is_number(value) and is_number(constant) and bool(order(value, constant))
            )
        if not numeric:
            return lambda value: False
        return lambda value: is_number(value) and bool(order(value, constant))
    if word == "in_":
        if all(type(item) is str for item in constant):  # text options: one set lookup
            texts = frozenset(constant)
            return lambda value: type(value) is str and value in texts
        options = tuple(_equal_to(item) for item in constant)
        return lambda value: any(equal(value) for equal in options)
    if word == "contains":
        text = constant if isinstance(constant, str) else None
        equal = _equal_to(constant)

        def contains(value: Any) -> bool:
            if isinstance(value, str):
                return text is not None and text in value
            if isinstance(value, list):
                return any(equal(item) for item in value)
            return False

        return contains
    if word == "matches":
        pattern = compile_pattern(constant)
        return lambda value: isinstance(value, str) and pattern.search(value[:10_000]) is not None
    raise ValueError(f"unknown comparator {word!r}")


def holds(word: str, value: Any, constant: Any) -> bool:
    """One comparator on a value; a missing value satisfies none."""
    return value is not None and comparator(word, constant)(value)


def leaf_test(leaf: Leaf) -> ValueTest:
    """The leaf as a test of its value: every comparator holds (a membership leaf: the value
    is the membership). A missing value satisfies no comparator."""
    if isinstance(leaf, SegmentCondition | ClusterCondition):
        return bool
    if isinstance(leaf, SequenceCondition):  # value: the time since the last completed chain
        in_last = leaf.sequence.in_last
        if in_last is None:
            return is_number
        return lambda value: is_number(value) and bool(value < in_last)
    tests = [comparator(word, constant) for word, constant in comparisons(leaf)]
    if not tests:  # the schema refuses such a leaf; all() of nothing holds
        return lambda value: True
    if len(tests) == 1:
        only = tests[0]
        return lambda value: value is not None and only(value)
    return lambda value: value is not None and all(test(value) for test in tests)


def leaf_holds(leaf: Leaf, value: Any) -> bool:
    """Every comparator of the leaf holds for ``value`` (a membership leaf: ``value`` is it)."""
    return leaf_test(leaf)(value)


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


# One field of a fact, from (features, traits, segments, clusters): its JSON member after a comma
# (``,"f0":12``), or "" when the fact leaves the field out.
FieldWriter = Callable[[Mapping[str, Any], Mapping[str, Any], frozenset[str], frozenset[str]], str]
# (features, segments, clusters) -> a key standing for a fact's members (``FactLayout.value_key``)
ValueKey = Callable[[Mapping[str, Any], frozenset[str], frozenset[str]], Hashable | None]


def _number_writer(key: str, member: str) -> FieldWriter:
    """The feature ``key`` as ``member`` + its number_text, or "" unless a finite number."""

    def write(
        features: Mapping[str, Any],
        traits: Mapping[str, Any],
        segments: frozenset[str],
        clusters: frozenset[str],
    ) -> str:
        value: Any = features.get(key)
        kind = type(value)
        # within the limits number_text writes an int with str and a float with repr, and
        # takes the Decimal path only for an exponent: the common cases, without the calls
        if kind is float and -NUMBER_LIMIT < value < NUMBER_LIMIT:
            text = repr(value)
            if "e" not in text:
                return member + text
        elif kind is int and -NUMBER_LIMIT < value < NUMBER_LIMIT:
            return member + str(value)
        if is_number(value):
            return member + number_text(value).decode()
        return ""

    return write


def _gap_members(member: str, bounds: tuple[float, ...]) -> tuple[str, ...]:
    """For each gap around the sorted distinct ``bounds`` (below ``bounds[i]`` and above the
    one before; the last above them all), ``member`` with a number strictly inside it, or ""
    where there is none (between adjacent floats). A fact carries values from -NUMBER_LIMIT
    to NUMBER_LIMIT (number_text clamps), so the outer gaps end there."""
    gaps = []
    for at in range(len(bounds) + 1):
        if at == 0:
            inside: float = max(-NUMBER_LIMIT, bounds[0] - 1)
            fits = -NUMBER_LIMIT <= inside < bounds[0]
        elif at == len(bounds):
            inside = min(NUMBER_LIMIT, bounds[-1] + 1)
            fits = bounds[-1] < inside <= NUMBER_LIMIT
        else:
            low, high = bounds[at - 1], bounds[at]
            inside = (low + high) / 2
            fits = low < inside < high
        gaps.append(member + number_text(inside).decode() if fits else "")
    return tuple(gaps)


def _class_limits(constants: Iterable[float]) -> tuple[float, ...]:
    """The distinct constants sorted, then inf: ``bisect_left`` of a value is its class (the
    constant it equals or the gap below it), with no length check needed."""
    return (*sorted(set(constants)), math.inf)


def _class_writer(key: str, member: str, constants: Iterable[float]) -> FieldWriter:
    """The feature ``key`` as ``member`` + one number standing for its class: the engine
    compares a feature only with ``constants`` (bounded as its JSON has them) by eq, ne, gt,
    gte, lt, lte, exactly (an int with an int as long long, else as doubles: both exact within
    +-NUMBER_LIMIT), so all it can tell of a value is which constant it equals or which gap
    between them it lies in. A value equal to a constant is written as that constant; one in a
    gap as a number inside the gap, or as itself where the gap holds no other number."""
    limits = _class_limits(constants)
    bounds = limits[:-1]
    equal = tuple(member + number_text(bound).decode() for bound in bounds)
    gaps = _gap_members(member, bounds)
    written = _number_writer(key, member)

    def write(
        features: Mapping[str, Any],
        traits: Mapping[str, Any],
        segments: frozenset[str],
        clusters: frozenset[str],
    ) -> str:
        value: Any = features.get(key)
        kind = type(value)
        if not ((kind is float or kind is int) and -NUMBER_LIMIT < value < NUMBER_LIMIT):
            if not is_number(value):
                return ""
            value = max(-NUMBER_LIMIT, min(NUMBER_LIMIT, value))  # as number_text writes it
        at = bisect_left(limits, value)
        if limits[at] == value:
            return equal[at]
        return gaps[at] or written(features, traits, segments, clusters)

    return write


def _field_writer(source: Source, name: str, constants: Iterable[float] | None) -> FieldWriter:
    """The field's writer; ``constants``: a feature's value is written as its class among
    them (``_class_writer``), not as itself."""
    member = f',"{name}":'
    yes, no = member + "true", member + "false"
    key = source.key
    if source.kind == "feature":
        if constants:
            return _class_writer(key, member, constants)
        return _number_writer(key, member)
    if source.kind == "segment":
        return lambda features, traits, segments, clusters: yes if key in segments else no
    if source.kind == "cluster":
        return lambda features, traits, segments, clusters: yes if key in clusters else no
    # a leaf decided here, on a feature's or a trait's value
    assert source.leaf is not None
    test = leaf_test(source.leaf)
    if isinstance(source.leaf, TraitCondition):
        return lambda features, traits, segments, clusters: yes if test(traits.get(key)) else no
    return lambda features, traits, segments, clusters: yes if test(features.get(key)) else no


@dataclass
class FactLayout:
    """The fields of one ruleset's facts, and the constants the engine compares each feature
    field with."""

    fields: dict[Source, str] = field(default_factory=dict)
    constants: dict[str, set[float]] = field(default_factory=dict)  # field name -> bounded
    # one writer per field, in field order, values as they are / by class: built at the first
    # fact, after compiling
    _writers: dict[bool, list[FieldWriter]] = field(
        default_factory=lambda: {False: [], True: []}, init=False, repr=False, compare=False
    )

    def field_for(self, source: Source) -> str:
        found = self.fields.get(source)
        if found is None:
            prefix = {"feature": "f", "trait": "t", "segment": "s", "cluster": "c", "test": "p"}
            found = self.fields[source] = f"{prefix[source.kind]}{len(self.fields)}"
        return found

    def compares(self, name: str, constant: float) -> None:
        """Notes that the engine compares the feature field ``name`` with ``constant``."""
        self.constants.setdefault(name, set()).add(_bound(constant))

    def members(
        self,
        features: Mapping[str, Any],
        traits: Mapping[str, Any],
        segments: frozenset[str],
        clusters: frozenset[str] = frozenset(),
        *,
        by_class: bool = False,
    ) -> str:
        """The fact's fields as JSON members, each after a comma (numbers written for the
        engine). ``by_class``: each feature number written as the one standing for its class,
        so values the engine cannot tell apart give the same text."""
        writers = self._writers[by_class]
        if len(writers) != len(self.fields):
            writers[:] = [
                _field_writer(source, name, self.constants.get(name) if by_class else None)
                for source, name in self.fields.items()
            ]
        return "".join([write(features, traits, segments, clusters) for write in writers])

    def value_key(self, clocks: Iterable[str]) -> ValueKey | None:
        """A function of (features, segments, clusters) to a key that is equal only where
        ``members(by_class=True)`` is: the compared features' values as they are (those in
        ``clocks``, which grow with the clock, by class), or None when a field is decided on
        a trait or in Python. It costs a fraction of building the members, so answers can be
        remembered by it first. The key is None for a value it cannot vouch for (a bool is
        equal to 1, a list has no hash): the caller builds the members then."""
        kinds = {source.kind for source in self.fields}
        if not kinds <= {"feature", "segment", "cluster"}:
            return None
        compared = [
            (source.key, name) for source, name in self.fields.items() if source.kind == "feature"
        ]
        keys = tuple(key for key, _ in compared)
        timed = set(clocks)
        classed = tuple(
            (index, _class_limits(self.constants[name]))
            for index, (key, name) in enumerate(compared)
            if key in timed and self.constants.get(name)
        )
        reads_segments, reads_clusters = "segment" in kinds, "cluster" in kinds
        plain_types = {int, float, str, type(None)}

        def read(features: Mapping[str, Any]) -> tuple[Any, ...]:
            return tuple(map(features.get, keys))

        # two or more keys: one C call (given one key, itemgetter returns the value alone)
        fetch = operator.itemgetter(*keys) if len(keys) > 1 else read

        def key(
            features: Mapping[str, Any], segments: frozenset[str], clusters: frozenset[str]
        ) -> Hashable | None:
            try:
                found = fetch(features)
            except KeyError:  # a stored profile from before a rule read this feature
                found = read(features)
            if not plain_types.issuperset(map(type, found)):
                return None
            if classed:
                values = list(found)
                for index, limits in classed:
                    value = values[index]
                    if value is None or value.__class__ is str:
                        continue
                    if value.__class__ is float and not math.isfinite(value):
                        values[index] = None  # no number: left out of the fact, like None
                        continue
                    if not -NUMBER_LIMIT < value < NUMBER_LIMIT:
                        value = max(-NUMBER_LIMIT, min(NUMBER_LIMIT, value))
                    at = bisect_left(limits, value)
                    values[index] = (at, limits[at] == value)
                found = tuple(values)
            return (
                found,
                segments if reads_segments else None,
                clusters if reads_clusters else None,
            )

        return key

    def fact(
        self,
        number: int,
        features: Mapping[str, Any],
        traits: Mapping[str, Any],
        segments: frozenset[str],
        clusters: frozenset[str] = frozenset(),
    ) -> str:
        """The fact's JSON (numbers written for the engine), id ``number`` (facts must differ)."""
        return fact_json(number, self.members(features, traits, segments, clusters))


def fact_json(number: int, members: str) -> str:
    """A fact with id ``number`` and the fields ``members`` (``FactLayout.members``)."""
    return f'{{"sid":"0","id":{number}{members}}}'


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
            value = features.get(key)
            if value is None:  # no such event yet: nothing grows
                continue
            at = next_flip(now, value, thresholds)
            if at is not None and (best is None or at < best):
                best = at
        return best

    def watched(self) -> dict[str, tuple[float, ...] | None]:
        """Per feature a rule reads, the numbers it is compared with (None: it is tested in
        Python, so any change of its value may matter): what the value's class among them is
        decides every rule (``pipelines.features.Watch``)."""
        found: dict[str, tuple[float, ...] | None] = {}
        for active in self.rules.values():
            rule = active.rule
            for leaf in rule.leaves():
                source, native = _leaf_source(rule, leaf)
                if source.kind not in ("feature", "test") or isinstance(leaf, TraitCondition):
                    continue
                constants: tuple[float, ...] | None = None
                if native:
                    constants = tuple(
                        float(item)
                        for word, constant in comparisons(leaf)
                        for item in (constant if word == "in_" else (constant,))
                    )
                key = source.key
                if key in found:
                    known = found[key]
                    constants = (
                        None
                        if known is None or constants is None
                        else tuple(sorted({*known, *constants}))
                    )
                found[key] = constants
        return found

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
        for item in constant if word == "in_" else (constant,):
            layout.compares(name, item)
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


def clock_key(rule: Rule, leaf: Leaf) -> str | None:
    """The snapshot key of the leaf's value if it grows 1 ms per ms with no event (a time since
    an event or a sequence, recency), else None."""
    if isinstance(leaf, TraitCondition | SegmentCondition | ClusterCondition):
        return None
    spec = rule.spec_of(leaf)
    if spec is None or not (
        isinstance(spec, Since | SequenceSpec) or spec in TIME_GROWING_BUILTINS
    ):
        return None
    return snapshot_key(spec)


def _clock_leaves(rule: Rule) -> tuple[tuple[str, tuple[float, ...]], ...]:
    found = []
    for leaf in rule.leaves():
        key = clock_key(rule, leaf)
        if key is None:
            continue
        thresholds = []
        if isinstance(leaf, SequenceCondition) and leaf.sequence.in_last is not None:
            thresholds.append(float(leaf.sequence.in_last))
        for word, constant in comparisons(leaf):
            items = constant if word == "in_" else (constant,)
            thresholds += [float(item) for item in items if is_number(item)]
        if thresholds:
            found.append((key, tuple(thresholds)))
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
