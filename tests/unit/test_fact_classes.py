"""Facts carrying each feature by class get the answers the values themselves get.

The engine compares a feature only with its ruleset's constants, so a fact carries a feature as
the number standing for its class (equal to a constant, or inside a gap between two), and each
ruleset handle remembers the engine's answer per fact. Here those answers are checked against
the engine deciding every fact with its values as they are, and against the rules read in
Python (``Evaluation``), for rule sets whose features share constants and snapshots whose
values sit at, beside and between them: ints and floats, adjacent floats, huge, missing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import durable_rules_engine
import pytest
from hypothesis import HealthCheck, assume, given, reject, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from app.rules import engine as engine_module
from app.rules import schema
from app.rules.compiler import NUMBER_LIMIT, ActiveRule, compile_rules
from app.rules.engine import Rulesets, refusals
from app.rules.explain import Evaluation
from tests.strategies import condition_leaves

Snapshot = tuple[dict[str, Any], dict[str, Any]]  # (features, traits), as the rules stage passes

# Constants rules share (so a feature meets several), with neighbours a float apart, ints
# equal to floats, the engine's limits and beyond them.
SHARED = (
    0,
    1,
    2,
    3,
    3.0,
    math.nextafter(3.0, math.inf),
    math.nextafter(3.0, -math.inf),
    2.5,
    10,
    19.99,
    0.1,
    0.2,
    1e-7,
    5e-324,
    1_800_000,
    999_999_999_999_999,
    NUMBER_LIMIT - 0.125,
    NUMBER_LIMIT,
    10**15,
    10**16,
    1e20,
)
NEGATIVE = (-1, -2.5, -0.0, -(10**15), -1e20)

# The features compared: (leaf kind, its fields, whether its constants may be negative).
FEATURES: tuple[tuple[type[schema.Leaf], dict[str, Any], bool], ...] = (
    (schema.FeatureCondition, {"feature": "cart_value"}, True),
    (schema.FeatureCondition, {"feature": "session_duration_ms"}, True),
    (
        schema.CountCondition,
        {"count": schema.EventWindow(event="Product Viewed", within=600_000)},
        False,
    ),
    (schema.SinceCondition, {"since": schema.EventRef(event="Product Added")}, False),
    (
        schema.SumCondition,
        {
            "sum": schema.PropertyWindow.model_validate(
                {"event": "Order Completed", "property": "revenue", "within": 86_400_000}
            )
        },
        True,
    ),
)
WORDS = ("eq", "ne", "gt", "gte", "lt", "lte", "in_")


def constants(negative: bool) -> st.SearchStrategy[Any]:
    pool = SHARED + NEGATIVE if negative else SHARED
    ints = st.integers(-20 if negative else 0, 20)
    return st.sampled_from(pool) | ints | ints.map(lambda number: number / 2)


@st.composite
def compared_leaves(draw: st.DrawFn) -> schema.Leaf:
    """A leaf comparing one of FEATURES with one or two comparators of shared constants."""
    kind: type[schema.Leaf]
    fields: dict[str, Any]
    negative: bool
    kind, fields, negative = draw(st.sampled_from(FEATURES))
    found: dict[str, Any] = {}
    for word in draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=2, unique=True)):
        if word == "in_":
            found[word] = tuple(draw(st.lists(constants(negative), min_size=1, max_size=3)))
        else:
            found[word] = draw(constants(negative))
    try:
        return kind(**fields, **found)
    except ValidationError:  # bounds that never hold together
        reject()


def trees(leaves: st.SearchStrategy[schema.ConditionNode]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda children: (
            st.builds(schema.All, all=st.lists(children, min_size=1, max_size=3).map(tuple))
            | st.builds(schema.Any, any=st.lists(children, min_size=1, max_size=3).map(tuple))
            | st.builds(schema.Not, not_=children)
        ),
        max_leaves=6,
    )


@st.composite
def rule_sets(draw: st.DrawFn) -> list[schema.Rule]:
    """Rules on the shared features (now and then any other leaf), and rules of a later layer
    reading their segments."""
    leaves = compared_leaves() | condition_leaves()
    first = [
        schema.Rule(id=f"r{number}", name=f"r{number}", when=when)
        for number, when in enumerate(draw(st.lists(trees(leaves), min_size=1, max_size=6)))
    ]
    ids = {rule.id for rule in first}
    assume(not any(rule.segment_refs() & ids for rule in first))  # one layer, no cycles
    later = []
    for number in range(draw(st.integers(0, 2))):
        refs = draw(st.sets(st.sampled_from([rule.id for rule in first]), min_size=1, max_size=2))
        reads = tuple(schema.SegmentCondition(segment=ref) for ref in sorted(refs))
        combine = draw(st.sampled_from((schema.All, schema.Any)))
        parts = (*reads, draw(trees(compared_leaves())))
        when = schema.All(all=parts) if combine is schema.All else schema.Any(any=parts)
        later.append(schema.Rule(id=f"l{number}", name=f"l{number}", when=when))
    return [*first, *later]


def compared_constants(rules: Iterable[schema.Rule]) -> dict[str, set[Any]]:
    """Each feature's snapshot key -> the numbers the rules compare it with."""
    found: dict[str, set[Any]] = {}
    for rule in rules:
        for leaf in rule.leaves():
            spec = rule.spec_of(leaf)
            if spec is None:
                continue
            numbers = found.setdefault(schema.snapshot_key(spec), set())
            for word in WORDS:
                given = getattr(leaf, word, None)
                for item in given if isinstance(given, tuple) else (given,):
                    if isinstance(item, int | float) and not isinstance(item, bool):
                        numbers.add(item)
    return found


