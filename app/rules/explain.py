"""Why a customer is in a segment or not: a rule's condition tree with each leaf's value and
truth, from the customer's stored features, traits and memberships.

The values are the stored profile's as of ``now`` (``app.features.features_as_of``: the
window and session changes the record carries up to ``now`` applied, times since grown). Leaves
are decided by the same ``leaf_holds`` the rules stage uses for what it decides in Python, and
which the engine's comparisons are property-tested against (tests/unit/test_rule_engine.py).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from app.rules.compiler import comparisons, leaf_holds
from app.rules.schema import (
    All,
    ClusterCondition,
    ConditionNode,
    Not,
    Rule,
    SegmentCondition,
    TraitCondition,
    snapshot_key,
)
from app.rules.schema import Any as AnyOf


def feature_keys(rule: Rule) -> frozenset[str]:
    """The snapshot keys of every feature the rule reads."""
    return frozenset(snapshot_key(spec) for spec in rule.feature_specs())


class Evaluation:
    """One customer's values as a rule reads them."""

    def __init__(
        self,
        rule: Rule,
        features: Mapping[str, Any],
        traits: Mapping[str, Any],
        segments: Collection[str],
    ) -> None:
        """``features``: as of the instant explained (``app.features.features_as_of``)."""
        self.rule = rule
        self.traits = traits
        self.segments = frozenset(segments)
        self.features = features

    def value(self, leaf: Any) -> tuple[str, Any]:
        """The leaf's subject (a feature's key, a trait, a segment) and its value."""
        if isinstance(leaf, SegmentCondition):
            return leaf.segment, leaf.segment in self.segments
        if isinstance(leaf, ClusterCondition):
            return leaf.cluster, False  # no cluster is assigned yet
        if isinstance(leaf, TraitCondition):
            return leaf.trait, self.traits.get(leaf.trait)
        spec = self.rule.spec_of(leaf)
        assert spec is not None
        key = snapshot_key(spec)
        return key, self.features.get(key)

    def holds(self, node: ConditionNode | None = None) -> bool:
        """The condition's truth, as ``tree`` gives it, without building the tree."""
        node = self.rule.when if node is None else node
        if isinstance(node, Not):
            return not self.holds(node.not_)
        if isinstance(node, All):
            return all(self.holds(child) for child in node.all)
        if isinstance(node, AnyOf):
            return any(self.holds(child) for child in node.any)
        return leaf_holds(node, self.value(node)[1])

    def tree(self, node: ConditionNode | None = None, path: str = "when") -> dict[str, Any]:
        """The condition tree with every node's truth and every leaf's value."""
        node = self.rule.when if node is None else node
        if isinstance(node, Not):
            inner = self.tree(node.not_, f"{path}.not")
            return {"path": path, "kind": "not", "holds": not inner["holds"], "condition": inner}
        if isinstance(node, All | AnyOf):
            word = "all" if isinstance(node, All) else "any"
            children = node.all if isinstance(node, All) else node.any
            parts = [self.tree(child, f"{path}.{word}[{n}]") for n, child in enumerate(children)]
            truths = [part["holds"] for part in parts]
            return {
                "path": path,
                "kind": word,
                "holds": all(truths) if word == "all" else any(truths),
                "conditions": parts,
            }
        subject, value = self.value(node)
        return {
            "path": path,
            "kind": node.key,
            "subject": subject,
            "condition": node.model_dump(mode="json", by_alias=True, exclude_none=True),
            "compare": {("in" if w == "in_" else w): c for w, c in comparisons(node)},
            "value": value,
            "holds": leaf_holds(node, value),
        }
