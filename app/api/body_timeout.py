"""A request's body must arrive in time: a client that sends its headers and then trickles the
body (or stops) would otherwise hold a connection, and a worker's read, as long as it likes.

``BodyTimeout`` wraps the ASGI ``receive`` of every HTTP request until its body is complete:
each part must come within ``idle_s`` of the one before and the whole body within ``total_s``
of the request's start. Past either, the read raises a 408 (the app's error handlers answer it,
the collector's in its own shape) with ``Connection: close``, so the server drops the
connection rather than wait for the rest. Once the body is complete ``receive`` is left alone:
what follows is the wait for a disconnect, which may rightly be long.

Outside the collector (``/v1/``, which has its own limits and error shape), a body is also at
most ``most_bytes``: past it (or a ``Content-Length`` past it) the read raises a 413 the same
way, before the app has held it all, with or without a valid token.
"""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

COLLECTOR_PREFIX = "/v1/"


class BodyTimeout:
    def __init__(
        self, app: ASGIApp, *, idle_s: float, total_s: float, most_bytes: int = 1 << 20
    ) -> None:
        self._app = app
        self._idle_s = idle_s
        self._total_s = total_s
        self._most_bytes = most_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._total_s
        complete = False
        most = None if scope["path"].startswith(COLLECTOR_PREFIX) else self._most_bytes
        taken = 0
        declared_too_large = most is not None and any(  # refused at the first read
            name == b"content-length" and value.isdigit() and int(value) > most
            for name, value in scope["headers"]
        )

        async def timed_receive() -> Message:
            nonlocal complete, taken
            if complete:
                return await receive()
            if declared_too_large:
                raise self._too_large()
            # asyncio.timeout, not wait_for: no task per body part on the collector's path
            try:
                async with asyncio.timeout_at(min(loop.time() + self._idle_s, deadline)):
                    message = await receive()
            except TimeoutError:
                raise self._late() from None
            if most is not None:
                taken += len(message.get("body", b""))
                if taken > most:
                    raise self._too_large()
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        await self._app(scope, timed_receive, send)

    def _too_large(self) -> HTTPException:
        return HTTPException(
            413,
            f"the request body is larger than {self._most_bytes // 1024:,} KB",
            headers={"Connection": "close"},
        )

    def _late(self) -> HTTPException:
        return HTTPException(
            408,
            f"the request body did not arrive in time (each part within {self._idle_s:g} s, "
            f"all of it within {self._total_s:g} s)",
            headers={"Connection": "close"},
        )
