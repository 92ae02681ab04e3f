"""The event contract: which Segment messages become which Events, and how the rest is refused."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.events import FUTURE_TOLERANCE_MS, Event, InvalidMessage, validate_message
from tests.factories import iso
from tests.strategies import (
    C0_CONTROLS,
    DAY_MS,
    ID_FIELDS,
    MESSAGE_TYPES,
    NAME_FIELDS,
    OBJECT_FIELDS,
    RECEIVED_AT,
    TIME_FIELDS,
    IsoTime,
    SegmentCase,
    identifiers,
    iso_times,
    json_objects,
    json_values,
    names,
    segment_messages,
    wrong_values_for,
)

MAY_1_NOON = 1_714_564_800_000  # 2024-05-01T12:00:00Z


def validate(raw: Any, **options: Any) -> Event:
    options.setdefault("received_at", RECEIVED_AT)
    options.setdefault("source", "shop")
    return validate_message(raw, **options)


def refusal(raw: Any, **options: Any) -> str:
    """The reason ``raw`` is refused; fails the test if it is accepted."""
    with pytest.raises(InvalidMessage) as caught:
        validate(raw, **options)
    return str(caught.value)


def track(**fields: Any) -> dict[str, Any]:
    return {"type": "track", "userId": "u1", "event": "Product Viewed", **fields}


# --- valid messages ------------------------------------------------------------------------------


@settings(max_examples=200)
@given(segment_messages(millis=True))
def test_a_valid_message_becomes_the_event_it_describes(case: SegmentCase) -> None:
    message = case.message
    event = validate(message, source="shop")

    assert event.type == message["type"]
    assert event.customer_id == case.customer_id
    assert event.user_id == message.get("userId")
    assert event.anonymous_id == message.get("anonymousId")
    assert event.previous_id == message.get("previousId")
    assert event.group_id == message.get("groupId")
    assert event.event == case.event
    ahead = case.timestamp_ms > RECEIVED_AT + FUTURE_TOLERANCE_MS  # taken as its arrival
    assert event.timestamp == (RECEIVED_AT if ahead else case.timestamp_ms)
    assert event.future_timestamp == (case.timestamp_ms if ahead else None)
    assert event.received_at == RECEIVED_AT
    assert event.properties == message.get("properties", {})
    assert event.context == message.get("context", {})
    if "traits" in message:
        assert event.traits == message["traits"]
    if "messageId" in message:
        assert event.message_id == message["messageId"]
    assert event.source == "shop"


@settings(max_examples=200)
@given(segment_messages())
def test_an_event_survives_its_json_unchanged(case: SegmentCase) -> None:
    event = validate(case.message)

    again = Event.from_json(event.to_json())

    assert again == event
    assert again.model_dump() == event.model_dump()


@pytest.mark.parametrize(
    ("text", "epoch_ms"),
    [
        ("2024-05-01T12:00:00Z", MAY_1_NOON),
        ("2024-05-01T12:00:00.000Z", MAY_1_NOON),
        ("2024-05-01T12:00:00", MAY_1_NOON),  # no zone: UTC, as Segment reads it
        ("2024-05-01T14:00:00+02:00", MAY_1_NOON),
        ("2024-05-01T06:30:00-05:30", MAY_1_NOON),
        ("2024-05-01T12:00:00.500Z", MAY_1_NOON + 500),
        ("1970-01-01T00:00:00Z", 0),
        ("1969-12-31T23:00:00-01:00", 0),
    ],
)
def test_timestamps_are_read_as_the_instant_they_name(text: str, epoch_ms: int) -> None:
    assert validate(track(timestamp=text)).timestamp == epoch_ms


@pytest.mark.parametrize(
    ("text", "epoch_ms"),
    [
        ("1987-02-13T09:39:58.254Z", 540_207_598_254),
        ("2004-03-17T14:05:25.840Z", 1_079_532_325_840),
        ("1987-03-07T16:28:53.073+00:00", 542_132_933_073),
    ],
)
def test_millisecond_timestamps_keep_their_millisecond(text: str, epoch_ms: int) -> None:
    assert validate(track(timestamp=text)).timestamp == epoch_ms


def test_a_message_without_any_time_happened_when_it_arrived() -> None:
    assert validate(track()).timestamp == RECEIVED_AT


def test_a_timestamp_exactly_24_hours_ahead_is_still_accepted_as_its_arrival() -> None:
    event = validate(track(timestamp="2024-05-02T12:00:00Z"), received_at=MAY_1_NOON)

    assert event.timestamp == MAY_1_NOON
    assert event.future_timestamp == MAY_1_NOON + DAY_MS


def test_numeric_ids_are_kept_as_text() -> None:
    event = validate({"type": "identify", "userId": 42, "messageId": 7})

    assert (event.customer_id, event.user_id, event.message_id) == ("42", "42", "7")


def test_identify_without_traits_takes_the_traits_from_its_context() -> None:
    event = validate({"type": "identify", "userId": "u1", "context": {"traits": {"plan": "pro"}}})

    assert event.traits == {"plan": "pro"}


def test_identify_traits_win_over_context_traits() -> None:
    message = {
        "type": "identify",
        "userId": "u1",
        "traits": {"plan": "pro"},
        "context": {"traits": {"plan": "free"}},
    }

    assert validate(message).traits == {"plan": "pro"}


# --- clock-skew correction -----------------------------------------------------------------------
# The device wrote originalTimestamp and sentAt with its own clock; the collector trusts the
# interval between them, not the clock: timestamp = receivedAt - (sentAt - originalTimestamp).


def test_clock_skew_is_corrected_with_the_message_sent_at() -> None:
    message = track(
        originalTimestamp="2024-05-01T12:00:00Z", sentAt="2024-05-01T12:00:05.250Z"
    )  # happened 5.25 s before it was sent

    event = validate(message, received_at=MAY_1_NOON + 3_600_000)  # device clock an hour slow

    assert event.timestamp == MAY_1_NOON + 3_600_000 - 5_250


def test_clock_skew_is_corrected_with_the_batch_sent_at() -> None:
    message = track(originalTimestamp="2024-05-01T11:59:00Z")
    defaults = {"sentAt": "2024-05-01T12:00:00Z", "context": None}

    event = validate(message, received_at=MAY_1_NOON + 10_000, defaults=defaults)

    assert event.timestamp == MAY_1_NOON + 10_000 - 60_000


def test_the_message_sent_at_wins_over_the_batch_sent_at() -> None:
    message = track(originalTimestamp="2024-05-01T11:59:00Z", sentAt="2024-05-01T11:59:30Z")
    defaults = {"sentAt": "2024-05-01T12:00:00Z"}

    event = validate(message, received_at=MAY_1_NOON, defaults=defaults)

    assert event.timestamp == MAY_1_NOON - 30_000


def test_original_timestamp_without_sent_at_is_taken_as_written() -> None:
    event = validate(track(originalTimestamp="2024-05-01T12:00:00Z"), received_at=RECEIVED_AT)

    assert event.timestamp == MAY_1_NOON


def test_a_given_timestamp_is_not_corrected_for_skew() -> None:
    message = track(
        timestamp="2024-05-01T12:00:00Z",
        originalTimestamp="2024-05-01T08:00:00Z",
        sentAt="2024-05-01T09:00:00Z",
    )

    assert validate(message, received_at=RECEIVED_AT).timestamp == MAY_1_NOON


def test_a_corrected_time_more_than_24_hours_ahead_is_refused() -> None:
    # The sentAt is a day *before* the originalTimestamp: the correction lands in the future.
    message = track(originalTimestamp="2024-05-02T12:00:01Z", sentAt="2024-05-01T12:00:00Z")

    assert "timestamp" in refusal(message, received_at=MAY_1_NOON)


# --- messageId, forced type, batch defaults ------------------------------------------------------


def test_a_message_id_is_generated_when_absent() -> None:
    first, second = validate(track()), validate(track())

    assert first.message_id != second.message_id
    assert uuid.UUID(first.message_id)  # a fresh UUID, not derived from the content


def test_a_given_message_id_is_kept() -> None:
    assert validate(track(messageId="abc-123")).message_id == "abc-123"


def test_the_endpoint_type_overrides_the_body_type() -> None:
    message = {"type": "identify", "userId": "u1", "event": "Signed Up"}

    event = validate(message, forced_type="track")

    assert (event.type, event.event) == ("track", "Signed Up")


def test_the_endpoint_type_fills_in_a_missing_type() -> None:
    event = validate({"anonymousId": "a1", "name": "Home"}, forced_type="page")

    assert (event.type, event.event, event.customer_id) == ("page", "Home", "a1")


def test_the_endpoint_type_applies_its_own_requirements() -> None:
    assert "event" in refusal({"type": "track", "userId": "u1"}, forced_type="track")
    assert "groupId" in refusal({"type": "track", "userId": "u1"}, forced_type="group")


def test_batch_context_merges_under_the_message_context() -> None:
    defaults = {"context": {"library": {"name": "analytics-python"}, "ip": "10.0.0.1"}}
    message = track(context={"ip": "192.0.2.7", "locale": "de-DE"})

    event = validate(message, defaults=defaults)

    assert event.context == {
        "library": {"name": "analytics-python"},
        "ip": "192.0.2.7",
        "locale": "de-DE",
    }


def test_batch_context_applies_to_messages_without_context() -> None:
    event = validate(track(), defaults={"context": {"ip": "10.0.0.1"}})

    assert event.context == {"ip": "10.0.0.1"}


def test_batch_context_traits_fill_in_identify_traits() -> None:
    defaults = {"context": {"traits": {"email": "ada@example.com"}}}

    event = validate({"type": "identify", "userId": "u1"}, defaults=defaults)

    assert event.traits == {"email": "ada@example.com"}


# --- refused messages ----------------------------------------------------------------------------


@settings(max_examples=200)
@given(json_values.filter(lambda value: not isinstance(value, dict)))
def test_anything_but_a_json_object_is_refused(raw: Any) -> None:
    assert "message" in refusal(raw)


@settings(max_examples=200)
@given(
    st.dictionaries(
        st.sampled_from(["type", *ID_FIELDS, *NAME_FIELDS, *TIME_FIELDS, *OBJECT_FIELDS])
        | st.text(max_size=8),
        json_values,
        max_size=8,
    ),
    st.none() | st.sampled_from(MESSAGE_TYPES),
    st.none() | json_objects,
)
def test_arbitrary_json_is_accepted_or_refused_with_invalid_message(
    raw: dict[str, Any], forced_type: str | None, defaults: dict[str, Any] | None
) -> None:
    try:
        event = validate(raw, forced_type=forced_type, defaults=defaults)
    except InvalidMessage:
        return  # refused, and with the one exception type the collector catches
    assert event.customer_id


@settings(max_examples=200)
@given(
    segment_messages(),
    st.sampled_from(["type", *ID_FIELDS, *NAME_FIELDS, *TIME_FIELDS, *OBJECT_FIELDS]).flatmap(
        lambda field: st.tuples(st.just(field), wrong_values_for(field))
    ),
)
def test_a_field_of_the_wrong_type_is_refused_by_name(
    case: SegmentCase, wrong: tuple[str, Any]
) -> None:
    field, value = wrong

    reason = refusal({**case.message, field: value})

    assert f"{field}:" in reason


@settings(max_examples=100)
@given(segment_messages(), st.sampled_from(ID_FIELDS), st.sampled_from(["", " ", "\t", "x" * 1025]))
def test_blank_or_overlong_ids_are_refused_by_name(
    case: SegmentCase, field: str, value: str
) -> None:
    assert f"{field}:" in refusal({**case.message, field: value})


@settings(max_examples=100)
@given(segment_messages(), st.sampled_from(NAME_FIELDS), st.sampled_from(["", "  ", "n" * 1025]))
def test_blank_or_overlong_names_are_refused_by_name(
    case: SegmentCase, field: str, value: str
) -> None:
    assert f"{field}:" in refusal({**case.message, field: value})


@st.composite
def _with_control_character(draw: st.DrawFn, text: st.SearchStrategy[str]) -> str:
    value = draw(text)
    at = draw(st.integers(min_value=0, max_value=len(value)))
    return value[:at] + draw(st.sampled_from(C0_CONTROLS)) + value[at:]


@settings(max_examples=200)
@given(
    segment_messages(),
    st.sampled_from(ID_FIELDS + NAME_FIELDS),
    _with_control_character(identifiers),
)
def test_control_characters_in_ids_and_names_are_refused_by_name(
    case: SegmentCase, field: str, value: str
) -> None:
    reason = refusal({**case.message, field: value})

    assert f"{field}:" in reason
    assert "control" in reason


@pytest.mark.parametrize("control", ["\x85", "\x9b"])
@pytest.mark.parametrize("field", ["userId", "event"])
def test_c1_control_characters_are_refused_too(control: str, field: str) -> None:
    assert f"{field}:" in refusal(track(**{field: f"a{control}b"}))


@pytest.mark.parametrize(
    ("message", "named"),
    [
        ({"type": "track", "event": "Product Viewed"}, "userId"),
        ({"type": "identify", "traits": {"plan": "pro"}}, "anonymousId"),
        ({"type": "page", "userId": None, "anonymousId": None}, "userId"),
        ({"type": "alias", "previousId": "anon-1"}, "userId"),
        ({"type": "alias", "userId": "u1", "anonymousId": "anon-1"}, "previousId"),
        ({"type": "track", "userId": "u1"}, "event"),
        ({"type": "group", "userId": "u1"}, "groupId"),
        ({"userId": "u1", "event": "Product Viewed"}, "type"),
        ({"type": "purchase", "userId": "u1"}, "type"),
    ],
)
def test_missing_required_fields_are_refused_by_name(message: dict[str, Any], named: str) -> None:
    assert named in refusal(message)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "yesterday",
        "1714564800000",  # epoch milliseconds as text
        "2024-13-01T00:00:00Z",
        "2024-02-30T00:00:00Z",
        "2024-05-01T24:00:01Z",
        "2024-05-01T23:59:60Z",  # leap seconds are not ISO date-times Python reads
        "2024-05-01T12:00:00+25:00",
        "2024-05-01T12:00:00 UTC",
        "0001-01-01T00:00:00+00:01",  # before year 1 in UTC
        "9999-12-31T23:59:59-23:59",  # after year 9999 in UTC
        "1969-12-31T23:59:59Z",
    ],
)
@pytest.mark.parametrize("field", ["timestamp", "originalTimestamp"])
def test_bad_timestamps_are_refused_by_name(text: str, field: str) -> None:
    reason = refusal(track(**{field: text}))

    assert "timestamp" in reason.lower()


@pytest.mark.parametrize("text", ["2024-05-01T12:00:00\x00", "2024-05-01T12:00:00Z\x00junk"])
def test_timestamps_with_an_embedded_nul_are_refused(text: str) -> None:
    assert "timestamp" in refusal(track(timestamp=text))


@pytest.mark.parametrize("text", ["soon", "2024-05-01T12:00:00 UTC", ""])
def test_a_bad_sent_at_is_refused_by_name(text: str) -> None:
    message = track(originalTimestamp="2024-05-01T12:00:00Z", sentAt=text)

    assert "sentAt" in refusal(message)


def test_a_bad_batch_sent_at_is_refused_by_name() -> None:
    message = track(originalTimestamp="2024-05-01T12:00:00Z")

    assert "sentAt" in refusal(message, defaults={"sentAt": "soon"})


def test_an_instant_just_before_1970_is_refused() -> None:
    assert "1970" in refusal(track(timestamp="1969-12-31T23:59:59.999500Z"))


@settings(max_examples=200)
@given(
    st.sampled_from(["timestamp", "originalTimestamp"]),
    iso_times(min_ms=RECEIVED_AT + FUTURE_TOLERANCE_MS + 1, max_ms=RECEIVED_AT + DAY_MS),
)
def test_a_time_ahead_of_arrival_is_taken_as_arrival_and_kept_as_sent(
    field: str, when: IsoTime
) -> None:
    event = validate(track(**{field: when.text}))

    assert event.timestamp == event.received_at == RECEIVED_AT
    assert event.future_timestamp == when.epoch_ms


def test_a_time_within_the_tolerance_ahead_stays_as_sent() -> None:
    ahead = RECEIVED_AT + FUTURE_TOLERANCE_MS
    event = validate(track(timestamp=iso(ahead)))

    assert event.timestamp == ahead
    assert event.future_timestamp is None


@settings(max_examples=200)
@given(
    st.sampled_from(["timestamp", "originalTimestamp"]),
    iso_times(min_ms=RECEIVED_AT + DAY_MS + 1000, max_ms=RECEIVED_AT + 3650 * DAY_MS),
)
def test_times_more_than_24_hours_ahead_are_refused(field: str, when: IsoTime) -> None:
    reason = refusal(track(**{field: when.text}))

    assert "timestamp" in reason
    assert "future" in reason


@given(names)
def test_page_and_screen_names_become_the_event(name: str) -> None:
    page = validate({"type": "page", "userId": "u1", "name": name})
    screen = validate({"type": "screen", "anonymousId": "a1", "name": name})

    assert page.event == screen.event == name