def around(number: Any) -> list[Any]:
    """The number as an int and a float, negated, and the values just below and above it."""
    found = [number, float(number), -number, *(number + delta for delta in (-1, -0.5, 0.5, 1))]
    found += [math.nextafter(number, math.inf), math.nextafter(number, -math.inf)]
    if float(number).is_integer() and abs(number) < 1e17:
        found.append(int(number))
    return found


def beside(numbers: Iterable[Any]) -> list[Any]:
    """Values at, around and between the numbers, and around where the engine's limits clamp
    them to."""
    found: list[Any] = [0, -0.0, 1e20, -1e20, NUMBER_LIMIT + 0.5, 10**17, -(10**17)]
    for number in numbers:
        found += around(number)
        found += around(max(-NUMBER_LIMIT, min(NUMBER_LIMIT, number)))
    return found


def values(numbers: set[Any]) -> st.SearchStrategy[Any]:
    """A feature's value: mostly at or around its constants, else missing, any number, or
    no number at all (a fact leaves those out)."""
    return (
        st.sampled_from(beside(numbers))
        | st.none()
        | st.integers(-(10**16), 10**16)
        | st.floats()
        | st.sampled_from([True, "12", math.inf])
    )


@st.composite
def rules_and_snapshots(draw: st.DrawFn) -> tuple[list[schema.Rule], list[Snapshot]]:
    rules = draw(rule_sets())
    keys = {schema.snapshot_key(spec) for rule in rules for spec in rule.feature_specs()}
    numbers = compared_constants(rules)
    every = set().union(*numbers.values())
    snapshots: list[Snapshot] = []
    for _ in range(draw(st.integers(1, 12))):
        # a feature read only by Python-decided leaves still gets values near every constant
        features = {key: draw(values(numbers.get(key) or every)) for key in sorted(keys)}
        snapshots.append((features, {}))
    return rules, snapshots


