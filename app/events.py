"""The event contract: Segment-spec messages in, one canonical ``Event`` out.

Everything that enters Segflow — HTTP calls from the SDKs and ``segflow replay`` files — goes
through ``canonical_fields`` (the ``Event``'s fields as a dict, the hot path), so a message means
the same thing whichever way it came; ``validate_message`` builds the ``Event`` model from it.
"""

from __future__ import annotations

import functools
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Required, TypedDict, get_args

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MessageType = Literal["track", "identify", "page", "screen", "alias", "group"]
MESSAGE_TYPES: tuple[str, ...] = get_args(MessageType)

MAX_MESSAGE_BYTES = 32 * 1024  # Segment's limit per message
MAX_REQUEST_BYTES = 500 * 1024  # Segment's limit per request (a batch)
MAX_ID_CHARS = 1024
MAX_NAME_CHARS = 1024
# Event time never runs ahead of arrival: a timestamp more than FUTURE_TOLERANCE_MS ahead of its
# received_at is taken as received_at (the event keeps the one sent as ``future_timestamp``), so
# no sender's clock can move a watermark or a deadline; one more than MAX_FUTURE_MS ahead is a
# broken clock, refused.
FUTURE_TOLERANCE_MS = 10_000
MAX_FUTURE_MS = 24 * 3600 * 1000
_EPOCH_FLOOR_MS = 0  # 1970-01-01: replays of old public data sets are welcome

# Unicode's control characters (category Cc): C0, DEL and C1 (U+0085 is a line break).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


# An entry of an event stream as the dataflow reads it (JSON): an ``Event``'s fields, or a control
# entry that ``app.streams`` names (``erase``: forget the customer; ``merge``: hand this customer's
# state to ``into``; ``absorb``: take in ``state``, the state of customer ``from``). Typed so
# that mypy checks the dataflow's hot path; the functional form because ``from`` is a keyword.
StreamEntry = TypedDict(
    "StreamEntry",
    {
        "message_id": Required[str],
        "type": Required[str],
        "customer_id": Required[str],
        "timestamp": Required[int],  # event time, ms
        "user_id": str | None,
        "anonymous_id": str | None,
        "previous_id": str | None,
        "group_id": str | None,
        "event": str | None,
        "received_at": int,
        "properties": dict[str, Any],
        "traits": dict[str, Any],
        "context": dict[str, Any],
        "source": str,
        "future_timestamp": int | None,
        "replay": str,  # the lane: a replay's id (absent: the collector's, live)
        "into": str,
        "from": str,
        "state": str,
        "path": list[str],  # an absorb's ids passed on its way (``FeatureShard._on_merged_away``)
    },
    total=False,
)


class InvalidMessage(ValueError):
    """A message that cannot become an ``Event``; ``str()`` says what and where."""


