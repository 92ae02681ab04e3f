"""The rule document: the shipped rules, every refusal a marketer can meet, and round trips.

A refusal must say which rule, which field and which line, so each case below asserts on all
three, not only on the message.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from pydantic import ValidationError

from app.features import Sequence, Since, windowed
from app.rules.schema import (
    All,
    ConditionNode,
    CountCondition,
    EventWindow,
    ExpectedTransition,
    FeatureCondition,
    Not,
    Rule,
    RuleError,
    RuleProblem,
    SegmentCondition,
    TraitCondition,
    check_rule_set,
    leaves,
    load_rules_dir,
    parse_rule,
    position_of,
    snapshot_key,
)
from tests.strategies import conditions, rule_models

RULES_DIR = Path(__file__).parents[2] / "rules"
SHIPPED_IDS = [
    "browsing-enthusiasts",
    "cart-abandoners",
    "high-intent-buyers",
    "lapsed-customers",
    "loyal-customers",
]


def shipped(rule_id: str) -> Rule:
    path = RULES_DIR / f"{rule_id}.yaml"
    return parse_rule(path.read_text(encoding="utf-8"), source=str(path))


def refusal(text: str, *, source: str = "rules/x.yaml") -> RuleError:
    with pytest.raises(RuleError) as caught:
        parse_rule(text, source=source)
    return caught.value


def only_problem(text: str) -> RuleProblem:
    problems = refusal(text).problems
    assert len(problems) == 1, problems
    return problems[0]


def rule_text(when: str) -> str:
    """A rule ``x`` whose ``when:`` block (indented by two) starts on line 4."""
    return "id: x\nname: X\nwhen:\n" + when


# --- the shipped rules ---------------------------------------------------------------------------


@pytest.mark.parametrize("rule_id", SHIPPED_IDS)
def test_every_shipped_rule_parses_with_examples(rule_id: str) -> None:
    rule = shipped(rule_id)

    assert rule.id == rule_id
    assert rule.enabled
    assert rule.name
    assert rule.description
    assert len(rule.examples) >= 2
    assert any(example.expect for example in rule.examples)


def test_the_shipped_rules_load_as_one_set() -> None:
    rules = load_rules_dir(RULES_DIR)

    assert [rule.id for rule in rules] == SHIPPED_IDS


def test_the_shipped_rules_load_from_the_relative_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(RULES_DIR.parent)

    assert [rule.id for rule in load_rules_dir("rules")] == SHIPPED_IDS


@pytest.mark.parametrize(
    ("rule_id", "names"),
    [
        ("browsing-enthusiasts", ["count(Product Viewed, 10m)", "count(Order Completed, 10m)"]),
        ("cart-abandoners", ["cart_value", "since(Product Added)"]),
        ("lapsed-customers", ["count(Order Completed)", "count(Order Completed, 30d)"]),
        (
            "high-intent-buyers",
            ["count(Checkout Started, 1d)", "cart_value", "count(Order Completed, 1d)"],
        ),
        ("loyal-customers", ["count(Order Completed, 90d)"]),
    ],
)
def test_shipped_rules_need_exactly_these_features(rule_id: str, names: list[str]) -> None:
    specs = shipped(rule_id).feature_specs()

    assert [snapshot_key(spec) for spec in specs] == names


def test_feature_specs_are_the_dataflows_own_specs() -> None:
    assert shipped("cart-abandoners").feature_specs() == ("cart_value", Since("Product Added"))
    assert shipped("lapsed-customers").feature_specs() == (
        windowed("count", "Order Completed"),
        windowed("count", "Order Completed", "30d"),
    )


def test_cart_abandoners_send_the_reminder_and_say_when_in_examples() -> None:
    rule = shipped("cart-abandoners")

    (action,) = rule.on_enter
    assert (action.send.destination, action.send.template) == ("email", "cart-reminder")
    assert action.send.at_most is not None
    assert (action.send.at_most.times, action.send.at_most.per) == (1, 24 * 3_600_000)
    assert (action.send.marketing, action.send.holdout_percent) == (True, 0)
    assert rule.on_exit == ()
    first = rule.examples[0]
    assert first.given[0].at == 0
    assert first.given[0].event == "Product Added"
    assert first.given[0].properties == {"product_id": "p1", "price": 20}
    assert first.given[0].customer == first.expect[0].customer
    assert first.expect == (ExpectedTransition(at=30 * 60_000, kind="enter"),)


@pytest.mark.parametrize("rule_id", SHIPPED_IDS)
def test_a_rule_written_back_reads_the_same(rule_id: str) -> None:
    rule = shipped(rule_id)
    document = rule.model_dump(mode="json", exclude_defaults=True)

    assert parse_rule(yaml.safe_dump(document)) == rule
    assert parse_rule(json.dumps(document)) == rule


def test_json_is_read_like_yaml_even_indented_with_tabs() -> None:
    document = yaml.safe_load((RULES_DIR / "high-intent-buyers.yaml").read_text())

    assert parse_rule(json.dumps(document, indent="\t")) == shipped("high-intent-buyers")


# --- walking a rule ------------------------------------------------------------------------------

WALKED = """\
id: walked
name: Walked
features:
  big_spend_7d: {sum: {event: Order Completed, property: revenue, within: 7d}}
