"""Shared hypothesis strategies: Segment-spec messages (valid and broken), their timestamps and ids;
valid rule condition trees and rules.

Each valid message comes with what Segflow should make of it, computed here from the parts the
message was built from, never by asking the code under test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from app.features import BUILTIN_INPUTS
from app.rules import schema as rules

RECEIVED_AT = 1_893_456_000_000  # 2030-01-01T00:00:00Z: the collector's clock in these tests
DAY_MS = 86_400_000
MESSAGE_TYPES = ("track", "identify", "page", "screen", "alias", "group")
ID_FIELDS = ("userId", "anonymousId", "previousId", "groupId", "messageId")
NAME_FIELDS = ("event", "name")
TIME_FIELDS = ("timestamp", "originalTimestamp", "sentAt")
OBJECT_FIELDS = ("properties", "traits", "context")
# The control characters Segflow rejects in ids and names: C0 and DEL.
C0_CONTROLS = (*(chr(code) for code in range(0x20)), "\x7f")

_NAIVE_EPOCH = datetime(1970, 1, 1)

# Any character JSON can carry (lone surrogates cannot come out of a JSON parser).
json_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
# Ids and names as people write them: any script, no control characters, not blank.
_visible = st.characters(exclude_categories=["Cc", "Cs"])
identifiers = st.text(_visible, min_size=1, max_size=24).filter(lambda text: text.strip() != "")
names = identifiers

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | json_text
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(json_text, children, max_size=4)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(json_text, json_values, max_size=5)


@dataclass(frozen=True)
class IsoTime:
    """An ISO-8601 date-time as a sender writes it, and the instant it names."""

    text: str
    epoch_ms: int


def _zone_suffix(offset_minutes: int | None, utc_spelling: str) -> str:
    if offset_minutes is None:
        return ""  # no zone: Segment reads it as UTC
    if offset_minutes == 0:
        return utc_spelling
    sign = "+" if offset_minutes > 0 else "-"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return f"{sign}{hours:02d}:{minutes:02d}"


@st.composite
def iso_times(
    draw: st.DrawFn,
    *,
    min_ms: int = 0,
    max_ms: int = RECEIVED_AT + DAY_MS,
    millis: bool = False,
) -> IsoTime:
    """A date-time between ``min_ms`` and ``max_ms``, with a zone offset, ``Z`` or no zone.

    Without ``millis`` the instant is a whole second (written with or without ``.000``).
    """
    epoch_ms = draw(st.integers(min_value=min_ms, max_value=max_ms))
    if not millis:
        epoch_ms -= epoch_ms % 1000
        if epoch_ms < min_ms:
            epoch_ms += 1000
    offset_minutes = draw(
        st.none()
        | st.just(0)
        | st.builds(
            lambda hours, minutes: hours * 60 + (minutes if hours >= 0 else -minutes),
            st.integers(min_value=-12, max_value=14),
            st.sampled_from([0, 30, 45]),
        )
    )
    wall = _NAIVE_EPOCH + timedelta(milliseconds=epoch_ms + 60_000 * (offset_minutes or 0))
    fraction = draw(
        st.sampled_from([f".{epoch_ms % 1000:03d}", f".{epoch_ms % 1000:03d}000"])
        if millis or draw(st.booleans())
        else st.just("")
    )
    zone = _zone_suffix(offset_minutes, draw(st.sampled_from(["Z", "+00:00"])))
    return IsoTime(wall.strftime("%Y-%m-%dT%H:%M:%S") + fraction + zone, epoch_ms)


@dataclass(frozen=True)
class SegmentCase:
    """A valid Segment-spec message and the Event fields it must produce."""

    message: dict[str, Any]
    customer_id: str
    event: str | None
    timestamp_ms: int  # with the collector's clock at RECEIVED_AT


@st.composite
def segment_messages(
    draw: st.DrawFn, *, types: tuple[str, ...] = MESSAGE_TYPES, millis: bool = False
) -> SegmentCase:
    """A valid message of any type, with the optional parts Segment's SDKs send."""
    kind = draw(st.sampled_from(types))
    message: dict[str, Any] = {"type": kind}

    user_id = draw(st.none() | identifiers)
    anonymous_id = draw(st.none() | identifiers)
    if kind == "alias":
        if user_id is None:
            user_id = draw(identifiers)
        message["previousId"] = draw(identifiers)
    elif user_id is None and anonymous_id is None:
        if draw(st.booleans()):
            user_id = draw(identifiers)
        else:
            anonymous_id = draw(identifiers)
    if user_id is not None:
        message["userId"] = user_id
    if anonymous_id is not None:
        message["anonymousId"] = anonymous_id
    customer_id = user_id if user_id is not None else anonymous_id
    assert customer_id is not None

    event: str | None = None
    if kind == "track":
        event = message["event"] = draw(names)
    elif kind in ("page", "screen"):
        event = draw(st.none() | names)
        if event is not None:
            message["name"] = event
    if kind == "group":
        message["groupId"] = draw(identifiers)

    if kind in ("track", "page", "screen") and draw(st.booleans()):
        message["properties"] = draw(json_objects)
    if kind in ("identify", "group") and draw(st.booleans()):
        message["traits"] = draw(json_objects)
    if draw(st.booleans()):
        message["context"] = draw(json_objects)
    if draw(st.booleans()):
        message["messageId"] = draw(identifiers)
    if draw(st.booleans()):
        message["integrations"] = {"All": True}  # read by Segment, ignored by Segflow

    when = draw(st.sampled_from(["timestamp", "originalTimestamp", None]))
    timestamp_ms = RECEIVED_AT  # no time given: the message happened when it arrived
    if when is not None:
        moment = draw(iso_times(millis=millis))
        message[when] = moment.text
        timestamp_ms = moment.epoch_ms
    return SegmentCase(message, customer_id, event, timestamp_ms)


