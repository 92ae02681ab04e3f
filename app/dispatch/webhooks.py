"""Signed webhook deliveries, per the Standard Webhooks spec, signed by its own library.

Each delivery carries ``webhook-id`` (the same for every attempt at one message, so receivers
drop duplicates), ``webhook-timestamp`` (seconds) and ``webhook-signature`` (``v1,`` and the
base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}`` keyed by the secret's bytes after
``whsec_``). One attempt is one ``send_webhook`` call: retrying is the caller's choice, from
the ``DeliveryResult``.
"""

from __future__ import annotations

import asyncio
import email.utils
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
import orjson
from pydantic import SecretStr
from standardwebhooks import Webhook

from app.dispatch.errors import UnresolvableDestinationURL, UnsafeDestinationURL
from app.dispatch.urls import check_destination_url_async

USER_AGENT = "Segflow-Webhooks/0.1"
MAX_ERROR_BODY = 300  # characters of a failed answer kept in the error
MAX_DRAINED = 64 * 1024  # an answer read to its end lets its connection be reused
# Headers a destination cannot set: the signature's, and what HTTP itself manages.
RESERVED_HEADERS = frozenset(
    {
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "content-type",
        "content-length",
        "host",
        "transfer-encoding",
        "connection",
    }
)

Outcome = Literal["delivered", "http_error", "timeout", "network", "refused"]


@dataclass(frozen=True)
class WebhookTarget:
    """Where and how one destination is called. ``secret`` is the ``whsec_`` secret itself:
    ``SecretStr`` keeps it out of reprs and logs."""

    name: str
    url: str
    secret: SecretStr
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 10.0


@dataclass(frozen=True)
class DeliveryResult:
    """One attempt. ``outcome``: ``delivered`` (2xx), ``http_error`` (another status; see
    ``status_code`` and ``retry_after_s``), ``timeout``, ``network`` (no answer: connection
    refused or reset, DNS), ``refused`` (Segflow would not send: the URL is not allowed now).
    ``latency_ms`` runs from the request's start to the answer's headers."""

    webhook_id: str
    outcome: Outcome
    status_code: int | None
    latency_ms: float
    error: str | None = None
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "delivered"


def new_webhook_id() -> str:
    return "msg_" + secrets.token_urlsafe(18)


def webhook_body(event_type: str, data: Any, *, at: datetime | None = None) -> str:
    """The payload in the spec's recommended shape: ``{"type", "timestamp", "data"}``."""
    moment = (at or datetime.now(UTC)).astimezone(UTC)
    envelope = {"type": event_type, "timestamp": moment.isoformat(), "data": data}
    return orjson.dumps(envelope).decode()


def signature_headers(
    *, secret: SecretStr, webhook_id: str, body: str, at: datetime
) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body`` sent at ``at``."""
    moment = at.astimezone(UTC)
    signature = Webhook(secret.get_secret_value()).sign(webhook_id, moment, body)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": signature,
    }


def webhook_client(**options: Any) -> httpx.AsyncClient:
    """An HTTP client for deliveries: no redirects followed (an answer cannot send a delivery
    to another address), no proxy or ``.netrc`` from the environment."""
    return httpx.AsyncClient(follow_redirects=False, trust_env=False, **options)


async def send_webhook(
    *,
    client: httpx.AsyncClient,
    destination: WebhookTarget,
    webhook_id: str,
    body: str,
    allow_private: bool,
    at: datetime | None = None,
) -> DeliveryResult:
    """POST ``body`` (JSON text) to the destination, signed, once; never raises for what the
    receiver or the network does. The URL is checked again first (``allow_private``:
    ``Settings.allow_private_destinations``); the whole attempt is bounded by the
    destination's ``timeout_s``."""
    started = time.perf_counter()

    def result(outcome: Outcome, status: int | None = None, **kw: Any) -> DeliveryResult:
        latency = (time.perf_counter() - started) * 1000
        return DeliveryResult(webhook_id, outcome, status, round(latency, 3), **kw)

    try:
        await check_destination_url_async(destination.url, allow_private=allow_private)
    except UnsafeDestinationURL as error:
        return result("refused", error=f"destination {destination.name!r}: {error}")
    except UnresolvableDestinationURL as error:
        return result("network", error=f"destination {destination.name!r}: {error}")
    headers = {
        "user-agent": USER_AGENT,
        **destination.headers,
        "content-type": "application/json",
        **signature_headers(
            secret=destination.secret,
            webhook_id=webhook_id,
            body=body,
            at=at or datetime.now(UTC),
        ),
    }
    snippet = b""
    try:
        async with asyncio.timeout(destination.timeout_s):
            request = client.build_request(
                "POST",
                destination.url,
                content=body.encode(),
                headers=headers,
                timeout=destination.timeout_s,
            )
            response = await client.send(request, stream=True)
            answered = result("delivered", response.status_code)  # the latency to the headers
            try:
                read = 0
                async for chunk in response.aiter_bytes():
                    if not 200 <= response.status_code < 300 and len(snippet) < MAX_ERROR_BODY:
                        snippet += chunk  # enough to say what went wrong
                    read += len(chunk)
                    if read > MAX_DRAINED:
                        break  # a long answer: let its connection go rather than read on
            finally:
                await response.aclose()  # read to its end, the connection is reused
    except (TimeoutError, httpx.TimeoutException):
        return result("timeout", error=f"no answer within {destination.timeout_s:g} s")
    except httpx.HTTPError as error:
        return result("network", error=f"{type(error).__name__}: {error}".rstrip(": "))
    except (httpx.InvalidURL, UnicodeError) as error:  # a host name IDNA refuses, say
        return result("refused", error=f"destination {destination.name!r}: not a URL: {error}")
    if answered.status_code is not None and 200 <= answered.status_code < 300:
        return answered
    text = snippet[:MAX_ERROR_BODY].decode("utf-8", "replace").strip()
    return DeliveryResult(
        webhook_id,
        "http_error",
        response.status_code,
        answered.latency_ms,
        error=f"HTTP {response.status_code}" + (f": {text}" if text else ""),
        retry_after_s=_retry_after(response.headers.get("retry-after")),
    )


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds from now: a number of seconds, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
