"""What a live customer's late event can be corrected from: saved states and the events since.

A live customer's events can arrive out of time order: a phone offline for a minute sends its
queue, two devices' clocks are apart, a read splits a burst. An event within the allowed
lateness may come after the customer's later events, or after deadlines past its instant have
fired by the wall clock. Its right effect is the one it would have had in time order, so the
shard replays the customer's recent history with it (``FeatureShard._correct``) from a saved
state and turns the differences into corrections.

A ``Rewind`` holds, per live customer:

- *anchors*: the customer's state as it was after every event up to an instant and every
  evaluation up to it (a pickle), with the segments then and the next deadline after it. One
  is taken before an in-order event once the newest anchor is ``allowed lateness`` of event
  time old, so the oldest one kept is never newer than ``newest - lateness`` and any allowed
  late event finds one before it;
- the *events* applied since the oldest anchor, in arrival order (the same objects the shard
  applied: no copy);
- the *transitions emitted* since the oldest anchor, as the sink wrote them, so a replay's
  transitions can be compared with them.

An in-order stream pays for the buffer and one pickle per ``lateness`` of each customer's
activity; only late events pay for a replay. The memory is bounded: ``EVENTS_CAP`` events per
customer (past it the history restarts from a fresh anchor), and a rewind is dropped once the
live clock is ``retention`` past the customer's last event (``RewindBook``).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from app.events import StreamEntry
from pipelines.records import Transition

EVENTS_CAP = 512


@dataclass(slots=True)
class Anchor:
    """A customer as evaluated through ``at`` (None: before their first event)."""

    at: int | None
    blob: bytes | None  # the pickled state (None: nothing known yet)
    segments: frozenset[str]
    deadline: int | None  # their next deadline after ``at``
    newest: int | None = None  # the state's newest event (``at`` may be past it: deadlines)

    def before(self, instant: int) -> bool:
        return self.at is None or self.at < instant


@dataclass(slots=True)
class Rewind:
    """One live customer's anchors, events and transitions since the oldest anchor."""

    anchors: list[Anchor]
    events: list[StreamEntry] = field(default_factory=list)  # in arrival order
    emitted: list[Transition] = field(default_factory=list)
    touched: int = 0  # the live clock after the read that brought their last event

    def due_anchor(self, evaluated: int | None, lateness_ms: int) -> bool:
        """Whether the state as evaluated through ``evaluated`` is to be saved now: the newest
        anchor is a lateness of event time behind it, or the events since fill the cap."""
        if len(self.events) >= EVENTS_CAP:
            return True
        newest = self.anchors[-1]
        since = newest.at
        if since is None and self.events:
            since = int(self.events[0]["timestamp"])
        return evaluated is not None and since is not None and evaluated - since >= lateness_ms

    def add_anchor(self, anchor: Anchor) -> None:
        if len(self.events) >= EVENTS_CAP:  # too busy to keep more: start again from here
            self.anchors, self.events, self.emitted = [anchor], [], []
        else:
            self.anchors.append(anchor)

    def applied(self, event: StreamEntry, newest: int, lateness_ms: int) -> None:
        """An in-order event applied; anchors no allowed late event can need any more are let
        go."""
        self.events.append(event)
        oldest_needed = 0
        for index, anchor in enumerate(self.anchors):
            if anchor.at is not None and anchor.at < newest - lateness_ms:
                oldest_needed = index
        if oldest_needed:
            del self.anchors[:oldest_needed]
            self._forget_through(self.anchors[0].at)

    def late(self, event: StreamEntry) -> Anchor | None:
        """A late event, taken in: the newest anchor a replay with it can start from (None:
        none is old enough); the anchors after its instant are dropped (it is not in them)."""
        instant = int(event["timestamp"])
        self.events.append(event)
        for index in range(len(self.anchors) - 1, -1, -1):
            if self.anchors[index].before(instant):
                del self.anchors[index + 1 :]
                return self.anchors[index]
        return None

    def holding_none_after(self, instant: int) -> int | None:
        """The index of the newest anchor whose state holds no event at or after ``instant``
        (evaluated past it all the same: its deadlines fired), if any."""
        for index in range(len(self.anchors) - 1, -1, -1):
            newest = self.anchors[index].newest
            if newest is not None and newest < instant:
                return index
        return None

    def since(self, anchor: Anchor) -> list[StreamEntry]:
        """The events after ``anchor``, in event-time order (arrival order at one instant)."""
        later = [event for event in self.events if anchor.before(int(event["timestamp"]))]
        later.sort(key=lambda event: int(event["timestamp"]))  # stable: arrivals at one instant
        return later

    def emitted_since(self, anchor: Anchor) -> list[Transition]:
        return [t for t in self.emitted if anchor.at is None or t.at > anchor.at]

    def replace_since(self, at: int | None, transitions: list[Transition]) -> None:
        """The transitions after ``at`` are now ``transitions``."""
        kept = [t for t in self.emitted if at is not None and t.at <= at]
        self.emitted = kept + transitions

    def _forget_through(self, at: int | None) -> None:
        if at is None:
            return
        self.events = [event for event in self.events if int(event["timestamp"]) > at]
        self.emitted = [t for t in self.emitted if t.at > at]


class RewindBook:
    """The shard's rewinds, least recently touched first, each dropped once the live clock is
    ``retention`` past its customer's last event (the clock at the end of the read that
    brought the event: the live clock moves after each read)."""

    def __init__(self) -> None:
        self._by_customer: OrderedDict[str, Rewind] = OrderedDict()
        self._fresh: list[Rewind] = []  # touched since the live clock last moved

    def get(self, customer_id: str) -> Rewind | None:
        return self._by_customer.get(customer_id)

    def touch(self, customer_id: str, rewind: Rewind) -> None:
        self._by_customer[customer_id] = rewind
        self._by_customer.move_to_end(customer_id)
        self._fresh.append(rewind)

    def drop(self, customer_id: str) -> None:
        self._by_customer.pop(customer_id, None)

    def clear(self) -> None:
        self._by_customer.clear()
        self._fresh.clear()

    def expire(self, now: int, retention_ms: int) -> None:
        """The live clock is at ``now``."""
        for rewind in self._fresh:
            rewind.touched = now
        self._fresh.clear()
        book = self._by_customer
        while book:
            customer_id, rewind = next(iter(book.items()))
            if now - rewind.touched <= retention_ms:
                return
            del book[customer_id]

    def __len__(self) -> int:
        return len(self._by_customer)


def differences(
    before: list[Transition], after: list[Transition]
) -> tuple[list[Transition], list[Transition], list[Transition]]:
    """Compare two histories of transitions (by segment, kind and instant): the ones of
    ``before`` not in ``after`` (retracted), ``after`` as it is to be kept (the transitions
    of ``before`` where they are the same), and the ones of ``after`` not in ``before``."""
    remaining: dict[tuple[str, str, int], list[Transition]] = {}
    for transition in before:
        remaining.setdefault(_key(transition), []).append(transition)
    kept, added = [], []
    for transition in after:
        same = remaining.get(_key(transition))
        if same:
            kept.append(same.pop(0))
        else:
            kept.append(transition)
            added.append(transition)
    retracted = sorted((t for ts in remaining.values() for t in ts), key=lambda t: t.at)
    return retracted, kept, added


def _key(transition: Transition) -> tuple[str, str, int]:
    return (transition.segment, transition.kind, transition.at)
