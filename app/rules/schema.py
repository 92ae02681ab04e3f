"""The rule document: one YAML (or JSON) document per rule, read into frozen pydantic models.

This module owns what a rule *says* and every check that needs no events: shapes, durations,
comparators that can never hold, unknown features, and (for a set of rules) duplicate ids,
unknown segments and cycles of segment references. What a rule *does* with a customer's events is
the engine's (``app.rules.engine``); here a leaf only names the feature it reads.

A rule::

    id: cart-abandoners            # also the segment's id
    name: Cart Abandoners
    features:                      # optional: named features, usable as `feature: NAME`
      big_spend_7d: {sum: {event: Order Completed, property: revenue, within: 7d}}
    when:                          # all / any / not, nested freely, over the leaves below
      all:
        - feature: cart_value
          gt: 0
        - since: {event: Product Added}
          gte: 30m
    on_enter:
      - send: {destination: email, template: cart-reminder}
    examples:
      - given: [{at: 0m, event: Product Added, properties: {product_id: p1, price: 20}}]
        expect: [{at: 30m, kind: enter}]

Errors a marketer can make come back as a ``RuleError`` holding ``RuleProblem``s, each naming the
rule, the field (``when.all[1].gte``) and the line and column of the YAML text it came from.
"""

from __future__ import annotations

import difflib
import graphlib
import json
import math
import os
import re
import typing
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import KW_ONLY, dataclass, replace
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import re2
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    JsonValue,
    ModelWrapValidatorHandler,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from app.durations import format_duration_ms, parse_duration_ms
from app.features import BUILTIN_INPUTS, Aggregate, FeatureSpec, Sequence, Since, Windowed, windowed

MAX_WINDOW_MS = 400 * 86_400_000  # the longest window the dataflow keeps events for
MAX_PATTERN_LENGTH = 200
PATTERN_MEMORY_BYTES = 1 << 20  # RE2's budget per compiled pattern (its default is 8 MB)
DEFAULT_EXAMPLE_CUSTOMER = "customer-1"
BUILTIN_FEATURES = frozenset(BUILTIN_INPUTS)
TEXT_BUILTINS = frozenset({"top_category_30d"})  # every other built-in is a number

# --- problems ------------------------------------------------------------------------------------


Position = tuple[int, int]  # 1-based line and column of a place in a rule's text


@dataclass(frozen=True)
class RuleProblem:
    """One thing wrong with a rule, and where: the rule, the field and the line and column of
    its text (the column of the key that names the field, or where YAML stopped reading)."""

    rule_id: str | None  # None when the id itself could not be read
    field: str | None  # ``when.all[1].gte``; None for the document as a whole
    line: int | None  # 1-based line of the YAML text; None when the rule came without text
    message: str
    source: str | None = None  # the file or ``<rule>`` the text came from
    _: KW_ONLY
    column: int | None = None  # 1-based, in characters; None when the line is

    @classmethod
    def at(
        cls,
        rule_id: str | None,
        field: str | None,
        where: Position | None,
        message: str,
        source: str | None = None,
    ) -> RuleProblem:
        """A problem at a position of the text (None: no place in it)."""
        line, column = where if where is not None else (None, None)
        return cls(rule_id, field, line, message, source, column=column)

    def placed(self, text: str | None) -> RuleProblem:
        """This problem with the line and column of its field in ``text``, when it lacks a
        line and names a field (a problem found on the parsed rule, not on its text)."""
        if self.line is not None or not self.field:
            return self
        where = position_of(text, self.field)
        if where is None:
            return self
        return replace(self, line=where[0], column=where[1])

    def __str__(self) -> str:
        parts = [f"rule {self.rule_id!r}"] if self.rule_id else []
        if self.field:
            parts.append(f"field {self.field!r}")
        where = ", ".join(parts)
        if self.line is not None:
            where = f"{where} (line {self.line})" if where else f"line {self.line}"
        text = f"{where}: {self.message}" if where else self.message
        return f"{self.source}: {text}" if self.source else text


