"""Rule examples run through the dataflow's feature shard and the real rule engine: the shipped
rules keep to theirs, and a rule that contradicts one is told which, where, and how."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.rules.active import SHIPPED_RULES_DIR
from app.rules.schema import Rule, RuleError, line_of, load_rules_dir, parse_rule
from pipelines.examples import (
    ExampleTransition,
    check_rule_files,
    example_problems,
    format_span,
    run_examples,
)

MINUTE = 60_000
DAY = 86_400_000
SHIPPED = {rule.id: rule for rule in load_rules_dir(SHIPPED_RULES_DIR)}

CART_ABANDONERS = """\
id: cart-abandoners
name: Cart Abandoners
when:
  all:
    - feature: cart_value
      gt: 0
    - since: {event: Product Added}
      gte: 30m
examples:
  - name: an abandoned cart enters 30 minutes after the add
    given:
      - {at: 0m, event: Product Added, properties: {product_id: p1, price: 20}}
    expect:
      - {at: %s, kind: enter}
"""


def cart_rule(enter_at: str) -> tuple[Rule, str]:
    text = CART_ABANDONERS % enter_at
    return parse_rule(text), text


def with_examples(rule_id: str, examples: str) -> Rule:
    """A shipped rule with other examples (YAML, indented by two)."""
    text = (SHIPPED_RULES_DIR / f"{rule_id}.yaml").read_text(encoding="utf-8")
    return parse_rule(text.split("\nexamples:")[0] + "\nexamples:\n" + examples)


@pytest.mark.parametrize("rule_id", sorted(SHIPPED))
def test_every_shipped_rule_keeps_to_its_examples(rule_id: str) -> None:
    assert run_examples(SHIPPED[rule_id], others=SHIPPED.values()) == []


def test_the_shipped_rules_directory_checks_clean() -> None:
    checked = check_rule_files(SHIPPED_RULES_DIR)

    assert checked.ok, checked.problems
    assert {item.rule.id: len(item.rule.examples) for item in checked.rules} == {
        rule_id: len(rule.examples) for rule_id, rule in SHIPPED.items()
    }


def test_a_contradicted_example_names_itself_and_both_sets_of_transitions() -> None:
    rule, text = cart_rule("20m")

    [failure] = run_examples(rule)

    assert failure.index == 0
    assert failure.name == "an abandoned cart enters 30 minutes after the add"
    assert failure.expected == (ExampleTransition(20 * MINUTE, "customer-1", "enter"),)
    assert failure.actual == (ExampleTransition(30 * MINUTE, "customer-1", "enter"),)
    assert failure.message == (
        "example 'an abandoned cart enters 30 minutes after the add' expects enter at 20m, "
        "but the rule gives enter at 30m (watched until 50m1ms): "
        "missing enter at 20m; unexpected enter at 30m"
    )
    [problem] = example_problems(rule, text=text, source="rules/cart.yaml")
    assert (problem.rule_id, problem.field, problem.line) == (
        "cart-abandoners",
        "examples[0]",
        10,
    )
    assert str(problem).startswith(
        "rules/cart.yaml: rule 'cart-abandoners', field 'examples[0]' (line 10): example "
    )


def test_the_example_that_holds_passes() -> None:
    rule, text = cart_rule("30m")

    assert run_examples(rule) == []
    assert example_problems(rule, text=text) == []


def test_a_deadline_is_watched_for_even_when_the_example_expects_nothing() -> None:
    # expect: [] means never: the clock runs past the 30-minute threshold after the last event
    rule = with_examples(
        "cart-abandoners",
        "  - given: [{at: 0m, event: Product Added, properties: {product_id: p1, price: 5}}]\n"
        "    expect: []\n",
    )

    [failure] = run_examples(rule)

    assert failure.name is None
    assert failure.actual == (ExampleTransition(30 * MINUTE, "customer-1", "enter"),)
    assert failure.message.startswith("example 1 expects no transition, but the rule gives ")


def test_a_window_deadline_weeks_after_the_last_event_is_seen() -> None:
    rule = with_examples(
        "lapsed-customers",
        "  - given: [{at: 0m, event: Order Completed, properties: {order_id: o1}}]\n"
        "    expect: []\n",
    )

    [failure] = run_examples(rule)

    assert failure.actual == (ExampleTransition(30 * DAY, "customer-1", "enter"),)
    assert failure.watched_until == 30 * DAY + 1


def test_the_horizon_is_the_last_instant_plus_the_longest_duration_read() -> None:
    rule = with_examples(
        "browsing-enthusiasts",
        "  - given: [{at: 3m, event: Product Viewed}]\n    expect: [{at: 7m, kind: enter}]\n",
    )

    [failure] = run_examples(rule)

    assert failure.actual == ()
    assert failure.watched_until == 7 * MINUTE + 10 * MINUTE + 1


def test_customers_are_told_apart() -> None:
    rule = with_examples(
        "cart-abandoners",
        """\
  - given:
      - {at: 0m, customer: ann, event: Product Added, properties: {product_id: p1, price: 20}}
      - {at: 5m, customer: bob, event: Product Added, properties: {product_id: p2, price: 9}}
      - {at: 20m, customer: ann, event: Order Completed, properties: {order_id: o1}}
    expect:
      - {at: 35m, kind: enter, customer: bob}
  - given:
      - {at: 0m, customer: ann, event: Product Added, properties: {product_id: p1, price: 20}}
      - {at: 5m, customer: bob, event: Product Added, properties: {product_id: p2, price: 9}}
    expect:
      - {at: 30m, kind: enter, customer: bob}
      - {at: 35m, kind: enter, customer: ann}
