"""An explanation's truth at the root is the one ``Evaluation.holds`` gives without the tree,
and the engine's verdict (test_rule_engine checks the engine against the same words)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from app.rules.explain import Evaluation
from tests.unit.test_rule_engine import expected, rules_and_values


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules_and_values())
def test_holds_is_the_trees_truth(case):
    rule, features, traits, segments, _clusters, values = case
    members = [segment for segment, inside in segments.items() if inside]
    evaluation = Evaluation(rule, features, traits, members)
    assert evaluation.holds() == evaluation.tree()["holds"]
    if not any(getattr(leaf, "cluster", None) for leaf in rule.leaves()):
        assert evaluation.holds() == expected(rule, rule.when, values)