class RuleError(ValueError):
    """A rule, or a set of rules, refused: every problem found, not only the first."""

    def __init__(self, problems: Iterable[RuleProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(problem) for problem in self.problems)


# --- values --------------------------------------------------------------------------------------


def _describe(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return repr(value)


def _plain_text(value: str) -> str:
    """Names people read and type: not blank, no control characters, no edge spaces."""
    if not value.strip():
        raise ValueError("must not be blank")
    if value != value.strip():
        raise ValueError(f"{value!r} starts or ends with spaces")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        raise ValueError(f"{value!r} contains a control character")
    return value


_SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_FEATURE_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


def _slug(value: str) -> str:
    if not _SLUG.fullmatch(value):
        raise ValueError(
            f"{value!r} is not an id: use lowercase letters, digits and '-', starting with a "
            "letter or digit, at most 63 characters (such as cart-abandoners)"
        )
    return value


def _declared_name(value: str) -> str:
    if not _FEATURE_NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a feature name: use lowercase letters, digits and '_', starting "
            "with a letter, at most 63 characters (such as big_spend_7d)"
        )
    if value in BUILTIN_FEATURES:
        raise ValueError(f"{value!r} is a built-in feature: give the declared one another name")
    return value


def _scalar(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value} is not a number to compare with")
    if isinstance(value, str | int | float):  # bool is an int
        return value
    raise ValueError(f"must be text, a number or true/false, not {_describe(value)}")


def _number(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number, not {_describe(value)}")
    if not math.isfinite(value):
        raise ValueError(f"{value} is not a number to compare with")
    return value


def _duration(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(
            f"{_describe(value)} is not a duration: write a whole number and a unit "
            "(ms, s, m, h, d, w), such as 30s, 10m, 24h or 30d"
        )
    return parse_duration_ms(value)


def _window(ms: int) -> int:
    if ms == 0:
        raise ValueError("a window of 0 holds no events: give a length such as 10m or 30d")
    if ms > MAX_WINDOW_MS:
        raise ValueError(
            f"{format_duration_ms(ms)} is longer than the longest window kept (400d); "
            "leave 'within' out to mean the whole lifetime"
        )
    return ms


def compile_pattern(text: str) -> typing.Any:
    """A ``matches`` pattern, compiled by RE2: matching takes time linear in the text, whatever
    the pattern (a backtracking engine takes exponential time on ``^(a+)+$``, and one trait
    would stall the dataflow). RE2's syntax is Python's without backreferences and lookaround.
    Raises ``ValueError`` saying why a pattern cannot be run."""
    options = re2.Options()
    options.log_errors = False  # a marketer's pattern is not the log's business
    options.max_mem = PATTERN_MEMORY_BYTES
    try:
        return re2.compile(text, options=options)
    except re2.error as error:
        why = error.args[0].decode() if error.args and isinstance(error.args[0], bytes) else error
        raise ValueError(f"{text!r} is not a regular expression RE2 runs: {why}") from None


def _pattern(value: str) -> str:
    if len(value) > MAX_PATTERN_LENGTH:
        raise ValueError(
            f"the pattern is {len(value)} characters long; at most {MAX_PATTERN_LENGTH} are taken"
        )
    compile_pattern(value)
    return value


Name = Annotated[str, Field(max_length=200), AfterValidator(_plain_text)]
EventName = Name
PropertyName = Name
RuleId = Annotated[str, AfterValidator(_slug)]
DeclaredName = Annotated[str, AfterValidator(_declared_name)]
Scalar = Annotated[StrictStr | StrictBool | StrictInt | StrictFloat, BeforeValidator(_scalar)]
Number = Annotated[StrictInt | StrictFloat, BeforeValidator(_number)]
# Stored as milliseconds; written back (in JSON mode) the shortest exact way: 600000 -> "10m".
Duration = Annotated[
    int,
    BeforeValidator(_duration),
    PlainSerializer(format_duration_ms, return_type=str, when_used="json"),
]
Window = Annotated[Duration, AfterValidator(_window)]
Pattern = Annotated[StrictStr, AfterValidator(_pattern)]


class _Node(BaseModel):
    """Frozen, strict about keys, readable and writable by the words rules use (``in``,
    ``not``, ``property``)."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


# --- what leaves read ----------------------------------------------------------------------------


class EventWindow(_Node):
    """The events a count reads: ``{event: Product Viewed, within: 10m, where: {category: shoes}}``.

    Without ``within`` the window is the customer's whole lifetime. ``where`` keeps only events
    whose properties equal every given value.
    """

    event: EventName
    within: Window | None = Field(
        default=None, description="The window, such as 10m or 30d; none: the whole lifetime."
    )
    where: dict[PropertyName, Scalar] = Field(
        default_factory=dict, description="Property values an event must have to be read."
    )

    def spec(self, aggregate: Aggregate = "count") -> Windowed:
        return windowed(aggregate, self.event, self.within, where=self.where)


class PropertyWindow(EventWindow):
    """The events a sum, min, max or distinct reads, and the ``property`` it reads of them."""

    prop: PropertyName = Field(alias="property", description="The property aggregated.")

    def spec(self, aggregate: Aggregate = "sum") -> Windowed:
        return windowed(aggregate, self.event, self.within, prop=self.prop, where=self.where)


class EventRef(_Node):
    """One event by name: ``{event: Product Added}``."""

    event: EventName


class EventSequence(_Node):
    """Steps in order, the whole chain within ``within``: ``{steps: [Product Viewed, Product
    Added], within: 10m, same: [product_id], in_last: 1h}``."""

    steps: tuple[EventName, ...] = Field(description="Event names, in the order they happen.")
    within: Window = Field(description="The longest time from the first step to the last.")
    same: tuple[PropertyName, ...] = Field(
        default=(), description="Properties every step of one chain has equal values of."
    )
    in_last: Window | None = Field(
        default=None,
        description="The chain completed in this last stretch of time; none: ever.",
    )

    @field_validator("steps")
    @classmethod
    def _at_least_two(cls, steps: tuple[str, ...]) -> tuple[str, ...]:
        if len(steps) < 2:
            raise ValueError(
                f"a sequence needs at least two steps, found {len(steps)}; "
                "for one event use count or since"
            )
        return steps

    def spec(self) -> Sequence:
        return Sequence(self.steps, self.within, self.same)


# --- conditions ----------------------------------------------------------------------------------

ValueKind = Literal["any", "number", "count", "duration"]
_COMPARATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in_", "contains", "matches")
_ORDERED = ("eq", "ne", "gt", "gte", "lt", "lte", "in_")


def _word(field_name: str) -> str:
    return "in" if field_name == "in_" else field_name


class _Compared(_Node):
    """A leaf whose value is compared: every comparator given must hold.

    ``eq``/``ne`` equal or differ; ``gt``/``gte``/``lt``/``lte`` compare numbers; ``in`` is one
    of a list; ``contains`` holds when text contains the text, or a list the value; ``matches``
    is a regular expression (RE2 syntax: Python's without backreferences and lookaround) the
    text matches, in time linear in the text. A missing value (no trait,
    no event yet) satisfies no comparator.
    """

    key: ClassVar[str]  # the key that names the leaf's kind
    value_kind: ClassVar[ValueKind] = "any"
    subject: ClassVar[str] = "the value"  # how messages name what is compared

    eq: Scalar | None = None
    ne: Scalar | None = None
    gt: Number | None = None
    gte: Number | None = None
    lt: Number | None = None
    lte: Number | None = None
    in_: tuple[Scalar, ...] | None = Field(default=None, alias="in")
    contains: Scalar | None = None
    matches: Pattern | None = None

    @model_serializer(mode="wrap")
    def _kind_first(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        """Written back as people write it: the kind of leaf first, then its comparators."""
        data = typing.cast(dict[str, object], handler(self))
        return {key: data[key] for key in (self.key, *data) if key in data}

    @classmethod
    def _subject(cls) -> str:
        return f"the {cls.key}" if cls.value_kind == "any" else cls.subject

    @field_validator("contains", "matches")
    @classmethod
    def _text_only(cls, value: object, info: ValidationInfo) -> object:
        if value is not None and cls.value_kind != "any":
            raise ValueError(
                f"{cls.subject} is a number: '{info.field_name}' compares text or lists"
            )
        return value

    @field_validator(*_ORDERED)
    @classmethod
    def _possible(cls, value: object, info: ValidationInfo) -> object:
        word = _word(info.field_name or "")
        if isinstance(value, tuple) and not value:
            raise ValueError("'in' needs at least one value to compare with")
        if value is None or cls.value_kind == "any":
            return value
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, bool) or not isinstance(item, int | float):
                raise ValueError(
                    f"{cls.subject} is a number: compare it with numbers, not {item!r}"
                )
            if cls.value_kind != "number" and item < 0:
                raise ValueError(
                    f"{cls.subject} is never negative, so '{word}: {item}' cannot be meant"
                )
        if word == "lt" and cls.value_kind != "number" and value == 0:
            raise ValueError(f"{cls.subject} is never below 0, so 'lt: 0' never holds")
        return value

    @model_validator(mode="after")
    def _compared(self) -> typing.Self:
        if all(getattr(self, name) is None for name in _COMPARATORS):
            words = ", ".join(_word(name) for name in _COMPARATORS)
            raise ValueError(f"compare {self._subject()} with at least one of {words}")
        # The tightest lower and upper bounds; at equal values the strict one is tighter.
        low = max(
            (
                (value, strict, word)
                for value, strict, word in ((self.gt, True, "gt"), (self.gte, False, "gte"))
                if value is not None
            ),
            default=None,
        )
        high = min(
            (
                (value, not strict, word)
                for value, strict, word in ((self.lt, True, "lt"), (self.lte, False, "lte"))
                if value is not None
            ),
            default=None,
        )
        if low is not None and high is not None:
            (low_value, low_strict, low_word), (high_value, high_loose, high_word) = low, high
            if low_value > high_value or (
                low_value == high_value and (low_strict or not high_loose)
            ):
                raise ValueError(
                    f"'{low_word}: {low_value}' and '{high_word}: {high_value}' never hold together"
                )
        return self


class FeatureCondition(_Compared):
    """A built-in feature (``cart_value``, ``rfm_recency_ms``, ...) or one the rule declares
    under ``features:``, compared: ``{feature: cart_value, gt: 0}``."""

    key = "feature"
    feature: str = Field(description="A built-in feature or one declared under 'features:'.")

    @field_validator("feature")
    @classmethod
    def _known(cls, name: str) -> str:
        known = _KNOWN_FEATURES.get()
        if known is not None and name not in known:
            raise ValueError(_unknown_feature(name, known))
        return name

    @model_validator(mode="after")
    def _text_only_for_text(self) -> FeatureCondition:
        if self.feature in BUILTIN_FEATURES and self.feature not in TEXT_BUILTINS:
            for word in ("contains", "matches"):
                if getattr(self, word) is not None:
                    raise ValueError(
                        f"{self.feature!r} is a number: '{word}' compares text or lists"
                    )
        return self

    def spec(self, declared: Mapping[str, FeatureSpec] | None = None) -> FeatureSpec | str:
        return (declared or {}).get(self.feature, self.feature)


class _Windowed(_Compared):
    """A leaf comparing an aggregate of an event over a window; the field named like its kind
    (``count``, ``sum`` ...) says which event, property and window."""

    def spec(self, declared: Mapping[str, FeatureSpec] | None = None) -> FeatureSpec:
        window: EventWindow = getattr(self, self.key)
        return window.spec(typing.cast(Aggregate, self.key))


class CountCondition(_Windowed):
    """How many of an event in a window:
    ``{count: {event: Product Viewed, within: 10m}, gte: 5}``."""

    key = "count"
    value_kind = "count"
    subject = "a count"
    count: EventWindow


class SumCondition(_Windowed):
    """The total of a numeric property over a window (0 with no events)."""

    key = "sum"
    value_kind = "number"
    subject = "a sum"
    sum: PropertyWindow


class MinCondition(_Windowed):
    """The least value of a numeric property over a window (missing with no events)."""

    key = "min"
    value_kind = "number"
    subject = "a minimum"
    min: PropertyWindow


class MaxCondition(_Windowed):
    """The greatest value of a numeric property over a window (missing with no events)."""

    key = "max"
    value_kind = "number"
    subject = "a maximum"
    max: PropertyWindow


class DistinctCondition(_Windowed):
    """How many distinct values a property took over a window."""

    key = "distinct"
    value_kind = "count"
    subject = "a count of distinct values"
    distinct: PropertyWindow


class SinceCondition(_Compared):
    """Time since the last occurrence of an event, compared with durations:
    ``{since: {event: Product Added}, gte: 30m}``. Before the first occurrence it is missing,
    so no comparison holds (to say "never", count the event with no window)."""

    key = "since"
    value_kind = "duration"
    subject = "the time since an event"
    since: EventRef
    eq: Duration | None = None
    ne: Duration | None = None
    gt: Duration | None = None
    gte: Duration | None = None
    lt: Duration | None = None
    lte: Duration | None = None
    in_: tuple[Duration, ...] | None = Field(default=None, alias="in")

    def spec(self, declared: Mapping[str, FeatureSpec] | None = None) -> FeatureSpec:
        return Since(self.since.event)


class TraitCondition(_Compared):
    """A trait the customer was identified with: ``{trait: plan, eq: premium}``."""

    key = "trait"
    trait: Name


class SegmentCondition(_Node):
    """True while the customer is in the segment another rule keeps:
    ``{segment: loyal-customers}``."""

    key: ClassVar[str] = "segment"
    segment: RuleId


class ClusterCondition(_Node):
    """True while the customer is in the named cluster: ``{cluster: High-Intent Buyers}``."""

    key: ClassVar[str] = "cluster"
    cluster: Name


class SequenceCondition(_Node):
    """True when the steps happened in order, the whole chain within ``within``, every step with
    equal values of the ``same`` properties, and the chain completed in the last ``in_last``
    (no ``in_last``: ever).

    The feature's value is the time since the newest completed chain, so "in the last W" holds
    while that time is under W (completion times in ``(t - W, t]``).
    """

    key: ClassVar[str] = "sequence"
    sequence: EventSequence

    def spec(self, declared: Mapping[str, FeatureSpec] | None = None) -> FeatureSpec:
        return self.sequence.spec()


class All(_Node):
    """True when every condition is."""

    key: ClassVar[str] = "all"
    all: tuple[Condition, ...]

    @field_validator("all")
    @classmethod
    def _not_empty(cls, conditions: tuple[ConditionNode, ...]) -> tuple[ConditionNode, ...]:
        if not conditions:
            raise ValueError("'all' needs at least one condition")
        return conditions


class Any(_Node):
    """True when at least one condition is."""

    key: ClassVar[str] = "any"
    any: tuple[Condition, ...]

    @field_validator("any")
    @classmethod
    def _not_empty(cls, conditions: tuple[ConditionNode, ...]) -> tuple[ConditionNode, ...]:
        if not conditions:
            raise ValueError("'any' needs at least one condition")
        return conditions


class Not(_Node):
    """True when the condition is not."""

    key: ClassVar[str] = "not"
    not_: Condition = Field(alias="not")


Leaf = (
    FeatureCondition
    | CountCondition
    | SumCondition
    | MinCondition
    | MaxCondition
    | DistinctCondition
    | SinceCondition
    | TraitCondition
    | SegmentCondition
    | ClusterCondition
    | SequenceCondition
)
# The leaves whose value is a feature the dataflow computes.
ReadsFeature = (
    FeatureCondition
    | CountCondition
    | SumCondition
    | MinCondition
    | MaxCondition
    | DistinctCondition
    | SinceCondition
    | SequenceCondition
)
ConditionNode = All | Any | Not | Leaf

_KINDS: tuple[type[ConditionNode], ...] = typing.get_args(ConditionNode)
_TAG_BY_KEY = {kind.key: kind.__name__ for kind in _KINDS}
_TAGS = frozenset(_TAG_BY_KEY.values())


def _condition_tag(value: object) -> str | None:
    """Which kind of condition a mapping is, by the one kind key it has (None: not exactly one)."""
    if isinstance(value, BaseModel):
        return type(value).__name__ if type(value).__name__ in _TAGS else None
    if not isinstance(value, dict):
        return None
    kinds = [_TAG_BY_KEY[key] for key in value if key in _TAG_BY_KEY]
    return kinds[0] if len(kinds) == 1 else None


_CONDITION_KIND_ERROR = "condition_kind"
Condition = Annotated[
    Annotated[All, Tag("All")]
    | Annotated[Any, Tag("Any")]
    | Annotated[Not, Tag("Not")]
    | Annotated[FeatureCondition, Tag("FeatureCondition")]
    | Annotated[CountCondition, Tag("CountCondition")]
    | Annotated[SumCondition, Tag("SumCondition")]
    | Annotated[MinCondition, Tag("MinCondition")]
    | Annotated[MaxCondition, Tag("MaxCondition")]
    | Annotated[DistinctCondition, Tag("DistinctCondition")]
    | Annotated[SinceCondition, Tag("SinceCondition")]
    | Annotated[TraitCondition, Tag("TraitCondition")]
    | Annotated[SegmentCondition, Tag("SegmentCondition")]
    | Annotated[ClusterCondition, Tag("ClusterCondition")]
    | Annotated[SequenceCondition, Tag("SequenceCondition")],
    Discriminator(
        _condition_tag,
        custom_error_type=_CONDITION_KIND_ERROR,
        custom_error_message="a condition is a mapping with exactly one of the keys "
        + ", ".join(_TAG_BY_KEY),
    ),
]
for _kind in (All, Any, Not):
    _kind.model_rebuild()


Location = tuple[str | int, ...]  # a location in the document: ("when", "all", 1, "gte")


def _walk(condition: ConditionNode, at: Location) -> Iterator[tuple[Location, ConditionNode]]:
    yield at, condition
    if isinstance(condition, All):
        for index, child in enumerate(condition.all):
            yield from _walk(child, (*at, "all", index))
    elif isinstance(condition, Any):
        for index, child in enumerate(condition.any):
            yield from _walk(child, (*at, "any", index))
    elif isinstance(condition, Not):
        yield from _walk(condition.not_, (*at, "not"))


def walk(condition: ConditionNode, path: str = "when") -> Iterator[tuple[str, ConditionNode]]:
    """Every condition of the tree, parents before children, with its field path
    (``when.all[1]``), as problems and explanations name them."""
    for at, node in _walk(condition, (path,)):
        yield format_path(at), node


def leaves(condition: ConditionNode) -> Iterator[Leaf]:
    """The leaves of the tree, in document order."""
    for _, node in _walk(condition, ()):
        if not isinstance(node, All | Any | Not):
            yield node


def snapshot_key(spec: FeatureSpec | str) -> str:
    """The key of a feature's value in a feature snapshot: a spec's name, or a built-in's."""
    return spec if isinstance(spec, str) else spec.name


# --- the rule ------------------------------------------------------------------------------------


class FeatureDeclaration(_Node):
    """A named feature, exactly one of: ``{sum: {event: Order Completed, property: revenue,
    within: 7d}}``, count, min, max, distinct, since or sequence."""

    count: EventWindow | None = None
    sum: PropertyWindow | None = None
    min: PropertyWindow | None = None
    max: PropertyWindow | None = None
    distinct: PropertyWindow | None = None
    since: EventRef | None = None
    sequence: EventSequence | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> typing.Self:
        given = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(given) != 1:
            kinds = ", ".join(type(self).model_fields)
            found = f" (found {', '.join(given)})" if given else ""
            raise ValueError(f"a feature is exactly one of {kinds}{found}")
        return self

    def spec(self) -> FeatureSpec:
        if self.count is not None:
            return self.count.spec("count")
        if self.since is not None:
            return Since(self.since.event)
        if self.sequence is not None:
            return self.sequence.spec()
        for aggregate in ("sum", "min", "max", "distinct"):
            window = getattr(self, aggregate)
            if window is not None:
                return typing.cast(PropertyWindow, window).spec(aggregate)
        raise AssertionError("validated to hold exactly one feature")


class FrequencyCap(_Node):
    """At most ``times`` sends of this action to one customer ``per`` stretch of time."""

    times: int = Field(ge=1, le=1000)
    per: Window


class QuietHours(_Node):
    """Local times (the customer's ``timezone`` trait, else UTC) when nothing is sent: a send
    due then waits for ``until``. ``from`` after ``until`` spans midnight."""

    from_: str = Field(alias="from", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    until: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")


class Send(_Node):
    """Send a message made from ``template`` to ``destination`` (a webhook an operator set up).

    ``marketing`` sends are not made to customers whose ``marketing_opt_out`` trait is true;
    ``at_most`` caps them per customer; ``holdout_percent`` of customers (the same ones every
    time, by a hash of customer and rule) are recorded as held out instead, to measure lift;
    ``quiet_hours`` defers, never drops. ``settle`` waits that long before the first attempt,
    so that a late event can still retract the transition (a late ``Order Completed``
    cancels a cart reminder instead of racing it): a retracted one is not sent.

    ``max_age`` keeps history from being messaged: a transition whose instant is older than
    that when the dispatcher first decides (a replay of last month, a backlog after a long
    outage) is recorded as ``stale``, not sent. Left out, the dispatcher's default applies
    (``DEFAULT_MAX_AGE`` in ``app.dispatch.policy``, 1d: a dispatcher down overnight still
    catches up)."""

    destination: Name
    template: Name
    marketing: bool = True
    at_most: FrequencyCap | None = None
    holdout_percent: float = Field(default=0, ge=0, le=100)
    quiet_hours: QuietHours | None = None
    settle: Window | None = None
    max_age: Window | None = None

    @field_validator("max_age")
    @classmethod
    def _longer_than_settle(cls, max_age: int | None, info: ValidationInfo) -> int | None:
        settle = info.data.get("settle")
        if max_age is not None and settle is not None and max_age <= settle:
            raise ValueError(
                f"max_age ({format_duration_ms(max_age)}) must be longer than settle "
                f"({format_duration_ms(settle)}): every send would be stale before its first "
                "attempt"
            )
        return max_age


class Action(_Node):
    """What happens when a customer enters or exits the segment."""

    send: Send


class GivenEvent(_Node):
    """One event of an example, ``at`` a time from the start: a track event by its name, or an
    identify with traits."""

    at: Duration
    type: Literal["track", "identify"] = "track"
    event: EventName | None = None
    properties: dict[str, JsonValue] = Field(default_factory=dict)
    traits: dict[str, JsonValue] = Field(default_factory=dict)
    customer: Name = DEFAULT_EXAMPLE_CUSTOMER

    @model_validator(mode="after")
    def _shape(self) -> typing.Self:
        if self.type == "track" and self.event is None:
            raise ValueError("a track event needs 'event' (its name), or say 'type: identify'")
        if self.type == "identify":
            if self.event is not None or self.properties:
                raise ValueError("an identify carries 'traits', not 'event' or 'properties'")
            if not self.traits:
                raise ValueError("an identify needs 'traits'")
        return self


class ExpectedTransition(_Node):
    """A transition the example must produce: the customer enters or exits ``at`` a time."""

    at: Duration
    kind: Literal["enter", "exit"]
    customer: Name = DEFAULT_EXAMPLE_CUSTOMER


class Example(_Node):
    """Events in, and every transition they must produce (none: ``expect: []``)."""

    name: Name | None = None
    given: tuple[GivenEvent, ...]
    expect: tuple[ExpectedTransition, ...]

    @field_validator("given")
    @classmethod
    def _not_empty(cls, given: tuple[GivenEvent, ...]) -> tuple[GivenEvent, ...]:
        if not given:
            raise ValueError("an example needs at least one event under 'given'")
        return given


# The names a `feature:` leaf may use while one rule is validated: the built-ins and the rule's
# own declarations, which the leaf cannot see from where it sits in the tree.
_KNOWN_FEATURES: ContextVar[frozenset[str] | None] = ContextVar("_KNOWN_FEATURES", default=None)


def _unknown_feature(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown feature {name!r}: use a built-in feature or declare it under 'features:'{hint}"


class Rule(_Node):
    """A segment and the condition that keeps it: customers enter when ``when`` turns true and
    exit when it turns false; ``on_enter`` / ``on_exit`` actions fire then."""

    id: RuleId = Field(description="Also the segment's id.")
    name: Name
    description: str = Field(default="", max_length=2000)
    enabled: bool = True
    features: dict[DeclaredName, FeatureDeclaration] = Field(
        default_factory=dict, description="Features this rule declares, by name."
    )
    when: Condition
    on_enter: tuple[Action, ...] = ()
    on_exit: tuple[Action, ...] = ()
    examples: tuple[Example, ...] = ()

    @model_validator(mode="wrap")
    @classmethod
    def _knowing_declared_features(
        cls, data: object, handler: ModelWrapValidatorHandler[Rule]
    ) -> Rule:
        declared = data.get("features") if isinstance(data, dict) else None
        names = (
            {name for name in declared if isinstance(name, str)}
            if isinstance(declared, dict)
            else set()
        )
        token = _KNOWN_FEATURES.set(BUILTIN_FEATURES | names)
        try:
            return handler(data)
        finally:
            _KNOWN_FEATURES.reset(token)

    @model_validator(mode="after")
    def _features_known(self) -> typing.Self:
        # Leaves built as objects skip their own check (pydantic does not revalidate them).
        known = BUILTIN_FEATURES | set(self.features)
        for leaf in self.leaves():
            if isinstance(leaf, FeatureCondition) and leaf.feature not in known:
                raise ValueError(_unknown_feature(leaf.feature, known))
        return self

    def conditions(self) -> Iterator[tuple[str, ConditionNode]]:
        """Every condition with its field path, parents first."""
        return walk(self.when)

    def leaves(self) -> Iterator[Leaf]:
        return leaves(self.when)

    def declared_specs(self) -> dict[str, FeatureSpec]:
        return {name: declaration.spec() for name, declaration in self.features.items()}

    def spec_of(self, leaf: Leaf) -> FeatureSpec | str | None:
        """The feature a leaf reads (a built-in by name), or None for traits and memberships.
        Its value sits in a snapshot under ``snapshot_key(spec)``."""
        if isinstance(leaf, ReadsFeature):
            return leaf.spec(self.declared_specs())
        return None

    def feature_specs(self) -> tuple[FeatureSpec | str, ...]:
        """What the dataflow must compute for this rule: what ``when`` reads, then the declared
        features, each once."""
        declared = self.declared_specs()
        read = [leaf.spec(declared) for leaf in self.leaves() if isinstance(leaf, ReadsFeature)]
        return tuple(dict.fromkeys([*read, *declared.values()]))

    def segment_refs(self) -> frozenset[str]:
        return frozenset(
            leaf.segment for leaf in self.leaves() if isinstance(leaf, SegmentCondition)
        )

    def cluster_refs(self) -> frozenset[str]:
        return frozenset(
            leaf.cluster for leaf in self.leaves() if isinstance(leaf, ClusterCondition)
        )


# --- reading text --------------------------------------------------------------------------------


class _RuleLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` reading only JSON's kinds of data: ``true``/``false`` are the only
    booleans (``NO``, the country, stays text) and dates stay text, as they would in JSON."""


_YAML = "tag:yaml.org,2002:"
_RuleLoader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in (f"{_YAML}bool", f"{_YAML}timestamp", f"{_YAML}value", f"{_YAML}merge")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RuleLoader.add_implicit_resolver(
    f"{_YAML}bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_PLAIN_TAGS = frozenset(f"{_YAML}{kind}" for kind in ("str", "int", "float", "bool", "null"))
_ALLOWED_TAGS = _PLAIN_TAGS | {f"{_YAML}map", f"{_YAML}seq"}
_ID_LINE = re.compile(r"^id\s*:\s*[\"']?([a-z0-9][a-z0-9-]{0,62})[\"']?\s*(?:#.*)?$", re.MULTILINE)


def parse_rule(text: str, *, source: str = "<rule>") -> Rule:
    """Read one rule from its YAML or JSON text, or raise ``RuleError`` naming every problem.

    Only plain data is read (``yaml.SafeLoader``): a tag such as ``!!python/object`` is refused
    before anything is built from the text.
    """
    return _parse(text, source)[0]


def _parse(text: str, source: str) -> tuple[Rule, yaml.Node | None]:
    """The rule and the YAML node tree it came from (to find lines for later problems)."""
    match = _ID_LINE.search(text)  # to name the rule even when its text cannot be read
    rule_id = match.group(1) if match else None
    try:
        data, root = _read(text)
        if isinstance(data, dict) and isinstance(data.get("id"), str):
            rule_id = data["id"]
        return Rule.model_validate(data), root
    except _Unreadable as error:
        problems = [
            RuleProblem.at(rule_id, field, where, message, source)
            for field, where, message in error.found
        ]
    except ValidationError as error:
        problems = []
        for detail in error.errors(include_url=False):
            field, where = _locate(root, detail["loc"])
            problems.append(RuleProblem.at(rule_id, field, where, _message(detail), source))
    except RecursionError:
        problems = [RuleProblem(rule_id, None, None, "the document is nested too deeply", source)]
    raise RuleError(problems)


class _Unreadable(Exception):
    """Text that is not one plain-data document: (field, position, message) of each reason."""

    def __init__(self, *found: tuple[str | None, Position | None, str]) -> None:
        super().__init__(found)
        self.found = found


_NOT_JSON = object()


def _read(text: str) -> tuple[object, yaml.Node | None]:
    """The document's data, and its node tree for lines and columns.

    JSON text is read as JSON, so its numbers (``1e-05``) and escapes (``\\ud83d\\ude00``)
    mean what JSON says; YAML only gives it positions (None when it cannot). Anything else is YAML,
    checked node by node before a SafeLoader builds data from it.
    """
    try:
        data = json.loads(text)
    except ValueError:
        data = _NOT_JSON
    if data is not _NOT_JSON:
        try:
            # In valid JSON every tab is whitespace (tabs in strings are escaped), and YAML
            # refuses tabs as indentation: spaces mean the same.
            root = yaml.compose(text.replace("\t", " "), Loader=_RuleLoader)
        except yaml.YAMLError:
            root = None
    else:
        root = _compose_one(text)
    if root is not None:
        shape = _shape_problems(root, text)
        if shape:
            raise _Unreadable(*shape)
    if data is _NOT_JSON:
        assert root is not None
        loader = _RuleLoader("")
        try:
            data = loader.construct_document(root)
        except (yaml.YAMLError, ValueError, TypeError) as error:
            raise _Unreadable((None, _position(root), f"a value cannot be read: {error}")) from None
        finally:
            loader.dispose()
    if not isinstance(data, dict):
        where = None if root is None else _position(root)
        raise _Unreadable((None, where, "a rule is a mapping of keys such as id, name and when"))
    return data, root


def _compose_one(text: str) -> yaml.Node:
    try:
        documents = list(yaml.compose_all(text, Loader=_RuleLoader))
    except yaml.MarkedYAMLError as error:
        # Where the parser stopped: at the problem, else at what it was reading then.
        mark = error.problem_mark or error.context_mark
        where = None if mark is None else _mark_position(mark)
        context = f" ({error.context})" if error.context else ""
        raise _Unreadable((None, where, f"not valid YAML: {error.problem}{context}")) from None
    except yaml.YAMLError as error:
        raise _Unreadable((None, None, f"not valid YAML: {error}")) from None
    if not documents:
        raise _Unreadable((None, None, "the document is empty: a rule needs id, name and when"))
    if len(documents) > 1:
        raise _Unreadable(
            (
                None,
                _position(documents[1]),
                "one rule per document: a second document starts here",
            )
        )
    return documents[0]


def _mark_position(mark: yaml.Mark) -> Position:
    """A PyYAML mark (0-based line and column, in characters) as a 1-based position."""
    return int(mark.line) + 1, int(mark.column) + 1


def _position(node: yaml.Node) -> Position:
    return _mark_position(node.start_mark)


def _short_tag(tag: str) -> str:
    return "!!" + tag.removeprefix(_YAML) if tag.startswith(_YAML) else tag


def _shape_problems(root: yaml.Node, text: str) -> list[tuple[str | None, Position, str]]:
    """What the data model refuses before anything is built: tags other than plain data,
    aliases (``*name``), keys that are not text, and keys given twice (YAML keeps the last)."""
    found: list[tuple[str | None, Position, str]] = []
    seen: set[int] = set()
    aliased = False
    stack: list[tuple[yaml.Node, Location]] = [(root, ())]
    while stack:
        node, at = stack.pop()
        field = format_path(at) or None
        if id(node) in seen:
            aliased = True
            continue
        seen.add(id(node))
        if node.tag not in _ALLOWED_TAGS:
            found.append(
                (
                    field,
                    _position(node),
                    f"the tag {_short_tag(node.tag)} is not allowed: a rule holds only text, "
                    "numbers, true/false, lists and mappings",
                )
            )
            continue
        if isinstance(node, yaml.SequenceNode):
            stack += [(item, (*at, index)) for index, item in enumerate(node.value)]
        elif isinstance(node, yaml.MappingNode):
            first_line: dict[str, int] = {}
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag not in _PLAIN_TAGS:
                    found.append((field, _position(key), "a key must be plain text"))
                    continue
                if key.value in first_line:
                    found.append(
                        (
                            format_path((*at, key.value)),
                            _position(key),
                            f"the key {key.value!r} is given twice (first on line "
                            f"{first_line[key.value]})",
                        )
                    )
                first_line.setdefault(key.value, _position(key)[0])
                stack.append((value, (*at, key.value)))
    if aliased:
        found += [
            (
                None,
                _mark_position(token.start_mark),
                "aliases (*name) are not supported: write the value out in full",
            )
            for token in yaml.scan(text, Loader=_RuleLoader)
            if isinstance(token, yaml.AliasToken)
        ]
    return sorted(found, key=lambda item: item[1])


def format_path(at: Iterable[str | int]) -> str:
    """``("when", "all", 1, "gte")`` -> ``when.all[1].gte``."""
    text = ""
    for part in at:
        if isinstance(part, int):
            text += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", part):
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text


def _locate(root: yaml.Node | None, loc: Iterable[str | int]) -> tuple[str | None, Position | None]:
    """The field path and the position of a pydantic error location, found by walking the node
    tree: a mapping's value is placed at its key (``gte`` in ``gte: 30 minutes``), a list's
    item where it starts; a location deeper than the text, at the deepest place it has.

    The location names condition kinds by their tags (``when.CountCondition.gte``); the path
    leaves them out, as the document never spells them.
    """
    node: yaml.Node | None = root
    where = None if root is None else _position(root)
    at: list[str | int] = []
    for part in loc:
        if part == "[key]":  # a mapping key was refused: its place is the key's
            continue
        if isinstance(node, yaml.MappingNode):
            entry = _entry(node, part)
            if entry is None and part in _TAGS:
                continue
            at.append(part)
            if entry is None:
                node = None
                continue
            where, node = _position(entry[0]), entry[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            at.append(part)
            if part < len(node.value):
                node = node.value[part]
                where = _position(node)
            else:
                node = None
        elif part not in _TAGS:
            at.append(part)
            node = None
    return (format_path(at) or None), where


def _entry(node: yaml.MappingNode, key: str | int) -> tuple[yaml.Node, yaml.Node] | None:
    """The (key, value) pair of a mapping whose key is ``key``; the last when it is given
    twice, as the data holds the last one."""
    entries = [kv for kv in node.value if kv[0].value == str(key)]
    return entries[-1] if entries else None


_ALL_KEYS = sorted(
    {
        field.alias or name
        for model in (
            *_KINDS,
            EventWindow,
            PropertyWindow,
            EventRef,
            EventSequence,
            FeatureDeclaration,
            Send,
            Action,
            GivenEvent,
            ExpectedTransition,
            Example,
            Rule,
        )
        for name, field in model.model_fields.items()
    }
)


def _message(detail: Mapping[str, object]) -> str:
    """A pydantic error in the words of the document."""
    kind = detail["type"]
    loc = typing.cast(tuple[str | int, ...], detail["loc"])
    given = detail.get("input")
    if kind == "value_error":
        ctx = typing.cast(Mapping[str, object], detail.get("ctx") or {})
        return str(ctx.get("error", detail["msg"]))
    if kind == "missing":
        names = [part for part in loc if isinstance(part, str) and part not in _TAGS]
        return f"{names[-1]!r} is required" if names else "required"
    if kind == "extra_forbidden":
        key = str(loc[-1])
        if key in _ALL_KEYS:  # a word of the language, in the wrong place: no spelling hint
            return f"{key!r} does not belong here"
        close = difflib.get_close_matches(key, _ALL_KEYS, n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{key!r} is not a key here{hint}"
    if kind == _CONDITION_KIND_ERROR and isinstance(given, dict):
        kinds = [key for key in given if key in _TAG_BY_KEY]
        if len(kinds) > 1:
            return f"a condition has one kind, this one has {len(kinds)}: {', '.join(kinds)}"
        keys = ", ".join(repr(key) for key in given) or "no keys"
        return f"{detail['msg']}; this one has {keys}"
    if kind == "too_short":
        return "needs at least one item"
    shown = "" if isinstance(given, dict | list) else f" (got {_describe(given)})"
    return f"{detail['msg']}{shown}"


_PATH_PART = re.compile(r"\[(\d+)\]|\[(['\"])(.*?)\2\]|\.?([A-Za-z_][A-Za-z0-9_-]*)")


def line_of(text: str | None, at: tuple[str | int, ...] | str) -> int | None:
    """The 1-based line of ``position_of``; None where it is None."""
    where = position_of(text, at)
    return None if where is None else where[0]


def position_of(text: str | None, at: tuple[str | int, ...] | str) -> Position | None:
    """The 1-based line and column of the value at ``at`` in a rule's text (``("examples",
    2)`` or the field ``examples[2]``): a mapping's value at its key, a list's item where it
    starts; the nearest enclosing place when ``at`` goes deeper than the text; None without a
    readable text."""
    if text is None:
        return None
    parts = _path_parts(at) if isinstance(at, str) else list(at)
    try:
        # Tabs are one character, as spaces are: columns stay where they were.
        node = yaml.compose(text.replace("\t", " "), Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    if node is None:
        return None
    where = _position(node)
    for part in parts:
        if isinstance(node, yaml.MappingNode):
            entry = _entry(node, part)
            if entry is None:
                break
            where, node = _position(entry[0]), entry[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
            where = _position(node)
        else:
            break
    return where


def _path_parts(field: str) -> list[str | int]:
    parts: list[str | int] = []
    for match in _PATH_PART.finditer(field):
        index, _quote, quoted, name = match.groups()
        parts.append(int(index) if index is not None else quoted if quoted is not None else name)
    return parts


# --- sets of rules -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Origin:
    source: str
    root: yaml.Node | None


def check_rule_set(rules: Iterable[Rule]) -> None:
    """Refuse a set of rules that cannot run together: two rules with one id, a reference to a
    segment no rule keeps, or segments that depend on each other in a cycle."""
    _check_rule_set([(rule, None) for rule in rules])


def load_rules_dir(path: str | os.PathLike[str]) -> list[Rule]:
    """Every ``*.yaml`` / ``*.yml`` rule in a directory, in file-name order, checked as a set.

    Raises ``RuleError`` naming every problem of every file.
    """
    files = sorted(
        entry
        for entry in Path(path).iterdir()
        if entry.suffix in (".yaml", ".yml") and entry.is_file()
    )
    problems: list[RuleProblem] = []
    loaded: list[tuple[Rule, _Origin | None]] = []
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            problems.append(RuleProblem(None, None, None, f"not UTF-8 text: {error}", str(file)))
            continue
        try:
            rule, root = _parse(text, str(file))
        except RuleError as error:
            problems += error.problems
            continue
        loaded.append((rule, _Origin(str(file), root)))
    if problems:
        raise RuleError(problems)
    _check_rule_set(loaded)
    return [rule for rule, _ in loaded]


def _check_rule_set(rules: list[tuple[Rule, _Origin | None]]) -> None:
    def problem(rule: Rule, origin: _Origin | None, at: Location, message: str) -> RuleProblem:
        if origin is None:
            return RuleProblem(rule.id, format_path(at), None, message)
        field, where = _locate(origin.root, at)
        return RuleProblem.at(rule.id, field, where, message, origin.source)

    problems: list[RuleProblem] = []
    first: dict[str, _Origin | None] = {}
    for rule, origin in rules:
        if rule.id in first:
            elsewhere = first[rule.id]
            where = f" (in {elsewhere.source})" if elsewhere else ""
            problems.append(
                problem(rule, origin, ("id",), f"another rule has the id {rule.id!r}{where}")
            )
        else:
            first[rule.id] = origin

    refers: dict[str, dict[str, Location]] = {}  # rule id -> segment it refers to -> where
    for rule, origin in rules:
        for at, node in _walk(rule.when, ("when",)):
            if not isinstance(node, SegmentCondition):
                continue
            if node.segment not in first:
                close = difflib.get_close_matches(node.segment, sorted(first), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                problems.append(
                    problem(
                        rule,
                        origin,
                        (*at, "segment"),
                        f"unknown segment {node.segment!r}: no rule has that id{hint}",
                    )
                )
            else:
                refers.setdefault(rule.id, {}).setdefault(node.segment, (*at, "segment"))

    by_id = {rule.id: (rule, origin) for rule, origin in reversed(rules)}
    for cycle in _cycles({source: set(targets) for source, targets in refers.items()}):
        rule, origin = by_id[cycle[0]]
        problems.append(
            problem(
                rule,
                origin,
                refers[cycle[0]][cycle[1]],
                f"segments refer to each other in a cycle: {' -> '.join(cycle)}",
            )
        )
    if problems:
        raise RuleError(problems)


def _cycles(refers: dict[str, set[str]]) -> list[list[str]]:
    """Cycles of references, each as ``[a, b, a]`` (a refers to b) starting at its least id;
    one per edge removed until none is left, so every cyclic part is named."""
    graph = {source: set(targets) for source, targets in refers.items()}
    found: list[list[str]] = []
    while True:
        try:
            graphlib.TopologicalSorter(graph).prepare()
        except graphlib.CycleError as error:
            cycle: list[str] = list(error.args[1])[:-1]
            if len(cycle) > 1 and cycle[1] not in graph.get(cycle[0], set()):
                cycle.reverse()  # graphlib lists it either way round
            start = cycle.index(min(cycle))
            cycle = cycle[start:] + cycle[:start]
            found.append([*cycle, cycle[0]])
            graph[cycle[0]].discard(cycle[1 % len(cycle)])
        else:
            return found
