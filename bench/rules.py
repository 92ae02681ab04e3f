"""Rule evaluation in durable_rules, next to the same rules as plain Python predicates.

1. Rules: the first N of a generated set of marketer-style rules (written as YAML text and read
   with ``parse_rule``, like the shipped ones: counts, sums, distincts, since, built-in and
   declared features, traits; all / any / not), compiled with ``compile_rules``.
2. Snapshots: a seeded shop stream (sessions of views, adds, checkouts, orders; identifies with
   traits) runs through ``CustomerFeatures`` with the catalogue the largest rule set needs; every
   snapshot the dataflow would evaluate is kept (one per event, one per deadline, including the
   rules' time-since flips), then a seeded sample of SNAPSHOTS of them.
3. Engine: ``Rulesets.for_thread(compiled).segments(features, traits)`` per snapshot, exactly as
   ``FeatureShard._changed`` calls it. Floor: each rule's condition tree compiled to nested Python
   closures, evaluated on the same snapshots. Before timing, the floor must give the engine's
   segment set for every snapshot, or the run stops with an error.

Engine and floor are timed in ROUNDS alternating rounds, SECONDS in all for each. One evaluation
is one snapshot against all N rules (rule-evals/s = eval/s x N); the ratio is the engine's eval/s
over the floor's, so below 1 the engine is the slower.

    .venv/bin/python bench/rules.py [--snapshots 20000] [--seconds 3] [--rules 1,10,100]
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import os
import random
import re
import sys
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.features import DEFAULT_LATENESS_MS  # noqa: E402
from app.rules.compiler import ActiveRule, CompiledRules, compile_rules  # noqa: E402
from app.rules.engine import Rulesets  # noqa: E402
from app.rules.schema import (  # noqa: E402
    All,
    ConditionNode,
    Leaf,
    Not,
    Rule,
    SequenceCondition,
    TraitCondition,
    parse_rule,
    snapshot_key,
)
from app.rules.schema import Any as AnyOf  # noqa: E402
from pipelines.features import CustomerFeatures, default_catalogue  # noqa: E402

SEED = 7
CUSTOMERS = 2_000
DAYS = 120  # the stream's span: longer than the longest window the rules read (90d)
START_MS = 1_800_000_000_000  # a fixed instant, so runs do not depend on the clock
ROUNDS = 3  # engine and floor alternate this many times per rule count
CATEGORIES = ("shoes", "bags", "hats", "coats", "toys")
COUNTRIES = ("DE", "FR", "GB", "US", "ES", "NL")
PLANS = ("free", "free", "pro", "premium")
DOMAINS = ("example.com", "mail.test", "shop.test")

Snapshot = tuple[dict[str, Any], dict[str, Any]]  # (features, traits), as _changed passes them
Predicate = Callable[[Mapping[str, Any], Mapping[str, Any]], bool]

# --- rules ---------------------------------------------------------------------------------------

# Each template is a marketer's rule with its numbers left open: (id prefix, YAML body).
# The body is everything after `name:`; `{w}`-style fields are drawn per rule.
TEMPLATES: tuple[tuple[str, str], ...] = (
    (
        "browsing",
        """
when:
  all:
    - count: {{event: Product Viewed, within: {w}}}
      gte: {k}
    - count: {{event: Order Completed, within: {w}}}
      eq: 0
""",
    ),
    (
        "cart-abandoners",
        """
when:
  all:
    - feature: cart_value
      gt: {x}
    - since: {{event: Product Added}}
      gte: {d}
""",
    ),
    (
        "high-intent",
        """
when:
  all:
    - any:
        - count: {{event: Checkout Started, within: {w}}}
          gte: {k}
        - feature: cart_value
          gt: {x}
    - count: {{event: Order Completed, within: {w}}}
      eq: 0
""",
    ),
    (
        "lapsed",
        """
when:
  all:
    - count: {{event: Order Completed}}
      gte: 1
    - count: {{event: Order Completed, within: {long}}}
      eq: 0
""",
    ),
    (
        "loyal",
        """
when:
  count: {{event: Order Completed, within: {long}}}
  gte: {k}
""",
    ),
    (
        "big-spenders",
        """
when:
  all:
    - sum: {{event: Order Completed, property: revenue, within: {long}}}
      gte: {money}
    - not:
        trait: plan
        eq: free
""",
    ),
    (
        "category-fans",
        """