when:
  all:
    - feature: big_spend_7d
      gte: 100
    - any:
        - trait: plan
          in: [gold, platinum]
        - segment: loyal-customers
    - not:
        cluster: Low-Activity Browsers
    - sequence: {steps: [Product Viewed, Product Added], within: 10m, same: [product_id]}
"""


def test_conditions_are_walked_with_their_paths() -> None:
    rule = parse_rule(WALKED)

    assert [path for path, _ in rule.conditions()] == [
        "when",
        "when.all[0]",
        "when.all[1]",
        "when.all[1].any[0]",
        "when.all[1].any[1]",
        "when.all[2]",
        "when.all[2].not",
        "when.all[3]",
    ]
    assert [type(leaf).__name__ for leaf in rule.leaves()] == [
        "FeatureCondition",
        "TraitCondition",
        "SegmentCondition",
        "ClusterCondition",
        "SequenceCondition",
    ]
    assert rule.segment_refs() == {"loyal-customers"}
    assert rule.cluster_refs() == {"Low-Activity Browsers"}


def test_each_leaf_names_the_feature_it_reads() -> None:
    rule = parse_rule(WALKED)
    feature, trait, segment, cluster, sequence = rule.leaves()

    assert rule.spec_of(feature) == windowed("sum", "Order Completed", "7d", prop="revenue")
    assert snapshot_key(rule.spec_of(feature) or "") == "sum(Order Completed.revenue, 1w)"
    assert rule.spec_of(sequence) == Sequence(
        ("Product Viewed", "Product Added"), 600_000, ("product_id",)
    )
    assert [rule.spec_of(leaf) for leaf in (trait, segment, cluster)] == [None, None, None]
    assert rule.feature_specs() == (rule.spec_of(feature), rule.spec_of(sequence))


def test_leaves_of_a_tree_built_in_code() -> None:
    tree: ConditionNode = All(
        all=(
            CountCondition(count=EventWindow(event="Product Viewed", within=600_000), gte=5),
            Not(not_=SegmentCondition(segment="loyal-customers")),
        )
    )

    assert [type(leaf) for leaf in leaves(tree)] == [CountCondition, SegmentCondition]


def test_a_rule_built_in_code_still_refuses_unknown_features() -> None:
    with pytest.raises(ValidationError, match="unknown feature 'nope'"):
        Rule(id="x", name="X", when=FeatureCondition(feature="nope", gt=1))


def test_yaml_reads_plain_data_as_json_would() -> None:
    rule = parse_rule(
        rule_text(
            "  count: {event: Order Completed, where: {country: NO, day: 2024-01-01, ok: true}}\n"
            "  gte: 1\n"
        )
    )

    assert isinstance(rule.when, CountCondition)
    assert rule.when.count.where == {"country": "NO", "day": "2024-01-01", "ok": True}


# --- refusals: where and why ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "field", "line", "message"),
    [
        pytest.param(
            "  all:\n"
            "    - feature: cart_value\n"
            "      gt: 0\n"
            "    - since: {event: Product Added}\n"
            "      gte: 30 minutes\n",
            "when.all[1].gte",
            8,
            "'30 minutes' is not a duration",
            id="not a duration",
        ),
        pytest.param(
            "  feature: cart_valeu\n  gt: 0\n",
            "when.feature",
            4,
            "unknown feature 'cart_valeu'",
            id="unknown feature",
        ),
        pytest.param(
            "  trait: plan\n", "when", 3, "at least one of eq, ne, gt", id="no comparator"
        ),
        pytest.param(
            "  count: {event: Product Viewed}\n  gt: five\n",
            "when.gt",
            5,
            "must be a number",
            id="gt needs a number",
        ),
        pytest.param(
            "  since: {event: Product Added}\n  lt: soon\n",
            "when.lt",
            5,
            "'soon' is not a duration",
            id="since needs a duration",
        ),
        pytest.param(
            "  trait: plan\n  in: []\n", "when.in", 5, "at least one value", id="empty in"
        ),
        pytest.param(
            "  trait: plan\n  matches: '(['\n",
            "when.matches",
            5,
            "not a regular expression RE2 runs: missing ]",
            id="bad pattern",
        ),
        pytest.param(
            "  trait: plan\n  matches: '(a)\\1'\n",
            "when.matches",
            5,
            "not a regular expression RE2 runs: invalid escape sequence",
            id="a backreference",
        ),
        pytest.param(
            f"  trait: plan\n  matches: '{'a' * 201}'\n",
            "when.matches",
            5,
            "at most 200",
            id="pattern too long",
        ),
        pytest.param(
            "  trait: tags\n  contains: [a, b]\n",
            "when.contains",
            5,
            "must be text, a number or true/false",
            id="contains a list",
        ),
        pytest.param(
            "  count: {event: Product Viewed}\n  contains: a\n",
            "when.contains",
            5,
            "a count is a number",
            id="contains on a count",
        ),
        pytest.param(
            "  count: {event: Product Viewed}\n  lt: 0\n",
            "when.lt",
            5,
            "never below 0",
            id="count below zero",
        ),
        pytest.param(
            "  count: {event: Product Viewed}\n  gte: -1\n",
            "when.gte",
            5,
            "never negative",
            id="count against a negative number",
        ),
        pytest.param(
            "  count: {event: Product Viewed, within: 0m}\n  gte: 1\n",
            "when.count.within",
            4,
            "a window of 0",
            id="window of zero",
        ),
        pytest.param(
            "  count:\n    event: Product Viewed\n    within: 401d\n  gte: 1\n",
            "when.count.within",
            6,
            "longer than the longest window kept (400d)",
            id="window too long",
        ),
        pytest.param(
            "  sequence: {steps: [Product Viewed], within: 10m}\n",
            "when.sequence.steps",
            4,
            "at least two steps",
            id="one-step sequence",
        ),
        pytest.param(
            "  sequence:\n    steps: [Product Viewed, Product Added]\n    within: 0s\n",
            "when.sequence.within",
            6,
            "a window of 0",
            id="sequence within zero",
        ),
        pytest.param(
            "  count: {event: Product Viewed, where: {category: [a, b]}}\n  gte: 1\n",
            "when.count.where.category",
            4,
            "must be text, a number or true/false",
            id="where value not a scalar",
        ),
        pytest.param(
            "  sum: {event: Order Completed, property: revenue}\n  gt: 5\n  lt: 3\n",
            "when",
            3,
            "'gt: 5' and 'lt: 3' never hold together",
            id="bounds that never meet",
        ),
        pytest.param(
            "  count: {event: Product Viewed, whithin: 10m}\n  gte: 1\n",
            "when.count.whithin",
            4,
            "did you mean 'within'",
            id="misspelt key",
        ),
        pytest.param(
            "  count: {event: Product Viewed}\n  since: {event: Product Added}\n  gte: 1\n",
            "when",
            3,
            "a condition has one kind",
            id="two kinds in one condition",
        ),
        pytest.param(
            "  any:\n    - trait: plan\n      eq: gold\n    - viewed: 5\n",
            "when.any[1]",
            7,
            "exactly one of the keys all, any, not",
            id="no kind",
        ),
        pytest.param(
            "  trait: plan\n  eq: gold\n  eq: silver\n",
            "when.eq",
            6,
            "given twice (first on line 5)",
            id="duplicate key",
        ),
        pytest.param(
            "  not: {segment: Loyal Customers}\n",
            "when.not.segment",
            4,
            "is not an id",
            id="segment by name, not id",
        ),
        pytest.param("  all: []\n", "when.all", 4, "needs at least one condition", id="empty all"),
    ],
)
def test_a_bad_condition_is_refused_naming_rule_field_and_line(
    when: str, field: str, line: int, message: str
) -> None:
    problem = only_problem(rule_text(when))

    assert (problem.rule_id, problem.field, problem.line) == ("x", field, line)
    assert message in problem.message
    assert str(problem).startswith(f"rules/x.yaml: rule 'x', field '{field}' (line {line}): ")


def test_the_message_reads_as_one_line_per_problem() -> None:
    error = refusal(
        rule_text(
            "  all:\n"
            "    - feature: cart_value\n"
            "      gt: 0\n"
            "    - since: {event: Product Added}\n"
            "      gte: 30 minutes\n"
        ),
        source="rules/cart.yaml",
    )

    assert str(error).startswith(
        "rules/cart.yaml: rule 'x', field 'when.all[1].gte' (line 8): "
        "'30 minutes' is not a duration: "
    )


def test_every_problem_is_reported_not_only_the_first() -> None:
    error = refusal(
        "id: x\nname: X\nwhen:\n  all:\n"
        "    - feature: nope\n      gt: 0\n"
        "    - count: {event: Product Viewed, within: 0m}\n      gte: 1\n"
    )

    assert [(p.field, p.line) for p in error.problems] == [
        ("when.all[0].feature", 5),
        ("when.all[1].count.within", 7),
    ]


# --- where: line and column --------------------------------------------------------------------


def text_at(text: str, line: int, column: int) -> str:
    """What the text holds from a 1-based line and column to the end of that line."""
    return text.splitlines()[line - 1][column - 1 :]


NESTED = (
    "id: x\n"
    "name: X\n"
    "when:\n"
    "  all:\n"
    "    - trait: plan\n"
    "      eq: gold\n"
    "    - any:\n"
    "        - feature: cart_value\n"
    "          gt: 10\n"  # line 9, the comparator's key at column 11
    "        - count: {event: Product Viewed, within: 1d}\n"
    "          gte: 3\n"
)


@pytest.mark.parametrize(
    ("wrong", "field", "message"),
    [
        pytest.param("gtt: 10", "when.all[1].any[0].gtt", "did you mean 'gt'?", id="misspelt"),
        pytest.param("gt: lots", "when.all[1].any[0].gt", "must be a number", id="not a number"),
        pytest.param("in: []", "when.all[1].any[0].in", "at least one value", id="empty in"),
    ],
)
def test_a_wrong_comparator_deep_in_all_and_any_is_placed_at_its_line_and_column(
    wrong: str, field: str, message: str
) -> None:
    text = NESTED.replace("gt: 10", wrong)

    problem = only_problem(text)

    assert (problem.field, problem.line, problem.column) == (field, 9, 11)
    assert text_at(text, 9, 11) == wrong
    assert message in problem.message


def test_an_unknown_feature_is_placed_at_its_key() -> None:
    text = NESTED.replace("feature: cart_value", "feature: cart_valu")

    problem = only_problem(text)

    assert (problem.field, problem.line, problem.column) == ("when.all[1].any[0].feature", 8, 11)
    assert text_at(text, 8, 11) == "feature: cart_valu"
    assert "did you mean 'cart_value'" in problem.message


@pytest.mark.parametrize(
    ("indented", "line", "column", "there", "message"),
    [
        pytest.param(
            "     gt: 10",  # one space short of the item's other key
            9,
            6,
            "gt: 10",
            "expected <block end>, but found '<block mapping start>'",
            id="less",
        ),
        pytest.param(
            "            gt: 10",  # deeper: read as the previous value going on
            9,
            15,
            ": 10",
            "mapping values are not allowed here",
            id="more",
        ),
    ],
)
def test_a_yaml_indentation_error_is_placed_where_yaml_stopped(
    indented: str, line: int, column: int, there: str, message: str
) -> None:
    text = NESTED.replace("          gt: 10", indented)

    problem = only_problem(text)

    assert (problem.rule_id, problem.field, problem.line, problem.column) == (
        "x",
        None,
        line,
        column,
    )
    assert text_at(text, line, column) == there
    assert message in problem.message


def test_json_problems_have_columns_too() -> None:
    text = '{"id": "x", "name": "X",\n "when": {"trait": "plan", "eq": ["gold"]}}'

    problem = only_problem(text)

    assert (problem.field, problem.line, problem.column) == ("when.eq", 2, 28)
    assert text_at(text, 2, 28).startswith('"eq": ["gold"]')


def test_a_key_given_twice_and_an_alias_are_placed() -> None:
    twice = only_problem(rule_text("  trait: plan\n  eq: gold\n  eq: silver\n"))
    alias = only_problem(rule_text("  trait: &t plan\n  eq: *t\n"))

    assert (twice.line, twice.column) == (6, 3)
    assert (alias.line, alias.column) == (5, 7)


def test_a_problem_found_on_the_parsed_rule_is_placed_in_its_text() -> None:
    text = NESTED.replace("- trait: plan\n      eq: gold", "- segment: loyal-customer")
    rule = parse_rule(text)
    with pytest.raises(RuleError) as caught:
        check_rule_set([rule])
    (found,) = caught.value.problems
    assert (found.field, found.line, found.column) == ("when.all[0].segment", None, None)

    placed = found.placed(text)

    assert (placed.field, placed.line, placed.column) == ("when.all[0].segment", 5, 7)
    assert placed.placed(NESTED) == placed  # a placed problem keeps its place
    assert found.placed(None) == found


def test_a_set_problem_read_from_files_has_its_column(tmp_path: Path) -> None:
    write_rules(tmp_path, a=NESTED.replace("- trait: plan\n      eq: gold", "- segment: b"))

    with pytest.raises(RuleError) as caught:
        load_rules_dir(tmp_path)

    (problem,) = caught.value.problems
    assert (problem.field, problem.line, problem.column) == ("when.all[0].segment", 5, 7)


def test_position_of_a_field_is_its_keys_or_its_items_start() -> None:
    assert position_of(NESTED, "when.all[1].any[1].gte") == (11, 11)
    assert position_of(NESTED, ("when", "all", 1, "any", 1)) == (10, 11)
    assert position_of(NESTED, "when.all[1].any[9]") == (7, 7)  # the nearest enclosing value
    assert position_of(NESTED, "when.all[0].trait.deeper") == (5, 7)
    assert position_of("name: [", "when") is None
    assert position_of(None, "when") is None


@pytest.mark.parametrize(
    ("text", "rule_id", "field", "line", "message"),
    [
        pytest.param(
            "id: x\nname: X\nfeatures:\n  cart_value: {count: {event: Product Added}}\n"
            "when: {feature: cart_value, gt: 0}\n",
            "x",
            "features.cart_value",
            4,
            "'cart_value' is a built-in feature",
            id="declared feature shadows a built-in",
        ),
        pytest.param(
            "id: x\nname: X\nfeatures:\n"
            "  views: {count: {event: Product Viewed}, since: {event: Product Viewed}}\n"
            "when: {feature: views, gt: 0}\n",
            "x",
            "features.views",
            4,
            "a feature is exactly one of",
            id="declared feature of two kinds",
        ),
        pytest.param("id: x\nname: X\n", "x", "when", 1, "'when' is required", id="no condition"),
        pytest.param(
            "id: Cart Abandoners\nname: X\nwhen: {segment: loyal-customers}\n",
            "Cart Abandoners",
            "id",
            1,
            "is not an id",
            id="id not a slug",
        ),
        pytest.param(
            "id: x\nname: X\nwhen: {segment: loyal-customers}\non_enter:\n"
            "  - send: {destination: email}\n",
            "x",
            "on_enter[0].send.template",
            5,
            "'template' is required",
            id="send without template",
        ),
        pytest.param(
            "id: x\nname: X\nwhen: {segment: loyal-customers}\nexamples:\n"
            "  - given: [{at: 0m, properties: {price: 1}}]\n    expect: []\n",
            "x",
            "examples[0].given[0]",
            5,
            "a track event needs 'event'",
            id="example event without a name",
        ),
        pytest.param(
            "id: x\nname: X\nwhen: {segment: loyal-customers}\nexamples:\n"
            "  - given: [{at: 0m, type: identify, traits: {plan: gold}}]\n"
            "    expect: [{at: 1m, kind: join}]\n",
            "x",
            "examples[0].expect[0].kind",
            6,
            "'enter' or 'exit'",
            id="example expects an unknown kind",
        ),
        pytest.param(
            "id: x\nname: X\nwhen:\n  trait: plan\n  eq: [gold\n",
            "x",
            None,
            6,
            "not valid YAML",
            id="invalid yaml",
        ),
        pytest.param(
            "id: x\nname: X\nwhen: {segment: a}\n---\nid: y\n",
            "x",
            None,
            5,
            "one rule per document",
            id="two documents",
        ),
        pytest.param("- id: x\n", None, None, 1, "a rule is a mapping", id="a list, not a mapping"),
        pytest.param(
            "base: &base {segment: a}\nid: x\nname: X\nwhen: *base\n",
            "x",
            None,
            4,
            "aliases (*name) are not supported",
            id="alias",
        ),
        pytest.param(
            '{"id": "x",\n "name": "X",\n "when": {"feature": "nope", "gt": 1}}',
            "x",
            "when.feature",
            3,
            "unknown feature 'nope'",
            id="json",
        ),
    ],
)
def test_a_bad_document_is_refused_naming_rule_field_and_line(
    text: str, rule_id: str | None, field: str | None, line: int, message: str
) -> None:
    problem = only_problem(text)

    assert (problem.rule_id, problem.field, problem.line) == (rule_id, field, line)
    assert message in problem.message


def test_an_empty_document_is_refused() -> None:
    problem = only_problem("# nothing but a comment\n")

    assert "empty" in problem.message


@pytest.mark.parametrize(
    "tag",
    [
        "!!python/object/apply:os.system",
        "!!python/object/new:os.system",
        "!!python/name:os.system",
        "!!binary",
        "!!set",
    ],
)
def test_python_and_other_tags_are_refused_and_nothing_runs(tmp_path: Path, tag: str) -> None:
    marker = tmp_path / "ran"
    text = rule_text(f"  trait: plan\n  eq: {tag} ['touch {marker}']\n")

    problem = only_problem(text)

    assert not marker.exists()
    assert (problem.rule_id, problem.field, problem.line) == ("x", "when.eq", 5)
    assert f"the tag {tag} is not allowed" in problem.message


def test_a_python_object_as_the_whole_document_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    problem = only_problem(f"!!python/object/apply:os.system ['touch {marker}']\n")

    assert not marker.exists()
    assert problem.line == 1
    assert "!!python/object/apply:os.system is not allowed" in problem.message


# --- sets of rules -------------------------------------------------------------------------------


def write_rules(directory: Path, **texts: str) -> None:
    for name, text in texts.items():
        (directory / f"{name}.yaml").write_text(text, encoding="utf-8")


def test_two_rules_with_one_id_are_named(tmp_path: Path) -> None:
    write_rules(
        tmp_path,
        a="id: vip\nname: A\nwhen: {trait: plan, eq: gold}\n",
        b="# the same id again\nid: vip\nname: B\nwhen: {trait: plan, eq: platinum}\n",
    )

    with pytest.raises(RuleError) as caught:
        load_rules_dir(tmp_path)

    (problem,) = caught.value.problems
    assert (problem.source, problem.rule_id, problem.field, problem.line) == (
        str(tmp_path / "b.yaml"),
        "vip",
        "id",
        2,
    )
    assert f"another rule has the id 'vip' (in {tmp_path / 'a.yaml'})" in problem.message


def test_a_reference_to_an_unknown_segment_is_named(tmp_path: Path) -> None:
    write_rules(
        tmp_path,
        a="id: a\nname: A\nwhen:\n  all:\n    - trait: plan\n      eq: gold\n"
        "    - segment: loyal-customer\n",
        b="id: loyal-customers\nname: Loyal\nwhen: {count: {event: Order Completed}, gte: 3}\n",
    )

    with pytest.raises(RuleError) as caught:
        load_rules_dir(tmp_path)

    (problem,) = caught.value.problems
    assert (problem.rule_id, problem.field, problem.line) == ("a", "when.all[1].segment", 7)
    assert "unknown segment 'loyal-customer'" in problem.message
    assert "did you mean 'loyal-customers'" in problem.message


def test_a_cycle_of_segment_references_is_named(tmp_path: Path) -> None:
    write_rules(
        tmp_path,
        a="id: a\nname: A\nwhen:\n  not: {segment: b}\n",
        b="id: b\nname: B\nwhen: {segment: c}\n",
        c="id: c\nname: C\nwhen: {segment: a}\n",
    )

    with pytest.raises(RuleError) as caught:
        load_rules_dir(tmp_path)

    (problem,) = caught.value.problems
    assert (problem.rule_id, problem.field, problem.line) == ("a", "when.not.segment", 4)
    assert "a -> b -> c -> a" in problem.message


def test_a_segment_that_refers_to_itself_is_a_cycle() -> None:
    rule = parse_rule("id: a\nname: A\nwhen: {segment: a}\n")

    with pytest.raises(RuleError, match="a -> a") as caught:
        check_rule_set([rule])

    (problem,) = caught.value.problems
    assert (problem.rule_id, problem.field, problem.line) == ("a", "when.segment", None)


def test_rules_without_text_are_checked_as_a_set() -> None:
    a = Rule(id="a", name="A", when=SegmentCondition(segment="b"))
    b = Rule(id="b", name="B", when=TraitCondition(trait="plan", eq="gold"))

    check_rule_set([a, b])
    with pytest.raises(RuleError, match="another rule has the id 'a'"):
        check_rule_set([a, b, a])


def test_every_bad_file_is_reported(tmp_path: Path) -> None:
    write_rules(
        tmp_path,
        a="id: a\nname: A\nwhen: {feature: nope, gt: 1}\n",
        b="id: b\nname: B\nwhen: {trait: plan, in: []}\n",
        c="id: c\nname: C\nwhen: {trait: plan, eq: gold}\n",
    )
    (tmp_path / "notes.txt").write_text("not a rule")

    with pytest.raises(RuleError) as caught:
        load_rules_dir(tmp_path)

    assert [(p.rule_id, p.field) for p in caught.value.problems] == [
        ("a", "when.feature"),
        ("b", "when.in"),
    ]


# --- round trips ---------------------------------------------------------------------------------


@settings(deadline=None)
@given(condition=conditions())
def test_a_condition_tree_survives_yaml_text(condition: ConditionNode) -> None:
    written = yaml.safe_dump(
        {
            "id": "generated",
            "name": "Generated",
            "when": condition.model_dump(mode="json", exclude_defaults=True),
        }
    )

    assert parse_rule(written).when == condition


@settings(deadline=None)
@given(rule=rule_models())
def test_a_whole_rule_survives_yaml_and_json_text(rule: Rule) -> None:
    document = rule.model_dump(mode="json", exclude_defaults=True)

    assert parse_rule(yaml.safe_dump(document, allow_unicode=True)) == rule
    assert parse_rule(json.dumps(document)) == rule


def test_a_word_of_the_language_in_the_wrong_place_gets_no_spelling_hint() -> None:
    text = "id: x\nname: X\nwhen:\n  sequence: {steps: [A, B], within: 10m}\n  gt: 1\n"
    with pytest.raises(RuleError) as refused:
        parse_rule(text)
    (problem,) = refused.value.problems
    assert (problem.field, problem.line) == ("when.gt", 5)
    assert problem.message == "'gt' does not belong here"


@pytest.mark.parametrize(
    ("send", "field"),
    [
        ("holdout_percent: 101", "on_enter[0].send.holdout_percent"),
        ("quiet_hours: {from: '25:00', until: '08:00'}", "on_enter[0].send.quiet_hours.from"),
        ("at_most: {times: 0, per: 1d}", "on_enter[0].send.at_most.times"),
        ("at_most: {times: 1, per: 0m}", "on_enter[0].send.at_most.per"),
        ("max_age: 0m", "on_enter[0].send.max_age"),
        ("max_age: soon", "on_enter[0].send.max_age"),
        ("settle: 10m, max_age: 10m", "on_enter[0].send.max_age"),  # stale before it is tried
    ],
)
def test_how_a_send_is_made_is_checked(send: str, field: str) -> None:
    text = (
        "id: x\nname: X\nwhen: {feature: cart_value, gt: 0}\n"
        f"on_enter:\n  - send: {{destination: email, template: t, {send}}}\n"
    )
    with pytest.raises(RuleError) as refused:
        parse_rule(text)
    assert [problem.field for problem in refused.value.problems] == [field]


def test_a_send_keeps_its_max_age_and_triggers_carry_it_as_written() -> None:
    text = (
        "id: x\nname: X\nwhen: {feature: cart_value, gt: 0}\n"
        "on_enter:\n  - send: {destination: email, template: t, settle: 2m, max_age: 6h}\n"
    )
    (action,) = parse_rule(text).on_enter
    assert action.send.max_age == 6 * 3_600_000
    assert action.model_dump(mode="json")["send"]["max_age"] == "6h"  # what triggers carry


def test_an_example_instant_past_100_years_is_refused_where_it_is_written():
    problem = only_problem(
        "id: x\nname: X\nwhen: {count: {event: X, within: 400d}, gte: 1}\nexamples:\n"
        "  - given: [{at: 99999999999999999999d, event: X}]\n    expect: []\n"
    )
    assert (problem.field, problem.line) == ("examples[0].given[0].at", 5)
    assert "longer than the longest duration, 36500d (100 years)" in problem.message


@pytest.mark.parametrize("word", ["contains: 5", "matches: '5'"])
def test_text_comparisons_on_a_numeric_built_in_are_refused(word: str):
    problem = only_problem(rule_text(f"  feature: cart_value\n  {word}\n"))
    assert (
        problem.message
        == f"'cart_value' is a number: '{word.split(':')[0]}' compares text or lists"
    )
    assert parse_rule(rule_text("  feature: top_category_30d\n  contains: sho\n")).id == "x"