def wrong_values_for(field: str) -> st.SearchStrategy[Any]:
    """JSON values of a type ``field`` never takes (``None`` is absent, so it is allowed)."""
    containers = st.lists(json_scalars, max_size=3) | st.dictionaries(
        json_text, json_scalars, max_size=3
    )
    floats = st.floats(allow_nan=False, allow_infinity=False)
    if field == "type":
        return json_values.filter(lambda value: value not in MESSAGE_TYPES)
    if field in ID_FIELDS:  # strings and whole numbers are ids
        return st.booleans() | floats | containers
    if field in NAME_FIELDS or field in TIME_FIELDS:
        return st.booleans() | st.integers() | floats | containers
    if field in OBJECT_FIELDS:
        return st.booleans() | st.integers() | floats | json_text | st.lists(json_scalars)
    raise ValueError(f"no wrong values known for {field}")


# --- rules (app.rules.schema) ---------------------------------------------------------------------

# Names as marketers type them: visible characters, no spaces at either end.
rule_texts = st.text(_visible, min_size=1, max_size=16).filter(lambda text: text == text.strip())
rule_event_names = (
    st.sampled_from(["Product Viewed", "Product Added", "Order Completed", "Checkout Started"])
    | rule_texts
)
rule_ids = st.from_regex(r"[a-z0-9][a-z0-9-]{0,20}", fullmatch=True)
rule_scalars = (
    st.booleans()
    | st.integers(min_value=-(10**12), max_value=10**12)
    | st.floats(allow_nan=False, allow_infinity=False)
    | rule_texts
)
rule_numbers = st.integers(min_value=-(10**9), max_value=10**9) | st.floats(
    min_value=-1e9, max_value=1e9, allow_nan=False
)
# Windows as people write them (10m, 24h, 30d) and any exact millisecond count up to 400 days.
rule_windows_ms = st.sampled_from([600_000, 86_400_000, 30 * DAY_MS, 90 * DAY_MS]) | st.integers(
    min_value=1, max_value=rules.MAX_WINDOW_MS
)
rule_patterns = st.sampled_from(["^gold$", "pro|plus", r"\d+", "a.*b", "(?i)vip"])
_where_maps = st.dictionaries(rule_texts, rule_scalars, max_size=2)