""",
    )

    [failure] = run_examples(rule)

    assert failure.index == 1
    assert failure.actual == (
        ExampleTransition(30 * MINUTE, "ann", "enter"),
        ExampleTransition(35 * MINUTE, "bob", "enter"),
    )
    assert "missing enter at 30m (bob), enter at 35m (ann)" in failure.message
    assert "unexpected enter at 30m (ann), enter at 35m (bob)" in failure.message


def test_events_are_applied_in_time_order_whatever_order_they_are_listed_in() -> None:
    rule = with_examples(
        "cart-abandoners",
        """\
  - given:
      - {at: 45m, event: Order Completed, properties: {order_id: o1}}
      - {at: 0m, event: Product Added, properties: {product_id: p1, price: 20}}
    expect:
      - {at: 45m, kind: exit}
      - {at: 30m, kind: enter}
""",
    )

    assert run_examples(rule) == []


VIP = """\
id: gold-loyal
name: Gold and loyal
when:
  all:
    - segment: loyal-customers
    - trait: plan
      eq: gold
examples:
  - name: loyal and gold, until the first order is 90 days old
    given:
      - {at: 0m, type: identify, traits: {plan: gold}}
      - {at: 1d, event: Order Completed, properties: {order_id: o1, revenue: 30}}
      - {at: 2d, event: Order Completed, properties: {order_id: o2, revenue: 30}}
      - {at: 3d, event: Order Completed, properties: {order_id: o3, revenue: 30}}
    expect:
      - {at: 3d, kind: enter}
      - {at: 91d, kind: exit}
  - name: loyal but not gold
    given:
      - {at: 0m, type: identify, traits: {plan: silver}}
      - {at: 1d, event: Order Completed, properties: {order_id: o1, revenue: 30}}
      - {at: 2d, event: Order Completed, properties: {order_id: o2, revenue: 30}}
      - {at: 3d, event: Order Completed, properties: {order_id: o3, revenue: 30}}
    expect: []
"""


def test_a_rule_reading_another_segment_runs_with_that_rule() -> None:
    # loyal-customers enters and exits too; only the rule under test's transitions count
    assert run_examples(parse_rule(VIP), others=SHIPPED.values()) == []


def test_the_segment_read_is_the_one_the_given_rules_keep() -> None:
    loyal = (SHIPPED_RULES_DIR / "loyal-customers.yaml").read_text(encoding="utf-8")
    four_orders = parse_rule(loyal.split("\nexamples:")[0].replace("gte: 3", "gte: 4"))

    [failure] = run_examples(parse_rule(VIP), others=[four_orders])

    assert (failure.index, failure.actual) == (0, ())


def test_the_rule_under_test_replaces_its_previous_version() -> None:
    rule, _ = cart_rule("20m")

    [failure] = run_examples(rule, others=SHIPPED.values())

    assert failure.expected == (ExampleTransition(20 * MINUTE, "customer-1", "enter"),)


def test_a_segment_without_its_rule_cannot_run() -> None:
    with pytest.raises(RuleError) as caught:
        run_examples(parse_rule(VIP))

    [problem] = caught.value.problems
    assert problem.rule_id == "gold-loyal"
    assert "'loyal-customers'" in problem.message
    [same] = example_problems(parse_rule(VIP), text=VIP)
    assert (same.field, same.line) == ("examples", 8)


def test_a_disabled_rule_still_answers_for_its_examples() -> None:
    rule, _ = cart_rule("20m")

    assert len(run_examples(rule.model_copy(update={"enabled": False}))) == 1


# DESIGN.md: an add and an order at one instant never leave the customer in a segment between them.
def test_events_at_one_instant_apply_together() -> None:
    rule = with_examples(
        "high-intent-buyers",
        """\
  - given:
      - {at: 0m, event: Product Added, properties: {product_id: p1, price: 250}}
      - {at: 0m, event: Order Completed, properties: {order_id: o1, revenue: 250}}
    expect: []
