"""Shared hypothesis strategies: Segment-spec messages (valid and broken), their timestamps and ids.

Each valid message comes with what Segflow should make of it, computed here from the parts the
message was built from, never by asking the code under test.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from hypothesis import strategies as st

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
