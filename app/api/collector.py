"""The Segment HTTP Tracking API: ``/v1/batch`` and the single-message calls.

Bodies are read by hand (not by FastAPI's parser) to enforce Segment's size limits while reading,
accept gzip, and answer every error in Segment's ``{"success", "code", "message"}`` shape.
"""

from __future__ import annotations

import logging
import time
import zlib
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from app.api.deps import StateDep
from app.clock import now_ms
from app.errors import CollectorError
from app.events import MAX_REQUEST_BYTES, MESSAGE_TYPES, InvalidMessage, parse_time_ms
from app.ingest.auth import write_key_from_authorization
from app.ingest.schema import batch_body, single_body
from app.ingest.service import (
    FailedEvent,
    IngestResult,
    StoreFull,
    StoreUnavailable,
    ValidatedBatch,
    raw_text,
    validate_batch,
)
from app.metrics import EVENTS_ACCEPTED, EVENTS_DUPLICATE, EVENTS_FAILED, REQUEST_LATENCY

router = APIRouter(prefix="/v1", tags=["collector"])


class MessageErrorOut(BaseModel):
    index: int
    messageId: str | None
    error: str


class CollectorAnswer(BaseModel):
    success: Literal[True] = True
    accepted: int = Field(description="Messages stored now.")
    duplicates: int = Field(description="Messages whose messageId was stored before.")
    errors: list[MessageErrorOut] = Field(description="Messages refused, kept in failed events.")


class CollectorErrorBody(BaseModel):
    success: Literal[False] = False
    code: str
    message: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": CollectorErrorBody, "description": text}
    for status, text in {
        400: "Body not JSON, bad gzip, or (single-message calls) an invalid message.",
        401: "Missing or unknown write key.",
        408: "The body did not arrive in time: nothing was stored, retry.",
        413: "Message over 32 KB or request over 500 KB.",
        415: "A Content-Encoding other than gzip.",
        503: "The event store is unreachable: nothing was stored, retry.",
    }.items()
}