def plain(features: dict[str, Any], rules: Iterable[schema.Rule]) -> bool:
    """Values and constants the engine and Python read alike: finite numbers within the
    engine's limits (beyond, the engine clamps them) or missing."""
    numbers = [*features.values(), *set().union(*compared_constants(rules).values())]
    return all(
        number is None
        or (
            isinstance(number, int | float)
            and not isinstance(number, bool)
            and -NUMBER_LIMIT < number < NUMBER_LIMIT
        )
        for number in numbers
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules_and_snapshots())
def test_facts_by_class_get_the_answers_of_the_values_themselves(case):
    rules, snapshots = case
    compiled = compile_rules([ActiveRule(rule, 1) for rule in rules])
    assume(not refusals(compiled))  # refused on save, so never evaluated
    by_class = Rulesets.for_thread(compiled)
    as_they_are = Rulesets(compiled, by_class=False)
    try:
        for features, traits in [*snapshots, *snapshots]:  # the second pass: remembered
            got = by_class.segments(features, traits)
            assert got == as_they_are.segments(features, traits), (features, rules)
            if plain(features, rules):
                for rule in rules:
                    holds = Evaluation(rule, features, traits, got).holds()
                    assert (rule.id in got) == holds, (rule.id, rule.when, features)
    finally:
        as_they_are.close()


@pytest.mark.parametrize(
    "constants",
    [
        (10**16,),  # beyond the limits: the engine compares with the limit
        (-1e20, 1e20),
        (NUMBER_LIMIT - 0.125, NUMBER_LIMIT),
        (999_999_999_999_999, 10**16),
        (3, math.nextafter(3.0, math.inf)),  # adjacent: no number between them
        (math.nextafter(3.0, -math.inf), 3.0),
        (5e-324, 0),
        (0.1, 0.2, 0.30000000000000004),
        (-0.0, 1),
    ],
)
def test_every_comparator_at_edge_constants_answers_as_the_values_do(constants):
    rules = []
    for number, constant in enumerate(constants):
        for word in WORDS:
            compared = schema.FeatureCondition(
                feature="cart_value", **{word: (constant,) if word == "in_" else constant}
            )
            named = f"{word.strip('_')}-{number}"
            rules.append(schema.Rule(id=named, name=named, when=compared))
            negated = schema.Not(not_=compared)
            rules.append(schema.Rule(id=f"not-{named}", name=f"not {named}", when=negated))
    assert len({rule.id for rule in rules}) == len(rules)
    compiled = compile_rules([ActiveRule(rule, 1) for rule in rules])
    snapshots = [{"cart_value": value} for value in [*beside(constants), None, math.nan, True]]
    by_class, as_they_are = Rulesets(compiled), Rulesets(compiled, by_class=False)
    try:
        for features in [*snapshots, *snapshots]:
            assert by_class.segments(features, {}) == as_they_are.segments(features, {}), features
    finally:
        by_class.close()
        as_they_are.close()


def test_values_the_engine_cannot_tell_apart_make_one_fact():
    rule = schema.parse_rule(
        """
id: carts
name: Carts
when:
  all:
    - feature: cart_value
      gt: 5
      lte: 10
    - not:
        feature: cart_value
        in: [7, 7.5]
""",
        source="<carts>",
    )
    compiled = compile_rules([ActiveRule(rule, 1)])
    (ruleset,) = compiled.layers[0]

    def fact(value: Any) -> str:
        return ruleset.layout.members({"cart_value": value}, {}, frozenset(), by_class=True)

    same = [[5.5, 6, 6.99], [5, 5.0], [7, 7.0], [10, 10.0], [11, 1e20, 10**16, NUMBER_LIMIT]]
    for one_class in same:
        assert len({fact(value) for value in one_class}) == 1, one_class
    classes = [fact(value) for value in (-1, 5, 6, 7, 7.2, 7.5, 8, 10, 11)]
    assert len(set(classes)) == len(classes)
    assert fact(None) == fact(math.nan) == fact("6") == ""