@st.composite
def _bounds(
    draw: st.DrawFn, values: st.SearchStrategy[Any], *, floor: int | None
) -> dict[str, Any]:
    """A lower and/or an upper bound that some value satisfies (``floor``: the least value
    there is, so ``lt`` stays above it)."""
    low_op = draw(st.sampled_from([None, "gt", "gte"]))
    high_op = draw(st.sampled_from([None, "lt", "lte"]))
    low, high = sorted([draw(values), draw(values)])
    if low == high:
        low_op = low_op and "gte"
        high_op = high_op and "lte"
    if high_op == "lt" and floor is not None and high <= floor:
        high = floor + 1
    found = {}
    if low_op:
        found[low_op] = low
    if high_op:
        found[high_op] = high
    return found


@st.composite
def comparisons(draw: st.DrawFn, kind: rules.ValueKind) -> dict[str, Any]:
    """One or more comparators that can hold, for a leaf whose value is of ``kind``."""
    if kind == "any":
        values: st.SearchStrategy[Any] = rule_scalars
        ordered: st.SearchStrategy[Any] = rule_numbers
        floor = None
    elif kind == "number":
        values = ordered = rule_numbers
        floor = None
    else:  # counts and durations (milliseconds) are never negative
        values = ordered = st.integers(min_value=0, max_value=10**9)
        floor = 0
    found: dict[str, Any] = draw(_bounds(ordered, floor=floor))
    for word in ("eq", "ne"):
        if draw(st.booleans()):
            found[word] = draw(values)
    if draw(st.booleans()):
        found["in_"] = tuple(draw(st.lists(values, min_size=1, max_size=3)))
    if kind == "any" and draw(st.booleans()):
        found["contains"] = draw(rule_scalars)
    if kind == "any" and draw(st.booleans()):
        found["matches"] = draw(rule_patterns)
    if not found:
        found["eq" if kind == "any" else "gte"] = draw(values)
    return found


def _event_windows(*, prop: bool) -> st.SearchStrategy[rules.EventWindow]:
    within = st.none() | rule_windows_ms
    if prop:
        return st.builds(
            rules.PropertyWindow,
            event=rule_event_names,
            within=within,
            where=_where_maps,
            **{"property": rule_texts},
        )
    return st.builds(rules.EventWindow, event=rule_event_names, within=within, where=_where_maps)


_event_sequences = st.builds(
    rules.EventSequence,
    steps=st.lists(rule_event_names, min_size=2, max_size=4).map(tuple),
    within=rule_windows_ms,
    same=st.lists(rule_texts, max_size=2).map(tuple),
    in_last=st.none() | rule_windows_ms,
)


