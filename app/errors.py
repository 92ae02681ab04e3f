"""Errors users can cause, and how each is answered.

CollectorError        a collector request refused: {"success": false, "code", "message"}
StoreUnavailable      (app.ingest.service) Redis did not take a write -> 503
InvalidMessage        (app.events) one message cannot become an Event -> per-message error
EmbeddedRedisError    (app.redis_server) the embedded redis-server did not start
"""

from __future__ import annotations


class CollectorError(Exception):
    """A collector request answered with Segment's error shape, which the SDKs parse."""

    def __init__(
        self, status_code: int, code: str, message: str, *, retry_after_s: int | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s
