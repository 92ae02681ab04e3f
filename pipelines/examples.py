"""A rule's examples, run through the dataflow's own feature shard and rule engine, and the
checks of ``segflow rules check``: rule files validated, then every example run.

An example's events go into a ``pipelines.segmentation.FeatureShard`` as the stream source
would deliver them, evaluated by the same compiled rules in the same durable_rules engine as in
the running dataflow; nothing here decides a condition itself. The clock then ticks on to a
horizon past which nothing the rules read changes any more, so ``expect`` lists every
transition the events ever cause (``expect: []``: none, ever).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import orjson

from app.events import Event, StreamEntry
from app.features import DEFAULT_LATENESS_MS, SESSION_BUILTINS, TOP_CATEGORY_WINDOW_MS, Windowed
from app.features import Sequence as SequenceSpec
from app.rules.compiler import ActiveRule, CompiledRules, compile_rules
from app.rules.schema import (
    DEFAULT_EXAMPLE_CUSTOMER,
    Example,
    GivenEvent,
    Position,
    Rule,
    RuleError,
    RuleProblem,
    check_rule_set,
    load_rules_dir,
    parse_rule,
    position_of,
)
from pipelines.features import Catalogue, default_catalogue
from pipelines.records import ProfileUpdate
from pipelines.segmentation import FeatureShard
from pipelines.sources import SourceItem, StreamEvent, Tick

# An example's "0m". Any instant would do; a fixed one makes every run the same.
EXAMPLE_START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
EXAMPLE_SOURCE = "example"  # the ``source`` of the events an example sends
RULE_SUFFIXES = (".yaml", ".yml")

# --- running examples ----------------------------------------------------------------------------


class ExampleTransition(NamedTuple):
    """A transition of the rule's segment, ``at`` ms after the example's start."""

    at: int
    customer: str
    kind: str  # "enter" | "exit"

    def describe(self, *, with_customer: bool) -> str:
        who = f" ({self.customer})" if with_customer else ""
        return f"{self.kind} at {format_span(self.at)}{who}"


@dataclass(frozen=True)
class ExampleFailure:
    """An example the rule contradicts: the transitions it expects, and the ones the rule
    gives, both in time order.

    ``index`` is the example's place under ``examples:`` (from 0, as in ``examples[2]``);
    ``watched_until`` is how long after the start the clock ran (see ``run_examples``).
    """

    rule_id: str
    index: int
    name: str | None
    expected: tuple[ExampleTransition, ...]
    actual: tuple[ExampleTransition, ...]
    watched_until: int

    @property
    def field(self) -> str:
        return f"examples[{self.index}]"

    @property
    def message(self) -> str:
        customers = {t.customer for t in (*self.expected, *self.actual)}
        with_customer = customers != {DEFAULT_EXAMPLE_CUSTOMER} and bool(customers)

        def listed(transitions: Iterable[ExampleTransition]) -> str:
            shown = [t.describe(with_customer=with_customer) for t in transitions]
            return ", ".join(shown) if shown else "no transition"

        missing = _without(self.expected, self.actual)
        unexpected = _without(self.actual, self.expected)
        details = [f"missing {listed(missing)}"] if missing else []
        if unexpected:
            details.append(f"unexpected {listed(unexpected)}")
        title = f"example {self.name!r}" if self.name else f"example {self.index + 1}"
        return (
            f"{title} expects {listed(self.expected)}, but the rule gives "
            f"{listed(self.actual)} (watched until {format_span(self.watched_until)}): "
            + "; ".join(details)
        )

    def problem(self, *, where: Position | None = None, source: str | None = None) -> RuleProblem:
        return RuleProblem.at(self.rule_id, self.field, where, self.message, source)


def run_examples(rule: Rule, *, others: Iterable[Rule] = ()) -> list[ExampleFailure]:
    """Run every example of ``rule``: the ones it contradicts, in order (none: all pass).

    ``others`` hold the rules of the segments ``rule`` reads (``segment: loyal-customers``):
    any set holding them will do, such as the whole active set. Only the rules ``rule`` reads,
    directly or through one another, run with it; one with ``rule``'s own id (its previous
    version) is replaced by it. Only transitions of ``rule``'s own segment are compared.
    Examples say what a rule means, so disabled rules run as if enabled.

    Each example starts at ``EXAMPLE_START_MS`` with no customers. Its events go in time order
    (equal times in the order given); then the clock runs to its horizon: the last instant the
    example names (given or expected) plus ``settling_ms`` plus 1 ms. By then every value the
    rules read has stopped changing (a ``gt`` on a time since an event turns 1 ms after its
    threshold), so a transition missing by then never happens.

    Raises ``RuleError`` when a segment ``rule`` reads is in none of ``others``, or when the
    rules cannot be compiled.
    """
    if not rule.examples:
        return []
    compiled = compile_rules([ActiveRule(item, 1) for item in _with_references(rule, others)])
    catalogue = default_catalogue(DEFAULT_LATENESS_MS, compiled.feature_specs())
    settle = settling_ms(compiled, catalogue)
    failures = []
    for index, example in enumerate(rule.examples):
        expected = tuple(
            sorted(ExampleTransition(t.at, t.customer, t.kind) for t in example.expect)
        )
        last = max([*(event.at for event in example.given), *(t.at for t in example.expect)])
        horizon = last + settle + 1
        actual = tuple(sorted(_transitions(example, rule.id, compiled, catalogue, horizon)))
        if actual != expected:
            failures.append(ExampleFailure(rule.id, index, example.name, expected, actual, horizon))
    return failures


def example_problems(
    rule: Rule,
    *,
    others: Iterable[Rule] = (),
    text: str | None = None,
    source: str | None = None,
) -> list[RuleProblem]:
    """``run_examples`` as problems to refuse a rule with (none: it keeps to its examples).

    Each names the example's field and, given the rule's YAML or JSON ``text``, its line; a
    rule that cannot run is a problem too.
    """
    try:
        failures = run_examples(rule, others=others)
    except RuleError as error:
        return [_placed(problem, source, text) for problem in error.problems]
    return [
        failure.problem(where=position_of(text, ("examples", failure.index)), source=source)
        for failure in failures
    ]


def settling_ms(compiled: CompiledRules, catalogue: Catalogue) -> int:
    """How long after an event the values the rules read can still change with no other event:
    their longest window, time-since threshold, sequence limit, session gap or category
    window."""
    read = Catalogue.of(*compiled.feature_specs())
    longest = 0
    for spec in read.all_specs():
        if isinstance(spec, Windowed) and spec.window_ms is not None:
            longest = max(longest, spec.window_ms)
        elif isinstance(spec, SequenceSpec):
            longest = max(longest, spec.within_ms)
    for _key, thresholds in compiled.clocks:
        longest = max(longest, *(math.ceil(threshold) for threshold in thresholds))
    if SESSION_BUILTINS & set(read.builtins):
        longest = max(longest, catalogue.session_gap_ms)
    if "top_category_30d" in read.builtins:
        longest = max(longest, TOP_CATEGORY_WINDOW_MS)
    return longest


def _with_references(rule: Rule, others: Iterable[Rule]) -> list[Rule]:
    """``rule`` and the rules of the segments it reads, directly or not, all enabled."""
    by_id = {other.id: other for other in others}
    by_id[rule.id] = rule
    needed: dict[str, Rule] = {}
    missing: set[str] = set()
    pending = [rule.id]
    while pending:
        found = by_id.get(rule_id := pending.pop())
        if found is None:
            missing.add(rule_id)
        elif rule_id not in needed:
            needed[rule_id] = found.model_copy(update={"enabled": True})
            pending += sorted(found.segment_refs())
    if missing:
        raise RuleError(
            RuleProblem(
                rule.id,
                "examples",
                None,
                f"the examples read segment {segment!r}, and no rule given keeps it",
            )
            for segment in sorted(missing)
        )
    return list(needed.values())


def _transitions(
    example: Example,
    rule_id: str,
    compiled: CompiledRules,
    catalogue: Catalogue,
    horizon: int,
) -> list[ExampleTransition]:
    """The transitions of ``rule_id``'s segment the example's events cause up to ``horizon``.

    The events come as a finished stream delivers them: in event-time order, then the tick
    that returns the clock past them, which fires every deadline up to it (included) at the
    deadline's own instant.
    """
    shard = FeatureShard(catalogue, compiled, None)
    given = sorted(example.given, key=lambda event: event.at)
    items: list[SourceItem] = [
        StreamEvent(0, f"{n}-0", _stream_event(n, event)) for n, event in enumerate(given, 1)
    ]
    items.append(Tick(0, EXAMPLE_START_MS + horizon, inclusive=True))
    out, _ = shard.on_batch(items)
    return [
        ExampleTransition(transition.at - EXAMPLE_START_MS, update.customer_id, transition.kind)
        for update in out
        if isinstance(update, ProfileUpdate)
        for transition in update.transitions
        if transition.segment == rule_id
    ]


def _stream_event(n: int, given: GivenEvent) -> StreamEntry:
    """A given event as the stream carries it: a canonical ``app.events.Event``, as JSON."""
    when = EXAMPLE_START_MS + given.at
    event = Event(
        message_id=f"example-{n}",
        type=given.type,
        customer_id=given.customer,
        user_id=given.customer,
        event=given.event,
        timestamp=when,
        received_at=when,
        properties=given.properties,
        traits=given.traits,
        source=EXAMPLE_SOURCE,
    )
    loaded: StreamEntry = orjson.loads(event.to_json())
    return loaded


def _without(
    items: Sequence[ExampleTransition], taken: Sequence[ExampleTransition]
) -> list[ExampleTransition]:
    """``items`` less ``taken``, each taken once."""
    left = Counter(taken)
    kept = []
    for item in items:
        if left[item]:
            left[item] -= 1
        else:
            kept.append(item)
    return kept


_SPAN_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1))


def format_span(ms: int) -> str:
    """A time from an example's start, as rules write them: ``30m``, ``1d12h``, ``40m1ms``."""
    parts = []
    for unit, size in _SPAN_UNITS:
        if ms >= size:
            parts.append(f"{ms // size}{unit}")
            ms %= size
    return "".join(parts) or "0m"