def _body_doc(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_REQUEST_BYTES:
        raise CollectorError(413, "request_too_large", "request body is larger than 500 KB")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_REQUEST_BYTES:
            raise CollectorError(413, "request_too_large", "request body is larger than 500 KB")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("gzip", "x-gzip"):
        body = _gunzip(body)
    elif encoding not in ("", "identity"):
        raise CollectorError(
            415,
            "unsupported_encoding",
            f"Content-Encoding {encoding!r} is not read: send the body as it is, or gzip",
        )
    return body


def _gunzip(body: bytes) -> bytes:
    """Every member of the gzip data (``gzip -c a b`` writes two), at most the size limit."""
    plain = b""
    rest = body
    while True:
        inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
        try:
            plain += inflater.decompress(rest, MAX_REQUEST_BYTES + 1 - len(plain))
        except zlib.error as error:
            raise CollectorError(
                400,
                "invalid_gzip",
                f"Content-Encoding is gzip but the body is not gzip data ({error})",
            ) from None
        if len(plain) > MAX_REQUEST_BYTES or inflater.unconsumed_tail:
            raise CollectorError(
                413, "request_too_large", "request body is larger than 500 KB unzipped"
            )
        if not inflater.eof:
            raise CollectorError(400, "invalid_gzip", "the gzip body is truncated")
        rest = inflater.unused_data
        if not rest.strip(b"\0"):  # the end (some writers pad with zeros)
            return plain


async def _authenticate(request: Request, state: StateDep, body_key: Any) -> str:
    key = write_key_from_authorization(request.headers.get("authorization"))
    if key is None and isinstance(body_key, str) and body_key:
        key = body_key
    if key is None:
        raise CollectorError(
            401,
            "unauthorized",
            "no write key: send it as the HTTP basic-auth user or as writeKey in the body",
        )
    source = await state.write_keys.source_for(key)
    if source is None:
        raise CollectorError(401, "unauthorized", "the write key is not valid")
    return source


async def _keep_refused(
    request: Request, state: StateDep, received_at: int, reason: str, body: bytes
) -> None:
    """Keep a refused body a known source sent (its basic-auth key: the body's cannot be
    read), so nothing it meant to send is lost without trace."""
    key = write_key_from_authorization(request.headers.get("authorization"))
    source = await state.write_keys.source_for(key) if key else None
    if source is not None:
        text = raw_text(body.decode("utf-8", "replace"))
        await _record(state, FailedEvent(received_at, reason, source, text))


async def _parse(request: Request, state: StateDep) -> tuple[dict[str, Any], str, int]:
    """Read, unzip, parse and authenticate: the body, its source and the receive time."""
    received_at = now_ms()
    body = await _read_body(request)
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        try:
            body.decode()
        except UnicodeDecodeError as bad:  # (orjson names it a surrogate at char 0)
            kept = answer = f"body is not UTF-8 text: byte {bad.start} is {body[bad.start]:#04x}"
        else:
            kept, answer = f"body is not JSON: {error}", f"body is not valid JSON: {error}"
        await _keep_refused(request, state, received_at, kept, body)
        raise CollectorError(400, "invalid_json", answer) from None
    if not isinstance(payload, dict):
        await _keep_refused(request, state, received_at, "body is not a JSON object", body)
        raise CollectorError(400, "invalid_json", "body must be a JSON object")
    body_key = payload.get("writeKey")
    if body_key is not None and not isinstance(body_key, str):
        raise CollectorError(400, "invalid_json", "writeKey: must be a string")
    source = await _authenticate(request, state, body_key)
    return payload, source, received_at


log = logging.getLogger(__name__)
FULL_WARNING_EVERY_S = 10.0  # a full Redis refuses every request: say so, not each time
_full_warned_at = [0.0]


def _store_unavailable(error: StoreUnavailable) -> CollectorError:
    if isinstance(error, StoreFull):
        if time.monotonic() - _full_warned_at[0] >= FULL_WARNING_EVERY_S:
            _full_warned_at[0] = time.monotonic()
            log.warning("collector: Redis is full, events refused with 503: %s", error)
        what = "the event store is out of memory (Redis maxmemory reached)"
    else:
        what = "the event store is unreachable"
    return CollectorError(
        503, "store_unavailable", f"{what}; nothing was stored, retry", retry_after_s=1
    )


async def _record(state: StateDep, item: FailedEvent) -> None:
    try:
        await state.store.record_failed(item)
    except StoreUnavailable as error:
        raise _store_unavailable(error) from None
    EVENTS_FAILED.inc()


async def _store(state: StateDep, batch: ValidatedBatch) -> IngestResult:
    try:
        result = await state.store.store(batch)
    except StoreUnavailable as error:
        raise _store_unavailable(error) from None
    EVENTS_ACCEPTED.inc(result.accepted)
    EVENTS_DUPLICATE.inc(result.duplicates)
    EVENTS_FAILED.inc(len(result.errors))
    return result


def _answer(result: IngestResult) -> Response:
    body = {
        "success": True,
        "accepted": result.accepted,
        "duplicates": result.duplicates,
        "errors": [
            {"index": e.index, "messageId": e.message_id, "error": e.error} for e in result.errors
        ],
    }
    return Response(orjson.dumps(body), media_type="application/json")


@router.post(
    "/batch",
    response_model=CollectorAnswer,
    responses=_ERRORS,
    openapi_extra=_body_doc(batch_body(MESSAGE_TYPES)),
    summary="Send many messages (Segment's batch call)",
)
async def batch(request: Request, state: StateDep) -> Response:
    started = time.perf_counter()
    payload, source, received_at = await _parse(request, state)
    messages = payload.get("batch")
    if not isinstance(messages, list):
        raise CollectorError(400, "invalid_batch", "batch: must be an array of messages")
    defaults = _batch_defaults(payload)
    validated = validate_batch(messages, source=source, received_at=received_at, defaults=defaults)
    result = await _store(state, validated)
    REQUEST_LATENCY.labels("batch").observe(time.perf_counter() - started)
    return _answer(result)


def _batch_defaults(payload: dict[str, Any]) -> dict[str, Any]:
    """A batch's shared ``context`` and ``sentAt``, which apply to every message in it."""
    context, sent_at = payload.get("context"), payload.get("sentAt")
    if context is not None and not isinstance(context, dict):
        raise CollectorError(400, "invalid_batch", "context: must be an object")
    if sent_at is not None:
        if not isinstance(sent_at, str):
            raise CollectorError(400, "invalid_batch", "sentAt: must be an ISO-8601 date-time")
        try:
            parse_time_ms(sent_at, "sentAt")
        except InvalidMessage as error:
            raise CollectorError(400, "invalid_batch", str(error)) from None
    return {"context": context, "sentAt": sent_at}


def _single(message_type: str) -> Any:
    async def handler(request: Request, state: StateDep) -> Response:
        started = time.perf_counter()
        payload, source, received_at = await _parse(request, state)
        payload.pop("writeKey", None)
        validated = validate_batch(
            [payload], source=source, received_at=received_at, forced_type=message_type
        )
        if validated.errors:
            await _record(state, validated.failed[0])  # kept in failed events
            error = validated.errors[0]
            if error.too_large:
                raise CollectorError(413, "message_too_large", error.error)
            raise CollectorError(400, "invalid_message", error.error)
        result = await _store(state, validated)
        REQUEST_LATENCY.labels(message_type).observe(time.perf_counter() - started)
        return _answer(result)

    handler.__name__ = message_type
    return handler


for _type in MESSAGE_TYPES:
    router.add_api_route(
        f"/{_type}",
        _single(_type),
        methods=["POST"],
        response_model=CollectorAnswer,
        responses=_ERRORS,
        openapi_extra=_body_doc(single_body(_type)),
        summary=f"Send one {_type} message",
    )