""",
    )

    assert run_examples(rule) == []


def test_a_single_file_reads_the_segments_of_the_rules_beside_it(tmp_path: Path) -> None:
    (tmp_path / "loyal.yaml").write_text(
        (SHIPPED_RULES_DIR / "loyal-customers.yaml").read_text(encoding="utf-8")
    )
    (tmp_path / "broken.yaml").write_text("id: broken\nname: [\n")
    (tmp_path / "vip.yaml").write_text(VIP)

    checked = check_rule_files(tmp_path / "vip.yaml")

    assert checked.ok, checked.problems
    assert [item.rule.id for item in checked.rules] == ["gold-loyal"]


def test_a_single_file_reading_an_unknown_segment_is_refused_with_its_line(
    tmp_path: Path,
) -> None:
    (tmp_path / "vip.yaml").write_text(VIP)

    checked = check_rule_files(tmp_path / "vip.yaml")

    [problem] = checked.problems
    assert checked.rules == ()
    assert (problem.rule_id, problem.field, problem.line) == (
        "gold-loyal",
        "when.all[0].segment",
        5,
    )
    assert problem.source == str(tmp_path / "vip.yaml")


def test_lines_are_found_by_path_or_field() -> None:
    assert line_of(VIP, ("examples", 1)) == 18
    assert line_of(VIP, "when.all[1].eq") == 7
    assert line_of(VIP, "examples[9]") == 8  # past the end: the nearest enclosing value
    assert line_of("name: [", "examples") is None
    assert line_of(None, "when") is None


def test_spans_read_as_rules_write_them() -> None:
    assert format_span(0) == "0m"
    assert format_span(30 * MINUTE) == "30m"
    assert format_span(DAY + 12 * 60 * MINUTE) == "1d12h"
    assert format_span(40 * MINUTE + 1) == "40m1ms"


VIEWED_THEN_ADDED = """\
id: viewed-then-added
name: Viewed then added
description: Added a product to the cart within 10 minutes of viewing it, in the last hour.
when:
  sequence:
    steps: [Product Viewed, Product Added]
    within: 10m
    same: [product_id]
    in_last: 1h
examples:
  - name: the same product, viewed then added in time, for an hour
    given:
      - {at: 0m, event: Product Viewed, properties: {product_id: p1}}
      - {at: 9m, event: Product Added, properties: {product_id: p1, price: 5}}
    expect:
      - {at: 9m, kind: enter}
      - {at: 69m, kind: exit}
  - name: another product does not complete the chain
    given:
      - {at: 0m, event: Product Viewed, properties: {product_id: p1}}
      - {at: 1m, event: Product Added, properties: {product_id: p2, price: 5}}
    expect: []
  - name: ten minutes is too long
    given:
      - {at: 0m, event: Product Viewed, properties: {product_id: p1}}
      - {at: 10m, event: Product Added, properties: {product_id: p1, price: 5}}
    expect: []
  - name: a later view restarts the chain
    given:
      - {at: 0m, event: Product Viewed, properties: {product_id: p1}}
      - {at: 8m, event: Product Viewed, properties: {product_id: p1}}
      - {at: 15m, event: Product Added, properties: {product_id: p1, price: 5}}
    expect:
      - {at: 15m, kind: enter}
      - {at: 75m, kind: exit}
"""


def test_a_sequence_rule_keeps_to_its_examples() -> None:
    assert run_examples(parse_rule(VIEWED_THEN_ADDED)) == []


def test_a_sequence_example_that_is_wrong_is_caught() -> None:
    wrong = VIEWED_THEN_ADDED.replace("{at: 69m, kind: exit}", "{at: 70m, kind: exit}")
    (failure,) = run_examples(parse_rule(wrong))
    assert failure.index == 0
    assert "unexpected exit at 1h9m" in failure.message