def condition_leaves(
    feature_names: Sequence[str] = tuple(sorted(BUILTIN_INPUTS)),
) -> st.SearchStrategy[rules.Leaf]:
    """Any valid leaf; ``feature:`` leaves name one of ``feature_names``."""

    def compared(kind: type[Any], **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.builds(
            lambda given, found: kind(**given, **found),
            st.fixed_dictionaries(fields),
            comparisons(kind.value_kind),
        )

    def feature_leaf(name: str) -> st.SearchStrategy[Any]:  # a numeric built-in: numbers
        numeric = name in rules.BUILTIN_FEATURES and name not in rules.TEXT_BUILTINS
        return st.builds(
            lambda found: rules.FeatureCondition(feature=name, **found),
            comparisons("number" if numeric else "any"),
        )

    return st.one_of(
        st.sampled_from(list(feature_names)).flatmap(feature_leaf),
        compared(rules.CountCondition, count=_event_windows(prop=False)),
        compared(rules.SumCondition, sum=_event_windows(prop=True)),
        compared(rules.MinCondition, min=_event_windows(prop=True)),
        compared(rules.MaxCondition, max=_event_windows(prop=True)),
        compared(rules.DistinctCondition, distinct=_event_windows(prop=True)),
        compared(rules.SinceCondition, since=st.builds(rules.EventRef, event=rule_event_names)),
        compared(rules.TraitCondition, trait=rule_texts),
        st.builds(rules.SegmentCondition, segment=rule_ids),
        st.builds(rules.ClusterCondition, cluster=rule_texts),
        st.builds(rules.SequenceCondition, sequence=_event_sequences),
    )


def conditions(
    feature_names: Sequence[str] = tuple(sorted(BUILTIN_INPUTS)),
) -> st.SearchStrategy[rules.ConditionNode]:
    """Valid condition trees: leaves under all / any / not, nested a few levels."""
    return st.recursive(
        condition_leaves(feature_names),
        lambda children: (
            st.builds(rules.All, all=st.lists(children, min_size=1, max_size=3).map(tuple))
            | st.builds(rules.Any, any=st.lists(children, min_size=1, max_size=3).map(tuple))
            | st.builds(rules.Not, not_=children)
        ),
        max_leaves=8,
    )


_declared_features = st.one_of(
    st.builds(rules.FeatureDeclaration, count=_event_windows(prop=False)),
    st.builds(rules.FeatureDeclaration, sum=_event_windows(prop=True)),
    st.builds(rules.FeatureDeclaration, distinct=_event_windows(prop=True)),
    st.builds(rules.FeatureDeclaration, since=st.builds(rules.EventRef, event=rule_event_names)),
    st.builds(rules.FeatureDeclaration, sequence=_event_sequences),
)


@st.composite
def rule_models(draw: st.DrawFn) -> rules.Rule:
    """A valid rule, with declared features its condition may read, actions and examples."""
    declared = draw(
        st.dictionaries(
            st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True).filter(
                lambda name: name not in BUILTIN_INPUTS
            ),
            _declared_features,
            max_size=2,
        )
    )
    names = tuple(sorted(BUILTIN_INPUTS)) + tuple(declared)
    given = st.builds(
        rules.GivenEvent,
        at=st.integers(min_value=0, max_value=400 * DAY_MS),
        event=rule_event_names,
        properties=st.dictionaries(rule_texts, rule_scalars, max_size=2),
        customer=rule_texts,
    )
    identify = st.builds(
        rules.GivenEvent,
        at=st.integers(min_value=0, max_value=400 * DAY_MS),
        type=st.just("identify"),
        traits=st.dictionaries(rule_texts, rule_scalars, min_size=1, max_size=2),
    )
    expected = st.builds(
        rules.ExpectedTransition,
        at=st.integers(min_value=0, max_value=400 * DAY_MS),
        kind=st.sampled_from(["enter", "exit"]),
    )
    example = st.builds(
        rules.Example,
        name=st.none() | rule_texts,
        given=st.lists(given | identify, min_size=1, max_size=3).map(tuple),
        expect=st.lists(expected, max_size=2).map(tuple),
    )
    action = st.builds(
        rules.Action,
        send=st.builds(rules.Send, destination=rule_texts, template=rule_texts),
    )
    return rules.Rule(
        id=draw(rule_ids),
        name=draw(rule_texts),
        description=draw(st.text(_visible, max_size=40)),
        enabled=draw(st.booleans()),
        features=declared,
        when=draw(conditions(names)),
        on_enter=tuple(draw(st.lists(action, max_size=2))),
        on_exit=tuple(draw(st.lists(action, max_size=1))),
        examples=tuple(draw(st.lists(example, max_size=2))),
    )
