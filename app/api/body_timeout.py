"""A request's body must arrive in time: a client that sends its headers and then trickles the
body (or stops) would otherwise hold a connection, and a worker's read, as long as it likes.

``BodyTimeout`` wraps the ASGI ``receive`` of every HTTP request until its body is complete:
each part must come within ``idle_s`` of the one before and the whole body within ``total_s``
of the request's start. Past either, the read raises a 408 (the app's error handlers answer it,
the collector's in its own shape) with ``Connection: close``, so the server drops the
connection rather than wait for the rest. Once the body is complete ``receive`` is left alone:
what follows is the wait for a disconnect, which may rightly be long.
"""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTimeout:
    def __init__(self, app: ASGIApp, *, idle_s: float, total_s: float) -> None:
        self._app = app
        self._idle_s = idle_s
        self._total_s = total_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._total_s
        complete = False

        async def timed_receive() -> Message:
            nonlocal complete
            if complete:
                return await receive()
            # asyncio.timeout, not wait_for: no task per body part on the collector's path
            try:
                async with asyncio.timeout_at(min(loop.time() + self._idle_s, deadline)):
                    message = await receive()
            except TimeoutError:
                raise self._late() from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        await self._app(scope, timed_receive, send)

    def _late(self) -> HTTPException:
        return HTTPException(
            408,
            f"the request body did not arrive in time (each part within {self._idle_s:g} s, "
            f"all of it within {self._total_s:g} s)",
            headers={"Connection": "close"},
        )
