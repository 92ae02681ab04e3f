"""What the features stage emits and the sinks write: one record type per kind of output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.events import StreamEntry
from app.features import FeatureChange


@dataclass(frozen=True)
class Transition:
    """A customer entered or left a segment at an instant of event time."""

    segment: str
    kind: str  # "enter" | "exit"
    at: int
    rule_version: int
    actions: tuple[dict[str, Any], ...] = ()  # the rule's on_enter / on_exit actions

    def shown(self) -> dict[str, Any]:
        """As the transitions list holds it (the same transition: the same member)."""
        return {
            "segment": self.segment,
            "kind": self.kind,
            "at": self.at,
            "rule_version": self.rule_version,
        }


@dataclass(frozen=True)
class Correction:
    """A late event replayed in its place changed the customer's history: the transitions
    written before that no longer hold, and the ones that do instead."""

    message_id: str  # the late event's
    at: int  # its instant
    retracted: tuple[Transition, ...]
    added: tuple[Transition, ...]

    def shown(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "at": self.at,
            "retracted": [t.shown() for t in self.retracted],
            "added": [t.shown() for t in self.added],
        }


@dataclass
class ProfileUpdate:
    """A customer's features changed (by an event or a deadline): what the sinks write."""

    customer_id: str
    at: int  # event time of the change, ms
    features: dict[str, Any]
    traits: dict[str, Any]
    events: tuple[StreamEntry, ...] = ()  # the events applied at this change, if any
    segments: frozenset[str] = frozenset()  # with the cluster's, ``cluster:<id>``
    transitions: tuple[Transition, ...] = ()
    outlier: bool | None = None  # None: no cluster model assigns yet
    # late events that changed transitions already written, in the order they came
    corrections: tuple[Correction, ...] = ()
    shard: str = ""  # the shard that emitted it (set on its way to the sink)
    # the values windows and sessions take after ``at`` until the customer's next evaluation:
    # (instant, feature, value), in time order (``app.features.features_as_of``)
    changes: tuple[FeatureChange, ...] = ()


@dataclass
class LateEvent:
    event: StreamEntry
    newest: int


@dataclass
class Unprocessable:
    """Applying ``event`` (or evaluating its customer then) raised, or the source could not
    read it: the event is kept in failed events and the customer set aside
    (``FeatureShard._quarantine``), not the flow stopped for everyone. ``detail``: the error,
    and what became of the customer's state."""

    event: StreamEntry
    detail: str


@dataclass
class Erased:
    """The customer was erased (GDPR): the sinks delete what they wrote about them."""

    customer_id: str
    segments: frozenset[str] = frozenset()  # the segments they were in, to leave


@dataclass
class ErasureSeen:
    """The dataflow applied the ``erase`` entry at ``entry_id`` of ``partition``: once its
    recovery snapshots are past it, the erasure is finished there (``pipelines.erasure``)."""

    partition: int
    entry_id: str


@dataclass
class Merged:
    """An anonymous customer merged into ``into``: the sinks move what they wrote about them
    (recent events, transitions, corrections) into ``into``'s lists, each moved transition
    marked with the id it came from, and delete the rest, leaving their segments."""

    customer_id: str
    into: str
    segments: frozenset[str] = frozenset()


@dataclass
class Relay:
    """A stream entry for another customer's partition (identity merges move state and events
    there), appended once: replayed output finds its marker."""

    partition: int
    entry: StreamEntry
    marker: str  # unique per entry: the append happens once per marker


@dataclass
class ShardProgress:
    """How many stream entries a shard has applied, and the newest event time among them.

    Part of the shard's recovered state, so after a crash it rewinds and advances with the
    source positions: the sum over shards is exactly the number of entries processed.
    """

    shard: str
    processed: int
    newest: int | None
    # the stream entry last applied, and its partition: an erasure that deletes entries past it
    # knows the flow will never count them (``app.profiles.erasure``)
    partition: int = -1
    last_entry: str | None = None