when:
  all:
    - count: {{event: Product Viewed, within: {w}, where: {{category: {category}}}}}
      gte: {k}
    - feature: top_category_30d
      eq: {category}
""",
    ),
    (
        "regional-vips",
        """
features:
  spend_{long}: {{sum: {{event: Order Completed, property: revenue, within: {long}}}}}
when:
  all:
    - feature: spend_{long}
      gte: {money}
    - trait: country
      in: [{countries}]
""",
    ),
    (
        "cooling-buyers",
        """
when:
  all:
    - feature: rfm_frequency_90d
      gte: {k}
    - since: {{event: Order Completed}}
      gte: {days}
""",
    ),
    (
        "window-shoppers",
        """
when:
  all:
    - distinct: {{event: Product Viewed, property: product_id, within: {w}}}
      gte: {k}
    - not:
        count: {{event: Product Added, within: {w}}}
        gte: 1
""",
    ),
    (
        "newsletter-browsers",
        """
when:
  all:
    - trait: email
      matches: '@{domain}$'
    - count: {{event: Product Viewed, within: 7d}}
      gte: {k}
""",
    ),
    (
        "engaged-sessions",
        """
when:
  any:
    - feature: session_events
      gte: {many}
    - all:
        - feature: browsing_depth
          gte: {k}
        - feature: interaction_rate_30d
          gte: 0.{k}
""",
    ),
    (
        "premium-carts",
        """
when:
  all:
    - trait: plan
      in: [pro, premium]
    - feature: cart_items
      gte: {k}