def test_the_first_fact_of_a_ruleset_is_answered_like_the_next():
    """The engine's own fact for its state fires every rule holding on absent fields (a
    ``not``): made at the first customer's fact, it answered for that customer too."""
    zero = schema.FeatureCondition(feature="cart_value", eq=0)
    rules = [
        schema.Rule(id="zero", name="zero", when=zero),
        schema.Rule(id="not-zero", name="not zero", when=schema.Not(not_=zero)),
    ]
    compiled = compile_rules([ActiveRule(rule, 1) for rule in rules])
    for by_class in (True, False):
        engine = Rulesets(compiled, by_class=by_class)
        try:
            answers = [engine.segments({"cart_value": 0}, {}) for _ in range(2)]
        finally:
            engine.close()
        assert answers == [frozenset({"zero"})] * 2


class _CountingEngine:
    """The C engine module, counting the facts asserted to it."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.asserted = 0

    def assert_fact(self, handle: int, fact: str) -> Any:
        self.asserted += 1
        return self._real.assert_fact(handle, fact)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_the_engine_decides_each_class_once(monkeypatch: pytest.MonkeyPatch):
    rule = schema.parse_rule(
        """
id: browsers
name: Browsers
when:
  count: {event: Product Viewed, within: 10m}
  gte: 5
""",
        source="<browsers>",
    )
    counting = _CountingEngine(durable_rules_engine)
    monkeypatch.setattr(engine_module, "_engine", counting)
    engine = Rulesets(compile_rules([ActiveRule(rule, 1)]))
    try:
        got = [engine.segments({"count(Product Viewed, 10m)": views}, {}) for views in range(1000)]
    finally:
        engine.close()
    assert got == [frozenset({"browsers"}) if views >= 5 else frozenset() for views in range(1000)]
    assert counting.asserted == 3  # below 5, at 5, above 5


def test_answers_remembered_by_value_never_mistake_one_value_for_another(
    monkeypatch: pytest.MonkeyPatch,
):
    """Answers are found by the values first (no fact built): a time since an event, which
    grows with the clock, by its class; every other value as it is, but never a bool for the
    1 it equals, nor a number the engine cannot read for one it can."""
    rules = [
        schema.parse_rule(text, source="<test>")
        for text in (
            """
id: left-carts
name: Left carts
when:
  all:
    - since: {event: Product Added}
      gte: 30m
    - feature: cart_value
      gt: 0
""",
            """
id: ones
name: Ones
when:
  feature: events_total
  eq: 1
""",
        )
    ]
    compiled = compile_rules([ActiveRule(rule, 1) for rule in rules])
    built = []  # the facts built (an answer not found by the values)
    remembered = engine_module._Handle._remembered

    def counted(handle: Any, *args: Any) -> frozenset[str]:
        built.append(args)
        return remembered(handle, *args)

    monkeypatch.setattr(engine_module._Handle, "_remembered", counted)
    by_class, as_they_are = Rulesets(compiled), Rulesets(compiled, by_class=False)
    since = "since(Product Added)"
    try:
        clock = [{since: ms, "cart_value": 20.0, "events_total": 3} for ms in range(0, 60_000, 7)]
        for features in clock:
            assert by_class.segments(features, {}) == frozenset()
        assert len(built) == 1  # every value under 30m: one class, one fact
        odd: list[dict[str, Any]] = [
            {since: 1_800_000, "cart_value": 1, "events_total": 1},
            {since: 1_800_000, "cart_value": True, "events_total": True},
            {since: 1_800_000.0, "cart_value": 1.0, "events_total": 1.0},
            {since: 1_800_000, "cart_value": math.nan, "events_total": 1},
            {since: math.inf, "cart_value": 1, "events_total": 1},
            {since: 10**20, "cart_value": 1, "events_total": 1},  # read as the limit
            {since: None, "cart_value": 1, "events_total": 1},
            {since: 10**20, "cart_value": 10**20, "events_total": 1},
            {since: 1_799_999, "cart_value": "1", "events_total": [1]},
            {"cart_value": 1},
        ]
        for features in [*odd, *odd, *reversed(odd)]:
            assert by_class.segments(features, {}) == as_they_are.segments(features, {}), features
    finally:
        by_class.close()
        as_they_are.close()
