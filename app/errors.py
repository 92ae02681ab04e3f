"""Errors users and operators can cause, every family in one index, and how each is answered.
Each lives beside the code that raises it; this one is the collector's.

The collector (``/v1``, SDKs): {"success": false, "code", "message"}
  CollectorError            app.errors               a request refused (400, 401, 413, 503)
  InvalidMessage            app.events               one message cannot become an Event: named in
                                                     the batch's ``errors``, kept in failed events
  StoreUnavailable          app.ingest.service       Redis did not take a write -> 503, retried
  StoreFull                 app.ingest.service       (StoreUnavailable) Redis at maxmemory -> 503
Rules (``/api/rules``, ``segflow rules check``):
                 {"detail": [{"rule", "field", "line", "column", "message"}]}
  RuleError                 app.rules.schema         a rule or a set of rules refused -> 422
  RuleNotFound              app.rules.store          (LookupError) no such rule or version -> 404
  RuleConflict              app.rules.store          an id taken, a segment others read -> 409
  RuleEngineError           app.rules.engine         durable_rules refused a ruleset or a fact
Activation (``/api/destinations``, ``/api/templates``, the dispatcher)
  DispatchError             app.dispatch.errors      the family: its own index is in that module
  UndeliverableError        app.dispatch.worker      a delivery's destination cannot be sent to
  RenderError               app.dispatch.worker      a delivery's template did not render
Reading what the pipeline kept (``/api/failed-events``)
  StoreError                app.ingest.failed_events Redis unreachable -> 503
  BadCursor                 app.ingest.failed_events (ValueError) a cursor not of this list -> 400
Operators (``segflow`` commands: the message on stderr, exit status 1)
  ReplayError               app.ingest.replay        a file that cannot be replayed at all
  DuplicateNameError        app.credentials          (ValueError) a write key or token name taken
  EmbeddedRedisError        app.redis_server         the embedded redis-server did not start
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