def _placed(problem: RuleProblem, source: str | None, text: str | None) -> RuleProblem:
    """The problem with the file it is about and its line and column, where it lacks them."""
    return replace(problem.placed(text), source=problem.source or source)


# --- checking files ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckedRule:
    """A rule that validated, and what running its examples found."""

    rule: Rule
    source: str
    problems: tuple[RuleProblem, ...]


@dataclass(frozen=True)
class RuleFilesCheck:
    """What ``check_rule_files`` found: the rules that validated (their examples run), and
    every problem, of validation or of examples."""

    rules: tuple[CheckedRule, ...]
    problems: tuple[RuleProblem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_rule_files(path: str | os.PathLike[str]) -> RuleFilesCheck:
    """Validate a rule file, or every ``*.yaml`` / ``*.yml`` rule of a directory as one set,
    then run the examples of each rule. Examples run only once every rule validated.

    A single file's ``segment:`` references are looked up among the rule files beside it: the
    rules it reads run with it, as they would from the directory, but only its own examples
    are run and only its own problems reported.
    """
    path = Path(path)
    loaded = _load_dir(path) if path.is_dir() else _load_file(path)
    if isinstance(loaded, RuleError):
        return RuleFilesCheck((), loaded.problems)
    files, rules = loaded
    checked = tuple(
        CheckedRule(
            rule, source, tuple(example_problems(rule, others=rules, text=text, source=source))
        )
        for rule, source, text in files
    )
    return RuleFilesCheck(checked, tuple(p for item in checked for p in item.problems))


_RuleFile = tuple[Rule, str, str]  # the rule, the file it came from, its text
# The rules whose examples are run, and every rule they may read.
_Loaded = tuple[list[_RuleFile], list[Rule]]


def _rule_files(directory: Path) -> list[Path]:
    return sorted(
        entry for entry in directory.iterdir() if entry.suffix in RULE_SUFFIXES and entry.is_file()
    )


def _load_dir(directory: Path) -> _Loaded | RuleError:
    files = _rule_files(directory)
    if not files:
        return RuleError(
            [RuleProblem(None, None, None, "no rule files (*.yaml, *.yml) here", str(directory))]
        )
    try:
        rules = load_rules_dir(directory)
    except RuleError as error:
        return error
    # load_rules_dir read these files in this order, one rule each
    loaded = [
        (rule, str(file), file.read_text(encoding="utf-8"))
        for rule, file in zip(rules, files, strict=True)
    ]
    return loaded, rules


def _load_file(file: Path) -> _Loaded | RuleError:
    read = _read_rule(file)
    if isinstance(read, RuleError):
        return read
    rule, text = read
    if not rule.segment_refs():
        return [(rule, str(file), text)], [rule]
    beside: dict[str, _RuleFile] = {}
    for other in _rule_files(file.parent):
        found = None if other.resolve() == file.resolve() else _read_rule(other)
        if found is not None and not isinstance(found, RuleError):
            beside.setdefault(found[0].id, (found[0], str(other), found[1]))
    beside.pop(rule.id, None)
    needed = [(rule, str(file), text)]
    pending = sorted(rule.segment_refs())
    while pending:
        entry = beside.pop(pending.pop(), None)
        if entry is not None:
            needed.append(entry)
            pending += sorted(entry[0].segment_refs())
    try:
        check_rule_set(item for item, _, _ in needed)
    except RuleError as error:
        texts = {item.id: (source, text) for item, source, text in needed}
        return RuleError(
            _placed(problem, *texts.get(problem.rule_id or "", (str(file), None)))
            for problem in error.problems
        )
    return [(rule, str(file), text)], [item for item, _, _ in needed]


def _read_rule(file: Path) -> tuple[Rule, str] | RuleError:
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        return RuleError([RuleProblem(None, None, None, f"not UTF-8 text: {error}", str(file))])
    except OSError as error:
        return RuleError([RuleProblem(None, None, None, f"cannot be read: {error}", str(file))])
    try:
        return parse_rule(text, source=str(file)), text
    except RuleError as error:
        return error
