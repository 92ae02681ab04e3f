"""What the features stage emits and the sinks write: one record type per kind of output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class ProfileUpdate:
    """A customer's features changed (by an event or a deadline): what the sinks write."""

    customer_id: str
    at: int  # event time of the change, ms
    features: dict[str, Any]
    traits: dict[str, Any]
    event: dict[str, Any] | None = None  # the event that caused it, if any


@dataclass
class LateEvent:
    event: dict[str, Any]
    newest: int


@dataclass
class Erased:
    """The customer was erased (GDPR): the sinks delete what they wrote about them."""

    customer_id: str


@dataclass
class ShardProgress:
    """How many stream entries a shard has applied, and the newest event time among them.

    Part of the shard's recovered state, so after a crash it rewinds and advances with the
    source positions: the sum over shards is exactly the number of entries processed.
    """

    shard: str
    processed: int
    newest: int | None
