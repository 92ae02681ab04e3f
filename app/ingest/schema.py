"""The collector's request bodies as JSON Schema, for the OpenAPI document.

Written by hand to say what ``app.events.canonical_fields`` accepts, type by type (the ids each
type needs, ``event`` for track, ``groupId`` for group), so clients and fuzzers see the contract.
What a schema cannot say (a timestamp more than 24 h ahead) is answered per message at run time.
"""

from __future__ import annotations

from typing import Any

from app.events import MAX_ID_CHARS, MAX_NAME_CHARS

_VISIBLE = (
    r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
)

_ID_TEXT: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_ID_CHARS,
    "pattern": _VISIBLE,
}
_ID: dict[str, Any] = {"anyOf": [_ID_TEXT, {"type": "integer"}]}
_OPTIONAL_ID: dict[str, Any] = {"anyOf": [_ID_TEXT, {"type": "integer"}, {"type": "null"}]}
_NAME: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_NAME_CHARS,
    "pattern": _VISIBLE,
}
_TIME: dict[str, Any] = {
    "anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}],
    "description": "ISO-8601; without a zone it is UTC. Missing: the receive time.",
}
_WRITE_KEY: dict[str, Any] = {
    "anyOf": [{"type": "string"}, {"type": "null"}],
    "description": "The write key, when not sent as the basic-auth user.",
}
_OBJECT: dict[str, Any] = {"anyOf": [{"type": "object"}, {"type": "null"}]}

_COMMON: dict[str, Any] = {
    "messageId": _OPTIONAL_ID,
    "userId": _OPTIONAL_ID,
    "anonymousId": _OPTIONAL_ID,
    "timestamp": _TIME,
    "originalTimestamp": _TIME,
    "sentAt": _TIME,
    "properties": _OBJECT,
    "traits": _OBJECT,
    "context": _OBJECT,
    "integrations": _OBJECT,
}
_SOME_ID: list[dict[str, Any]] = [
    {"required": ["userId"], "properties": {"userId": _ID}},
    {"required": ["anonymousId"], "properties": {"anonymousId": _ID}},
]


def message_schema(message_type: str) -> dict[str, Any]:
    """One message of ``message_type``, as its single-message call takes it."""
    properties = dict(_COMMON)
    required: list[str] = []
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if message_type == "track":
        properties["event"] = _NAME
        required.append("event")
    if message_type in ("page", "screen"):
        properties["name"] = {"anyOf": [_NAME, {"type": "null"}]}
    if message_type == "group":
        properties["groupId"] = _ID
        required.append("groupId")
    if message_type == "alias":
        properties["userId"] = _ID
        properties["previousId"] = _ID
        required += ["userId", "previousId"]
    else:
        schema["anyOf"] = _SOME_ID
    schema["required"] = required
    return schema


def single_body(message_type: str) -> dict[str, Any]:
    schema = message_schema(message_type)
    schema["properties"] = {**schema["properties"], "writeKey": _WRITE_KEY}
    return schema


def batch_body(message_types: tuple[str, ...]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["batch"],
        "properties": {
            "batch": {
                "type": "array",
                # Any item is taken: a bad message is named in the 200 answer's `errors` and
                # kept in failed events while the good ones are stored (Segment's semantics).
                "items": {},
                "description": "Messages, each with its `type`: "
                + ", ".join(message_types)
                + ". Each is checked as the single-message call of its type checks it.",
            },
            "writeKey": _WRITE_KEY,
            "sentAt": _TIME,
            "context": _OBJECT,
        },
    }