""",
    ),
)


def rule_text(index: int, rng: random.Random) -> str:
    """The YAML text of generated rule ``index``: the templates in turn, numbers drawn."""
    prefix, body = TEMPLATES[index % len(TEMPLATES)]
    values = {
        "w": rng.choice(("10m", "30m", "1h", "24h", "7d")),
        "long": rng.choice(("14d", "30d", "60d", "90d")),
        "k": rng.randint(1, 6),
        "many": rng.randint(6, 15),
        "x": rng.choice((0, 20, 50, 100, 200)),
        "d": rng.choice(("15m", "30m", "1h", "4h", "24h")),
        "days": rng.choice(("7d", "14d", "30d")),
        "money": rng.choice((50, 100, 250, 500, 1000)),
        "category": rng.choice(CATEGORIES),
        "countries": ", ".join(rng.sample(COUNTRIES, rng.randint(1, 3))),
        "domain": re.escape(rng.choice(DOMAINS)),
    }
    rule_id = f"{prefix}-{index + 1}"
    head = f"id: {rule_id}\nname: {prefix.replace('-', ' ').title()} {index + 1}\n"
    return head + body.format(**values).lstrip("\n")


def generated_rules(count: int, seed: int = SEED) -> list[Rule]:
    rng = random.Random(seed)
    return [parse_rule(rule_text(n, rng), source=f"<generated {n + 1}>") for n in range(count)]


def compiled(rules: Sequence[Rule]) -> CompiledRules:
    return compile_rules([ActiveRule(rule, 1) for rule in rules])


# --- snapshots -----------------------------------------------------------------------------------


def stored(number: int, kind: str, customer: str, at: int, **fields: Any) -> dict[str, Any]:
    """An event as the collector stores it (``app.events.Event``'s fields)."""
    return {
        "message_id": f"m{number}",
        "type": kind,
        "customer_id": customer,
        "user_id": customer,
        "event": fields.get("event"),
        "timestamp": at,
        "received_at": at,
        "properties": fields.get("properties", {}),
        "traits": fields.get("traits", {}),
        "context": {},
        "source": "bench",
    }


def shop_stream(events: int, *, customers: int, seed: int) -> list[dict[str, Any]]:
    """About ``events`` events in time order: visits of a few customers often and most rarely,
    each a run of views, sometimes an add, a checkout and an order; most customers identify
    once with traits, and a few change plan later."""
    rng = random.Random(seed)
    weights = [1 / (n + 1) ** 0.8 for n in range(customers)]
    favourite = [rng.choice(CATEGORIES) for _ in range(customers)]
    identifies: dict[int, bool] = {}  # customer -> whether they identify at all
    out: list[dict[str, Any]] = []
    while len(out) < events:
        who = rng.choices(range(customers), weights)[0]
        customer = f"c{who}"
        at = START_MS + rng.randrange(DAYS * 86_400_000)
        visit: list[tuple[str, str | None, dict[str, Any], dict[str, Any]]] = []
        first = who not in identifies
        if first:
            identifies[who] = rng.random() < 0.7
        if identifies[who] and (first or rng.random() < 0.02):
            traits = {
                "plan": rng.choice(PLANS),
                "country": rng.choice(COUNTRIES),
                "email": f"{customer}@{rng.choice(DOMAINS)}",
            }
            visit.append(("identify", None, {}, traits))
        viewed = []
        for _ in range(1 + int(rng.expovariate(0.3))):
            category = favourite[who] if rng.random() < 0.6 else rng.choice(CATEGORIES)
            product = f"p{rng.randrange(200)}"
            viewed.append((product, rng.choice((9.5, 19.0, 35.0, 60.0, 120.0))))
            visit.append(
                ("track", "Product Viewed", {"product_id": product, "category": category}, {})
            )
        if rng.random() < 0.35:
            product, price = rng.choice(viewed)
            quantity = rng.randint(1, 3)
            added = {"product_id": product, "price": price, "quantity": quantity}
            visit.append(("track", "Product Added", added, {}))
            if rng.random() < 0.2:
                visit.append(("track", "Product Removed", {"product_id": product}, {}))
            elif rng.random() < 0.5:
                visit.append(("track", "Checkout Started", {"checkout_id": f"k{len(out)}"}, {}))
                if rng.random() < 0.6:
                    order = {"order_id": f"o{len(out)}", "revenue": price * quantity}
                    visit.append(("track", "Order Completed", order, {}))
        for kind, name, properties, traits in visit:
            out.append(
                stored(
                    len(out), kind, customer, at, event=name, properties=properties, traits=traits
                )
            )
            at += rng.randint(5_000, 180_000)
    out.sort(key=lambda event: event["timestamp"])  # a stable sort: visits keep their order
    return out


def observed_snapshots(events: list[dict[str, Any]], rules: CompiledRules) -> list[Snapshot]:
    """Every (features, traits) the dataflow evaluates the rules on for these events: after each
    event, and at each deadline (a window edge, a session end, a rule's time-since threshold)
    that passes before the customer's next event, as ``FeatureShard`` fires them."""
    catalogue = default_catalogue(DEFAULT_LATENESS_MS, rules.feature_specs())
    customers: dict[str, CustomerFeatures] = {}
    scheduled: dict[str, int] = {}
    deadlines: list[tuple[int, str]] = []
    out: list[Snapshot] = []

    def changed(customer_id: str, now: int, observed: tuple[dict[str, Any], int | None]) -> None:
        features, deadline = observed
        out.append((features, dict(customers[customer_id].traits)))
        flip = rules.next_flip(now, features)
        if flip is not None and (deadline is None or flip < deadline):
            deadline = flip
        if deadline is not None:
            queued = scheduled.get(customer_id)
            if queued is None or deadline < queued or queued <= now:
                scheduled[customer_id] = deadline
                heapq.heappush(deadlines, (deadline, customer_id))

    for event in events:
        when = event["timestamp"]
        while deadlines and deadlines[0][0] < when:
            deadline, customer_id = heapq.heappop(deadlines)
            if scheduled.get(customer_id) != deadline:
                continue
            del scheduled[customer_id]
            customer = customers[customer_id]
            customer.expire(customer.newest or deadline)
            changed(customer_id, deadline, customer.observe(deadline))
        customer_id = event["customer_id"]
        if customer_id not in customers:
            customers[customer_id] = CustomerFeatures(catalogue)
        customer = customers[customer_id]
        name = customer.apply(event)
        now = customer.newest or when
        changed(customer_id, now, customer.observe_after(now, name))
    return out


# --- the floor -----------------------------------------------------------------------------------


def _number(value: Any) -> bool:
    return type(value) is int or type(value) is float  # bool is not a number here


def _comparator(word: str, constant: Any) -> Callable[[Any], bool]:
    """One comparator on a present value, with the rule language's meaning (schema.py)."""
    if word in ("eq", "ne"):
        if _number(constant):
            equal: Callable[[Any], bool] = lambda v: _number(v) and v == constant  # noqa: E731
        else:
            kind = type(constant)
            equal = lambda v: type(v) is kind and v == constant  # noqa: E731
        return equal if word == "eq" else lambda v: not equal(v)
    if word == "gt":
        return lambda v: _number(v) and v > constant
    if word == "gte":
        return lambda v: _number(v) and v >= constant
    if word == "lt":
        return lambda v: _number(v) and v < constant
    if word == "lte":
        return lambda v: _number(v) and v <= constant
    if word == "in_":
        options = [_comparator("eq", item) for item in constant]
        return lambda v: any(option(v) for option in options)
    if word == "contains":
        same = _comparator("eq", constant)
        return lambda v: (
            (isinstance(v, str) and isinstance(constant, str) and constant in v)
            or (isinstance(v, list) and any(same(item) for item in v))
        )
    if word == "matches":
        pattern = re.compile(constant)
        return lambda v: isinstance(v, str) and pattern.search(v[:10_000]) is not None
    raise ValueError(f"the floor has no comparator {word!r}")


_WORDS = ("eq", "ne", "gt", "gte", "lt", "lte", "in_", "contains", "matches")


def _leaf(rule: Rule, leaf: Leaf) -> Predicate:
    """A missing value satisfies no comparator; a present one must satisfy every one given."""
    spec = None if isinstance(leaf, SequenceCondition) else rule.spec_of(leaf)
    if not isinstance(leaf, TraitCondition) and spec is None:
        raise ValueError(f"the floor reads features and traits only, not {leaf!r}")
    tests = [
        _comparator(word, getattr(leaf, word))
        for word in _WORDS
        if getattr(leaf, word, None) is not None
    ]
    test = tests[0] if len(tests) == 1 else lambda v: all(check(v) for check in tests)
    if spec is None:
        trait = typing.cast(TraitCondition, leaf).trait
        return lambda features, traits: (v := traits.get(trait)) is not None and test(v)
    key = snapshot_key(spec)
    return lambda features, traits: (v := features.get(key)) is not None and test(v)


def _node(rule: Rule, node: ConditionNode) -> Predicate:
    if isinstance(node, Not):
        inner = _node(rule, node.not_)
        return lambda features, traits: not inner(features, traits)
    if isinstance(node, All | AnyOf):
        children = [
            _node(rule, child) for child in (node.all if isinstance(node, All) else node.any)
        ]
        if isinstance(node, All):
            # loops, not all()/any() over a generator: half the cost, and a floor should be fast
            def every(features: Mapping[str, Any], traits: Mapping[str, Any]) -> bool:
                for child in children:  # noqa: SIM110
                    if not child(features, traits):
                        return False
                return True

            return every

        def some(features: Mapping[str, Any], traits: Mapping[str, Any]) -> bool:
            for child in children:  # noqa: SIM110
                if child(features, traits):
                    return True
            return False

        return some
    return _leaf(rule, node)


class FloorRules:
    """The rules as plain Python: one closure tree per rule (no segment or cluster leaves)."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self._predicates = [(rule.id, _node(rule, rule.when)) for rule in rules]

    def segments(self, features: Mapping[str, Any], traits: Mapping[str, Any]) -> frozenset[str]:
        return frozenset(
            [rule_id for rule_id, holds in self._predicates if holds(features, traits)]
        )


# --- measuring -----------------------------------------------------------------------------------

Evaluate = Callable[[dict[str, Any], dict[str, Any]], frozenset[str]]


def first_disagreement(
    engine: Sequence[frozenset[str]], floor: Sequence[frozenset[str]], snapshots: Sequence[Snapshot]
) -> str | None:
    """How the first snapshot the two evaluations disagree on differs, or None."""
    for number, (ours, theirs, snapshot) in enumerate(zip(engine, floor, snapshots, strict=True)):
        if ours != theirs:
            return (
                f"snapshot {number}: the engine gave {sorted(ours)}, the floor {sorted(theirs)} "
                f"(only engine: {sorted(ours - theirs)}, only floor: {sorted(theirs - ours)}); "
                f"features {snapshot[0]}, traits {snapshot[1]}"
            )
    return None


def evaluations(
    evaluate: Evaluate, snapshots: Sequence[Snapshot], seconds: float
) -> tuple[int, float]:
    """(snapshots evaluated, seconds taken): passes over ``snapshots`` until ``seconds`` are up,
    the clock read every few hundred evaluations."""
    chunks = [snapshots[start : start + 256] for start in range(0, len(snapshots), 256)]
    done = 0
    started = time.perf_counter()
    for chunk in itertools.cycle(chunks):
        for features, traits in chunk:
            evaluate(features, traits)
        done += len(chunk)
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return done, elapsed
    raise AssertionError("cycle() never ends")


@dataclass
class Timing:
    snapshots: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Snapshots evaluated per second."""
        return self.snapshots / self.seconds


@dataclass(frozen=True)
class Row:
    rules: int
    rulesets: int  # engine rulesets the rules were cut into (each one assert per snapshot)
    engine: Timing
    floor: Timing
    held: float  # segments held per snapshot, on average
    ever: int  # rules that held for at least one snapshot

    def cells(self) -> list[str]:
        engine, floor = self.engine.rate, self.floor.rate
        return [
            f"{self.rules}",
            f"{self.rulesets}",
            f"{engine:,.0f}",
            f"{engine * self.rules:,.0f}",
            f"{floor:,.0f}",
            f"{floor * self.rules:,.0f}",
            f"{engine / floor:.3f}",
            f"{1e6 / engine:.1f}",
            f"{1e6 / floor:.2f}",
            f"{self.held:.2f}",
            f"{self.ever} of {self.rules}",
        ]


COLUMNS = (
    "rules",
    "engine rulesets",
    "engine eval/s",
    "engine rule-evals/s",
    "floor eval/s",
    "floor rule-evals/s",
    "ratio engine/floor",
    "engine µs per snapshot",
    "floor µs per snapshot",
    "segments held per snapshot",
    "rules ever holding",
)


def measure(rules: Sequence[Rule], snapshots: Sequence[Snapshot], seconds: float) -> Row:
    """Both evaluations of ``rules`` on ``snapshots``: checked equal, then timed."""
    active = compiled(rules)
    floor = FloorRules(rules)

    def engine(features: dict[str, Any], traits: dict[str, Any]) -> frozenset[str]:
        return Rulesets.for_thread(active).segments(features, traits)  # as _changed calls it

    from_engine = [engine(features, traits) for features, traits in snapshots]
    from_floor = [floor.segments(features, traits) for features, traits in snapshots]
    problem = first_disagreement(from_engine, from_floor, snapshots)
    if problem is not None:
        raise SystemExit(f"{len(rules)} rules: the floor disagrees with the engine: {problem}")
    engine_timing, floor_timing = Timing(), Timing()
    for _ in range(ROUNDS):  # alternating, so both see the machine in the same moods
        for timing, evaluate in ((engine_timing, engine), (floor_timing, floor.segments)):
            done, spent = evaluations(evaluate, snapshots, seconds / ROUNDS)
            timing.snapshots += done
            timing.seconds += spent
    return Row(
        rules=len(rules),
        rulesets=sum(len(layer) for layer in active.layers),
        engine=engine_timing,
        floor=floor_timing,
        held=sum(len(segments) for segments in from_engine) / len(snapshots),
        ever=len(frozenset().union(*from_engine)),
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshots", type=int, default=20_000, help="snapshots evaluated")
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="timed seconds per evaluator per rule count"
    )
    parser.add_argument("--rules", default="1,10,100", help="rule counts, comma-separated")
    args = parser.parse_args(argv)
    counts = [int(part) for part in args.rules.split(",")]

    rules = generated_rules(max(counts))
    started = time.perf_counter()
    stream = shop_stream(args.snapshots, customers=CUSTOMERS, seed=SEED)
    observed = observed_snapshots(stream, compiled(rules))
    snapshots = random.Random(SEED).sample(observed, min(args.snapshots, len(observed)))
    prepared_s = time.perf_counter() - started
    rows = [measure(rules[:count], snapshots, args.seconds) for count in counts]

    print(
        f"\nrule evaluation: {len(snapshots):,} snapshots (sampled from {len(observed):,} "
        f"observed over {len(stream):,} events of {CUSTOMERS:,} customers in {DAYS} days, "
        f"prepared in {prepared_s:.1f} s), {args.seconds:g} s per evaluator in {ROUNDS} rounds, "
        f"1 thread, {os.cpu_count()} cores; the floor agreed on every snapshot"
    )
    print(f"| {' | '.join(COLUMNS)} |")
    print(f"|{'---|' * len(COLUMNS)}")
    for row in rows:
        print(f"| {' | '.join(row.cells())} |")


if __name__ == "__main__":
    main()