class Event(BaseModel):
    """One behavioural event, as every later stage sees it.

    Times are event time and receive time in milliseconds since the epoch (UTC).
    ``customer_id`` is ``userId`` when given, else ``anonymousId``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    message_id: str
    type: MessageType
    customer_id: str
    user_id: str | None = None
    anonymous_id: str | None = None
    previous_id: str | None = None  # alias: the id being merged into user_id
    group_id: str | None = None
    event: str | None = None  # track: the event name; page / screen: the page name
    timestamp: int  # event time, ms
    received_at: int  # ms
    properties: dict[str, Any] = Field(default_factory=dict)
    traits: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)
    source: str = ""  # the write key's name, or "replay:<format>"
    # the timestamp the sender gave, when it was more than FUTURE_TOLERANCE_MS ahead of
    # received_at (``timestamp`` is then received_at)
    future_timestamp: int | None = None
    replay: str | None = None  # the replay that appended it (its lane); None: the collector's

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump())

    @classmethod
    def from_json(cls, data: bytes | str) -> Event:
        return cls.model_validate(orjson.loads(data))


def _check_identifier(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"{name} must be a string")
    text = str(value)
    if not text.strip():
        raise ValueError(f"{name} must not be empty")
    if len(text) > MAX_ID_CHARS:
        raise ValueError(f"{name} is longer than {MAX_ID_CHARS} characters")
    if _CONTROL.search(text):
        raise ValueError(f"{name} contains control characters")
    return text


class SegmentMessage(BaseModel):
    """The parts of a Segment-spec message that Segflow reads; other keys are ignored."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False)

    type: MessageType
    messageId: str | None = None
    userId: str | None = None
    anonymousId: str | None = None
    previousId: str | None = None
    groupId: str | None = None
    event: str | None = None
    name: str | None = None
    timestamp: str | None = None
    originalTimestamp: str | None = None
    sentAt: str | None = None
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None  # destinations to route to; checked, not used

    @field_validator("userId", "anonymousId", "previousId", "groupId", "messageId", mode="before")
    @classmethod
    def _identifier(cls, value: Any, info: Any) -> str | None:
        return _check_identifier(value, info.field_name)

    @field_validator("event", "name", mode="before")
    @classmethod
    def _name(cls, value: Any, info: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError(f"{info.field_name} must be a string")
        if not value.strip():
            raise ValueError(f"{info.field_name} must not be empty")
        if len(value) > MAX_NAME_CHARS:
            raise ValueError(f"{info.field_name} is longer than {MAX_NAME_CHARS} characters")
        if _CONTROL.search(value):
            raise ValueError(f"{info.field_name} contains control characters")
        return value

    @field_validator("timestamp", "originalTimestamp", "sentAt", mode="before")
    @classmethod
    def _time_text(cls, value: Any, info: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError(f"{info.field_name} must be an ISO-8601 date-time string")
        return value


def parse_time_ms(text: str, field: str) -> int:
    """ISO-8601 to epoch milliseconds; a time without a zone is read as UTC, as Segment does."""
    text = text.strip()
    if _CONTROL.search(text):  # fromisoformat stops reading at a NUL and ignores the rest
        raise InvalidMessage(f"{field}: contains control characters")
    if len(text) > 10 and text[10] == "t":  # RFC 3339 allows lower-case separators
        text = f"{text[:10]}T{text[11:]}"
    if text.endswith("z"):
        text = text[:-1] + "Z"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidMessage(
            f"{field}: {text[:64]!r} is not an ISO-8601 date-time such as 2024-05-01T12:00:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        # Whole-number arithmetic: timestamp() * 1000 in floating point loses a millisecond
        # about once in 160 times, and rounds instants just before 1970 up to 0.
        return (moment - _EPOCH) // _ONE_MS
    except (OverflowError, OSError, ValueError):
        raise InvalidMessage(f"{field}: {text[:64]!r} is out of range") from None


@functools.lru_cache(maxsize=64)
def _shared_time_ms(text: str, field: str) -> int:
    """A batch's ``sentAt``, read once for all its messages (``parse_time_ms`` is pure)."""
    return parse_time_ms(text, field)


def _event_time_ms(message: SegmentMessage, received_at: int, batch_sent_at: str | None) -> int:
    # Every time given is checked, used or not: a broken clock field is a broken message.
    original = _optional_time(message.originalTimestamp, "originalTimestamp")
    sent_at = _optional_time(message.sentAt, "sentAt")
    if sent_at is None and batch_sent_at is not None:
        sent_at = _shared_time_ms(batch_sent_at, "sentAt")
    if message.timestamp is not None:
        when = parse_time_ms(message.timestamp, "timestamp")
    elif original is not None:
        # Segment's clock-skew correction: the device clock may be off, its intervals are not.
        when = original if sent_at is None else received_at - (sent_at - original)
    else:
        when = received_at
    if when < _EPOCH_FLOOR_MS:
        raise InvalidMessage("timestamp: before 1970-01-01")
    if when > received_at + MAX_FUTURE_MS:
        raise InvalidMessage(
            "timestamp: more than 24 hours in the future; is the sender's clock right?"
        )
    return when


def _arrived(when: int, received_at: int) -> tuple[int, int | None]:
    """The event time, and the timestamp sent when it was ahead of arrival (else None)."""
    if when > received_at + FUTURE_TOLERANCE_MS:
        return received_at, when
    return when, None


def _optional_time(text: str | None, field: str) -> int | None:
    return None if text is None else parse_time_ms(text, field)


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"]) or "message"
        what = item["msg"].removeprefix("Value error, ")
        if item["type"] == "literal_error" and where == "type":
            what = "must be one of " + ", ".join(MESSAGE_TYPES)
        elif item["type"] == "dict_type":
            what = "must be an object"
        parts.append(f"{where}: {what}")
    return "; ".join(parts)


def validate_message(
    raw: Any,
    *,
    received_at: int,
    source: str,
    forced_type: str | None = None,
    defaults: dict[str, Any] | None = None,
) -> Event:
    """Turn one Segment-spec message into an ``Event`` or raise ``InvalidMessage``.

    ``forced_type`` is the type an endpoint such as ``/v1/track`` implies; ``defaults`` are a
    batch's shared ``context`` and ``sentAt``.
    """
    return Event.model_validate(
        canonical_fields(
            raw,
            received_at=received_at,
            source=source,
            forced_type=forced_type,
            defaults=defaults,
        )
    )


def canonical_fields(
    raw: Any,
    *,
    received_at: int,
    source: str,
    forced_type: str | None = None,
    defaults: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``validate_message`` without building the model: the ``Event``'s fields as a dict.

    The collector's hot path serializes this dict as it is (several times faster than building
    and dumping a model); ``Event.model_validate`` of it gives the same ``Event``.
    """
    if not isinstance(raw, dict):
        raise InvalidMessage("message: must be a JSON object")
    if forced_type is not None:
        raw = {**raw, "type": forced_type}
    try:
        message = SegmentMessage.model_validate(raw)
    except ValidationError as error:
        raise InvalidMessage(_describe(error)) from None

    defaults = defaults or {}
    if message.type == "alias":
        if message.userId is None or message.previousId is None:
            raise InvalidMessage("alias needs both userId and previousId")
    elif message.userId is None and message.anonymousId is None:
        raise InvalidMessage("userId or anonymousId is required")
    if message.type == "track" and message.event is None:
        raise InvalidMessage("event: required for track")
    if message.type == "group" and message.groupId is None:
        raise InvalidMessage("groupId: required for group")

    customer_id = message.userId if message.userId is not None else message.anonymousId
    assert customer_id is not None
    context = message.context
    shared_context = defaults.get("context")
    if isinstance(shared_context, dict):  # only serialized: shared as it is when alone
        context = shared_context if context is None else {**shared_context, **context}
    traits = message.traits
    if traits is None and context and isinstance(context.get("traits"), dict):
        traits = context["traits"]
    sent_at = defaults.get("sentAt")
    batch_sent_at = sent_at if isinstance(sent_at, str) else None
    when, future = _arrived(_event_time_ms(message, received_at, batch_sent_at), received_at)
    fields = {  # Event's fields, in its order
        "message_id": message.messageId or str(uuid.uuid4()),
        "type": message.type,
        "customer_id": customer_id,
        "user_id": message.userId,
        "anonymous_id": message.anonymousId,
        "previous_id": message.previousId,
        "group_id": message.groupId,
        "event": message.event if message.type == "track" else message.name,
        "timestamp": when,
        "received_at": received_at,
        "properties": message.properties or {},
        "traits": traits or {},
        "context": context or {},
        "source": source,
    }
    if future is not None:
        fields["future_timestamp"] = future
    return fields
