"""Per-customer feature state: windowed aggregates, cart, session, recency, built-ins.

Pure Python with no Bytewax import, so every rule of time below is tested exhaustively against a
brute-force recomputation (tests/unit/test_features.py).

How time works here
-------------------
Every value is a function of the customer's events and of an instant ``t`` (event time, ms).
"In the last W" at ``t`` means event times in ``(t - W, t]``: an event enters the window at its
own time and leaves exactly at ``time + W``. So a windowed value changes only at two kinds of
instants: when an event arrives, and at a *deadline* ``time + W`` of an event inside the window.
``CustomerFeatures.next_change(t)`` returns the earliest such deadline after ``t``. The dataflow
sets a timer (by the wall clock when live, by event time when replaying) for the earliest one
that can change what it decides (``watched_deadline``: a count crossing a rule's threshold, not
every exit) and takes a new snapshot then; the others are carried in the customer's profile
record (``record_at``), so a view leaving the 10-minute window shows at that exact millisecond,
not at the customer's next event. The same holds for the end of a session (last event + gap).

How state stays small
---------------------
Each windowed feature reads an ``EventLog``: the times (and the one property value it needs) of
the events it counts, kept only as long as the longest window that reads it. All windows of one
event share one log, and a log answers any window by binary search, so values are exact at every
instant. A log past ``LOG_CAP`` entries folds its oldest entries into time buckets whose width is
a fraction of the window they serve (``BUCKETS_PER_WINDOW``); a bucket leaves the window when its
newest event does, so a folded bucket can make a count leave up to one bucket-width early. It
bounds the memory of very busy customers; below the cap nothing is approximate.

Sequences
---------
"Viewed then added within 10 min" is the time since the newest chain of its steps completed
(``Sequence``, ``SequenceLog``): it grows with the clock like a time since an event, and a new
event re-checks only the chains it could join.

Identity
--------
``merge`` folds another customer's state (an anonymous visitor who identified) into this one.
Logs are merged entry by entry, so every windowed value afterwards equals what the events would
have given had they all carried the same id.
"""

from __future__ import annotations

import bisect
import io
import math
import pickle
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property
from typing import Any

import orjson

from app.features import (
    BUILTIN_INPUTS,
    DEFAULT_LATENESS_MS,
    DEFAULT_SESSION_GAP_MS,
    EVENT_DRIVEN_BUILTINS,
    ORDER,
    PAGE_EVENT,
    PROFILE_BUILTINS,
    SCREEN_EVENT,
    SESSION_BUILTINS,
    TOP_CATEGORY_WINDOW_MS,
    FeatureChange,
    FeatureSpec,
    LastValue,
    LogKey,
    Sequence,
    Since,
    Windowed,
    event_name,
)

LOG_CAP = 512
BUCKETS_PER_WINDOW = 64
SESSION_LOG_CAP = 256


# --- the catalogue -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Catalogue:
    """What to compute: the specs and built-ins that rules asked for, and nothing else."""

    specs: tuple[FeatureSpec, ...] = ()
    builtins: tuple[str, ...] = ()
    session_gap_ms: int = DEFAULT_SESSION_GAP_MS
    allowed_lateness_ms: int = DEFAULT_LATENESS_MS

    def __post_init__(self) -> None:
        unknown = [name for name in self.builtins if name not in BUILTIN_INPUTS]
        if unknown:
            raise ValueError(f"unknown built-in feature(s): {', '.join(unknown)}")

    @classmethod
    def of(
        cls,
        *items: FeatureSpec | str,
        session_gap_ms: int = DEFAULT_SESSION_GAP_MS,
        allowed_lateness_ms: int = DEFAULT_LATENESS_MS,
    ) -> Catalogue:
        specs = tuple(dict.fromkeys(i for i in items if not isinstance(i, str)))
        builtins = tuple(dict.fromkeys(i for i in items if isinstance(i, str)))
        return cls(specs, builtins, session_gap_ms, allowed_lateness_ms)

    def __getstate__(self) -> dict[str, Any]:
        # Pickled, a catalogue leaves out its derived caches (its plan holds closures).
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    @cached_property
    def _all_specs(self) -> tuple[FeatureSpec, ...]:
        extra = [spec for name in self.builtins for spec in BUILTIN_INPUTS[name]]
        return tuple(dict.fromkeys([*self.specs, *extra]))

    def all_specs(self) -> tuple[FeatureSpec, ...]:
        """The specs, with the inputs of the built-ins added."""
        return self._all_specs

    @cached_property
    def plan(self) -> FeaturePlan:
        return FeaturePlan.of(self)

    @cached_property
    def top_category(self) -> bool:
        return "top_category_30d" in self.builtins

    @cached_property
    def logs_by_event(
        self,
    ) -> dict[str, tuple[tuple[LogKey, str | None, tuple[tuple[str, Any], ...]], ...]]:
        """Per event name, the logs it feeds: (log key, property read, filter)."""
        found: dict[str, list[tuple[LogKey, str | None, tuple[tuple[str, Any], ...]]]] = {}
        for key in self.horizons():
            event, prop, where = key
            found.setdefault(event, []).append((key, prop, where))
        return {event: tuple(logs) for event, logs in found.items()}

    @cached_property
    def last_values_by_event(self) -> dict[str, tuple[LastValue, ...]]:
        found: dict[str, list[LastValue]] = {}
        for spec in self.specs:
            if isinstance(spec, LastValue):
                found.setdefault(spec.event, []).append(spec)
        return {event: tuple(specs) for event, specs in found.items()}

    @cached_property
    def sequences(self) -> tuple[Sequence, ...]:
        return tuple(spec for spec in self.specs if isinstance(spec, Sequence))

    @cached_property
    def sequences_by_event(self) -> dict[str, tuple[Sequence, ...]]:
        found: dict[str, list[Sequence]] = {}
        for spec in self.sequences:
            for step in dict.fromkeys(spec.steps):
                found.setdefault(step, []).append(spec)
        return {event: tuple(specs) for event, specs in found.items()}

    @cached_property
    def session_builtins(self) -> bool:
        return bool(SESSION_BUILTINS & set(self.builtins))

    def horizons(self) -> dict[LogKey, int | None]:
        """Per log: how long its entries must be kept (None: for ever)."""
        return self._horizons

    @cached_property
    def _horizons(self) -> dict[LogKey, int | None]:
        keep: dict[LogKey, int | None] = {}
        for spec in self.all_specs():
            if not isinstance(spec, Windowed):
                continue
            key = spec.log_key
            if key in keep:
                current = keep[key]
                keep[key] = (
                    None
                    if current is None or spec.window_ms is None
                    else max(current, spec.window_ms)
                )
            else:
                keep[key] = spec.window_ms
        return keep


def default_catalogue(
    allowed_lateness_ms: int = DEFAULT_LATENESS_MS,
    rule_features: tuple[FeatureSpec | str, ...] = (),
) -> Catalogue:
    """What the dataflow computes: the profile's built-ins and what the active rules read
    (``app.rules`` derives that from each rule)."""
    return Catalogue.of(*PROFILE_BUILTINS, *rule_features, allowed_lateness_ms=allowed_lateness_ms)


# --- logs ----------------------------------------------------------------------------------------


@dataclass
class EventLog:
    """Sorted times of the events one group of features reads, with the value each needs.

    ``weights`` is 1 per event, or the number of events a folded bucket stands for.
    """

    horizon_ms: int | None
    times: list[int] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)
    weights: list[int] = field(default_factory=list)
    folded: bool = False  # some entries stand for several events (counts read the weights)

    def add(self, when: int, value: Any) -> None:
        at = bisect.bisect_right(self.times, when)
        self.times.insert(at, when)
        self.values.insert(at, value)
        self.weights.insert(at, 1)

    def expire(self, now: int) -> bool:
        """Forget entries that left the longest window that reads this log; True when old
        entries were folded (which can change what they count for)."""
        if self.horizon_ms is not None:
            cut = bisect.bisect_right(self.times, now - self.horizon_ms)
            if cut:
                del self.times[:cut], self.values[:cut], self.weights[:cut]
        if len(self.times) > LOG_CAP:
            self._fold(len(self.times) - LOG_CAP)
            return True
        return False

    def _fold(self, surplus: int) -> None:
        """Fold the oldest entries into buckets; a bucket keeps its newest time."""
        width = max(1, (self.horizon_ms or 86_400_000 * 365) // BUCKETS_PER_WINDOW)
        times, values, weights = [], [], []
        index = 0
        while index < len(self.times):
            if index >= surplus * 2 or len(self.times) - index <= LOG_CAP // 2:
                times += self.times[index:]
                values += self.values[index:]
                weights += self.weights[index:]
                break
            bucket = self.times[index] // width
            end = index
            while end < len(self.times) and self.times[end] // width == bucket:
                end += 1
            times.append(self.times[end - 1])
            values.append(_fold_values(self.values[index:end]))
            weights.append(sum(self.weights[index:end]))
            index = end
        self.times, self.values, self.weights = times, values, weights
        self.folded = True

    def merge(self, other: EventLog) -> None:
        merged = sorted(
            zip(self.times + other.times, range(len(self.times) + len(other.times)), strict=True)
        )
        values, weights = self.values + other.values, self.weights + other.weights
        self.times = [t for t, _ in merged]
        self.values = [values[i] for _, i in merged]
        self.weights = [weights[i] for _, i in merged]
        self.folded = self.folded or other.folded


def _fold_values(values: list[Any]) -> Folded:
    """What a bucket keeps of its values: their total, least, greatest and distinct values."""
    totals: list[float] = []
    lows: list[float] = []
    highs: list[float] = []
    seen: set[Any] = set()
    for value in values:
        if isinstance(value, Folded):
            totals.append(value.total)
            lows += [] if value.low is None else [value.low]
            highs += [] if value.high is None else [value.high]
            seen |= value.seen
        else:
            number = _number(value)
            if number is not None:
                totals.append(number)
                lows.append(number)
                highs.append(number)
            if value is not None:
                seen.add(_hashable(value))
    return Folded(
        bounded_sum(totals), min(lows, default=None), max(highs, default=None), frozenset(seen)
    )


FLOAT_MOST = sys.float_info.max


def bounded_sum(numbers: list[float]) -> float:
    """The numbers' sum, exactly rounded (the same in any order of arrival); one beyond the
    largest float is that float, signed. Events may carry any finite number (up to about
    1.8e308), and two of them must not stop the flow: ``math.fsum`` raises on an overflow,
    even of an intermediate sum whose end is finite, which is then worked out exactly."""
    try:
        total = math.fsum(numbers)
    except OverflowError:
        exact = sum(map(Fraction, numbers), Fraction(0))
        try:
            total = float(exact)
        except OverflowError:
            return FLOAT_MOST if exact > 0 else -FLOAT_MOST
    return total


def bounded(number: float) -> float:
    """``number``, or the largest float of its sign where it overflowed (a product, a sum of two
    of the numbers events carry)."""
    return math.copysign(FLOAT_MOST, number) if math.isinf(number) else number


@dataclass(frozen=True)
class Folded:
    total: float
    low: float | None
    high: float | None
    seen: frozenset[Any]


def _aggregate(spec: Windowed, log: EventLog, start: int, end: int) -> float | int | None:
    part = slice(start, end)
    if spec.aggregate == "count":
        return sum(log.weights[part])
    values = log.values[part]
    if spec.aggregate == "distinct":
        seen: set[Any] = set()
        for value in values:
            if isinstance(value, Folded):
                seen |= value.seen
            elif value is not None:
                seen.add(_hashable(value))
        return len(seen)
    numbers: list[float] = []
    for value in values:
        if isinstance(value, Folded):
            if spec.aggregate == "sum":
                numbers.append(value.total)
            elif value.low is not None and value.high is not None:
                numbers.append(value.low if spec.aggregate == "min" else value.high)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            numbers.append(value)
    if spec.aggregate == "sum":
        return bounded_sum(numbers)  # exactly rounded: the same in any order of arrival
    if not numbers:
        return None
    return _number(min(numbers) if spec.aggregate == "min" else max(numbers))


def _hashable(value: Any) -> Any:
    """Lists and objects count as distinct values by their JSON text."""
    if isinstance(value, list | dict):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return value


def _matches(properties: Mapping[str, Any], where: tuple[tuple[str, Any], ...]) -> bool:
    return all(properties.get(key) == value for key, value in where)


# --- sequences -----------------------------------------------------------------------------------


@dataclass
class SequenceLog:
    """The step events of one ``Sequence`` that may still take part in a chain, by the values
    of its ``same`` properties, and the newest completed chain.

    Only the newest completion matters (the feature is the time since it), and a new event can
    only complete chains whose last step lies in ``[its time, its time + within)``, so adding
    an event re-checks just those. An event at or before ``newest - lateness - within`` can
    never join a chain again (every later event is at most ``lateness`` behind ``newest``) and
    is forgotten; past ``SEQUENCE_CAP`` events per key the oldest go too. So a merge of two
    identities finds a chain split across them only while its steps are that recent (as when
    a visitor identifies during the visit), not one whose steps both sides have forgotten.
    """

    # per ``same`` key: (time, arrival, event name), sorted
    entries: dict[tuple[Any, ...], list[tuple[int, int, str]]] = field(default_factory=dict)
    completed: int | None = None
    arrivals: int = 0

    def add(self, spec: Sequence, when: int, name: str, properties: Mapping[str, Any]) -> None:
        key = tuple(_hashable(properties.get(prop)) for prop in spec.same)
        if any(value is None for value in key):
            return
        self.arrivals += 1
        entries = self.entries.setdefault(key, [])
        bisect.insort(entries, (when, self.arrivals, name))
        self._complete(spec, entries, bisect.bisect_left(entries, (when,)), when + spec.within_ms)
        if len(entries) > SEQUENCE_CAP:
            del entries[: len(entries) - SEQUENCE_CAP]

    def _complete(
        self, spec: Sequence, entries: list[tuple[int, int, str]], start: int, before: float
    ) -> None:
        """Record the newest chain ending at an entry from ``start`` with a time under
        ``before``."""
        last = spec.steps[-1]
        for index in range(bisect.bisect_left(entries, (before,)) - 1, start - 1, -1):
            when, _, name = entries[index]
            if self.completed is not None and when <= self.completed:
                return
            if name == last and _chain_ends_at(spec, entries, index):
                self.completed = when
                return

    def expire(self, newest: int, spec: Sequence, lateness_ms: int) -> None:
        cut = (newest - lateness_ms - spec.within_ms, math.inf)
        for key in list(self.entries):
            entries = self.entries[key]
            del entries[: bisect.bisect_right(entries, cut)]
            if not entries:
                del self.entries[key]

    def merge(self, spec: Sequence, other: SequenceLog) -> None:
        """Both identities' step events as one history (``other``'s arriving later)."""
        for key, theirs in other.entries.items():
            entries = self.entries.setdefault(key, [])
            for when, _, name in theirs:
                self.arrivals += 1
                bisect.insort(entries, (when, self.arrivals, name))
            del entries[: max(0, len(entries) - SEQUENCE_CAP)]
        if other.completed is not None and (
            self.completed is None or other.completed > self.completed
        ):
            self.completed = other.completed
        for entries in self.entries.values():  # chains with steps from both sides
            self._complete(spec, entries, 0, math.inf)


SEQUENCE_CAP = 256


def _chain_ends_at(spec: Sequence, entries: list[tuple[int, int, str]], last: int) -> bool:
    """Whether ``entries[last]`` ends a chain of ``spec``'s steps.

    Walking back from the last step, each earlier step takes the latest unused event of its
    name no later than the step after it: a later choice leaves every earlier step at least as
    many candidates, so if any chain ends here, this one does, and its first step is the latest
    possible (the one most likely to be within the time limit)."""
    tk = entries[last][0]
    floor = tk - spec.within_ms  # the first step must be after this
    used = {last}
    bound = tk
    for step in reversed(spec.steps[:-1]):
        index = bisect.bisect_right(entries, (bound, math.inf)) - 1
        while index >= 0 and entries[index][0] > floor:
            if index not in used and entries[index][2] == step:
                break
            index -= 1
        else:
            return False
        used.add(index)
        bound = entries[index][0]
    return True


# --- the customer --------------------------------------------------------------------------------


@dataclass
class Cart:
    """Lines by product: quantity and unit price (the contract's cart semantics).

    The cart is a function of the cart events since the last ``Order Completed`` (which empties
    it), so those events are kept, in time order then arrival order, and replayed when the cart
    is read. Late events fall into place, and two identities' carts merge exactly: an order of
    either clears what the other added before it. Past ``CART_CAP`` events the oldest are folded
    into ``base``.
    """

    last_order: int | None = None
    events: list[tuple[int, int, str, dict[str, Any]]] = field(default_factory=list)
    base: dict[str, tuple[float, float]] = field(default_factory=dict)
    arrivals: int = 0

    def add(self, when: int, name: str, properties: Mapping[str, Any]) -> None:
        if name not in CART_EVENTS:
            return
        self.arrivals += 1
        if name == ORDER:
            if self.last_order is None or when >= self.last_order:
                self.last_order = when
                self.base.clear()
                # Everything held arrived before this order: at its instant or earlier, it is
                # emptied (same-instant events arriving later will apply after it).
                cut = bisect.bisect_right(self.events, (when, self.arrivals))
                del self.events[:cut]
            return
        if self.last_order is not None and when < self.last_order:
            return  # that order emptied the cart after this event
        kept = {key: properties.get(key) for key in ("product_id", "quantity", "price")}
        bisect.insort(self.events, (when, self.arrivals, name, kept))
        if len(self.events) > CART_CAP:
            for _, _, old_name, old_properties in self.events[: len(self.events) - CART_CAP]:
                _apply_cart(self.base, old_name, old_properties)
            del self.events[: len(self.events) - CART_CAP]

    def lines(self, now: int | None = None) -> dict[str, tuple[float, float]]:
        lines = dict(self.base)
        for when, _, name, properties in self.events:
            if now is not None and when > now:
                break
            _apply_cart(lines, name, properties)
        return lines

    def merge(self, other: Cart) -> None:
        """Two identities' carts as one history (``other``'s events count as arriving later)."""
        if other.last_order is not None:
            self.add(other.last_order, ORDER, {})
        for product, (quantity, price) in other.base.items():
            held, _ = self.base.get(product, (0.0, 0.0))
            self.base[product] = (bounded(held + quantity), price)
        for when, _, name, properties in other.events:
            self.add(when, name, properties)


CART_CAP = 256
CART_EVENTS = ("Product Added", "Product Removed", ORDER)


def _apply_cart(
    lines: dict[str, tuple[float, float]], name: str, properties: Mapping[str, Any]
) -> None:
    if name == ORDER:
        lines.clear()
        return
    product = properties.get("product_id")
    if product is None:
        return
    product = str(product)
    quantity = _number(properties.get("quantity"))
    if name == "Product Added":
        held, _ = lines.get(product, (0.0, 0.0))
        price = _number(properties.get("price")) or 0.0
        lines[product] = (bounded(held + (quantity if quantity is not None else 1.0)), price)
    elif name == "Product Removed" and product in lines:
        held, price = lines[product]
        left = 0.0 if quantity is None else bounded(held - quantity)
        if left > 0:
            lines[product] = (left, price)
        else:
            del lines[product]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond every float
        return FLOAT_MOST if value > 0 else -FLOAT_MOST
    return None if number != number else bounded(number)  # (NaN: not a number)


@dataclass
class CustomerFeatures:
    """Everything Segflow knows of one customer's behaviour, updated event by event."""

    catalogue: Catalogue
    logs: dict[tuple[str, str | None, tuple[tuple[str, Any], ...]], EventLog] = field(
        default_factory=dict
    )
    last_at: dict[str, int] = field(default_factory=dict)  # event name -> last time
    last_values: dict[str, Any] = field(default_factory=dict)  # LastValue name -> value
    cart: Cart = field(default_factory=Cart)
    # (time, kind) of recent events: the session is the tail with gaps under the session gap
    session_log: list[tuple[int, str]] = field(default_factory=list)
    category_views: dict[str, list[int]] = field(default_factory=dict)
    sequences: dict[str, SequenceLog] = field(default_factory=dict)  # by the Sequence's name
    traits: dict[str, Any] = field(default_factory=dict)
    first_seen: int | None = None
    last_seen: int | None = None
    events_total: int = 0
    newest: int | None = None  # the newest event time seen (lateness is measured from it)
    segments: frozenset[str] = frozenset()  # the rule segments the customer is in
    evaluated: int | None = None  # the latest instant ``segments`` was evaluated at
    # beyond its cluster's reach as of that instant (recomputed at each evaluation, not saved)
    outlier: bool = False
    # the cluster model's last assignment of the customer (``app.clustering.model.Assignment``:
    # derived, not saved), so a snapshot that moves no column is not assigned again
    assignment: Any = field(default=None, repr=False, compare=False)
    # the last ``observe`` and the groups of features changed since (by events or a fold):
    # derived, so recovery snapshots leave them out
    _observed: _Observed | None = field(default=None, repr=False, compare=False)
    _dirty: set[int] = field(default_factory=set, repr=False, compare=False)
    _expired_at: int | None = field(default=None, repr=False, compare=False)
    # the latest two visits of the whole session log as the session group last found them,
    # kept up to date as events are appended to the log (``_LatestVisits``): derived
    _visits: _LatestVisits | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.adopt(self.catalogue)

    def adopt(self, catalogue: Catalogue) -> None:
        """Hold the logs ``catalogue`` reads and no others (a rule change can swap it)."""
        self.catalogue = catalogue
        horizons = catalogue.horizons()
        for key in [key for key in self.logs if key not in horizons]:
            del self.logs[key]
        for key, horizon in horizons.items():
            self.logs.setdefault(key, EventLog(horizon)).horizon_ms = horizon
        wanted = {spec.name for spec in catalogue.sequences}
        for name in [name for name in self.sequences if name not in wanted]:
            del self.sequences[name]
        for name in wanted:
            self.sequences.setdefault(name, SequenceLog())
        self._observed = None
        self._visits = None  # its session gap may be another

    def __reduce__(self) -> tuple[Any, ...]:
        # Customers are pickled one by one, often (see pipelines.segmentation.ShardState): as
        # one flat tuple, without the shared catalogue (``restore`` gives it back) and without
        # empty logs, which is several times smaller and faster than the dataclasses.
        logs = tuple(
            (key, log.times, log.values, log.weights, log.folded)
            for key, log in self.logs.items()
            if log.times
        )
        cart = self.cart
        return (
            _rebuilt,
            (
                logs,
                self.last_at,
                self.last_values,
                (cart.last_order, cart.events, cart.base, cart.arrivals),
                self.session_log,
                self.category_views,
                self.traits,
                self.first_seen,
                self.last_seen,
                self.events_total,
                self.newest,
                self.segments,
                tuple(
                    (name, log.entries, log.completed, log.arrivals)
                    for name, log in self.sequences.items()
                    if log.entries or log.completed is not None
                ),
                self.evaluated,
            ),
        )

    @classmethod
    def restore(cls, blob: bytes, catalogue: Catalogue) -> CustomerFeatures:
        """A customer from ``pickle.dumps(customer)``, with the catalogue it is computed for.

        Only a customer's own parts are rebuilt: a blob read back from Redis (an identity
        merge moves state through a stream) cannot name any other callable."""
        customer = _StateUnpickler(io.BytesIO(blob)).load()
        if not isinstance(customer, CustomerFeatures):
            raise pickle.UnpicklingError("not a customer's state")
        customer.adopt(catalogue)
        return customer

    def apply(self, event: Mapping[str, Any]) -> str | None:
        """Fold one canonical event (``app.events.Event`` fields) into the state; return the
        name it counts under (None for identify and the like).

        Only the logs the event feeds are expired here; ``expire`` does the others when a
        deadline passes, so an event costs the same however many features there are."""
        when = int(event["timestamp"])
        if event.get("traits") and event.get("type") in ("identify", "track", "page", "screen"):
            self.traits.update(event["traits"])
        name = event_name(event)
        self.newest = when if self.newest is None else max(self.newest, when)
        self._dirty.update(self.catalogue.plan.feeds(name))
        if name is None:
            return None
        properties: Mapping[str, Any] = event.get("properties") or {}
        self.events_total += 1
        self.first_seen = when if self.first_seen is None else min(self.first_seen, when)
        self.last_seen = when if self.last_seen is None else max(self.last_seen, when)
        if when >= self.last_at.get(name, when):
            self.last_at[name] = when
            for spec in self.catalogue.last_values_by_event.get(name, ()):
                self.last_values[spec.name] = properties.get(spec.prop)
        newest = self.newest
        for key, prop, where in self.catalogue.logs_by_event.get(name, ()):
            if not where or _matches(properties, where):
                log = self.logs[key]
                log.add(when, properties.get(prop) if prop else None)
                log.expire(newest)
        for chain in self.catalogue.sequences_by_event.get(name, ()):
            sequence = self.sequences[chain.name]
            sequence.add(chain, when, name, properties)
            sequence.expire(newest, chain, self.catalogue.allowed_lateness_ms)
        self.cart.add(when, name, properties)
        session, entry = self.session_log, (when, name)
        at = bisect.bisect_right(session, entry)
        session.insert(at, entry)
        visits = self._visits
        if visits is not None:
            if at == visits.count:  # after every entry it covers: the visits go on from it
                visits.add(when, name, self.catalogue.session_gap_ms)
            else:  # a late event among them: walked again when read
                self._visits = visits = None
        if len(session) > SESSION_LOG_CAP:
            cut = len(session) - SESSION_LOG_CAP
            del session[:cut]
            if visits is not None and not visits.shift(cut):
                self._visits = None
        if name == "Product Viewed" and self.catalogue.top_category:
            category = properties.get("category")
            if isinstance(category, str):
                bisect.insort(self.category_views.setdefault(category, []), when)
        return name

    def expire(self, now: int) -> None:
        """Forget what left every window as of ``now`` (the newest event time: nothing that an
        instant after it reads), once per ``now``: deadlines between two events call it again."""
        if now == self._expired_at:
            return
        self._expired_at = now
        for log in self.logs.values():
            if log.expire(now):
                self._observed = None  # a fold changes what old entries count for
        for chain in self.catalogue.sequences:
            self.sequences[chain.name].expire(now, chain, self.catalogue.allowed_lateness_ms)
        horizon = now - TOP_CATEGORY_WINDOW_MS
        for category in list(self.category_views):
            times = self.category_views[category]
            del times[: bisect.bisect_right(times, horizon)]
            if not times:
                del self.category_views[category]

    def snapshot(self, now: int) -> dict[str, Any]:
        """Every catalogued feature's value at ``now``."""
        return self.observe(now)[0]

    def next_change(self, now: int) -> int | None:
        """The earliest instant after ``now`` at which a feature changes with no new event."""
        return self.observe(now)[1]

    def read(self, now: int) -> tuple[dict[str, Any], int | None]:
        """``observe(now)`` without a copy of the values: the dict is the customer's own, valid
        until their next call (the dataflow reads it once per evaluation and copies it once
        per record it writes, ``record_at``).

        A group of features (``FeaturePlan``) changes only when an event feeds it or when its
        own deadline passes, so after the last call at an instant before ``now`` only the
        groups events fed since (``apply`` marks them), those whose deadline is reached and
        the cheap ``always`` group are computed again. A merge, a rule change, a fold or an
        instant before the last one recomputes every group.
        """
        last = self._observed
        dirty = self._dirty
        groups = self.catalogue.plan.groups
        always = len(groups) - 1  # the always group, last: it reads the others' values
        if last is None or now < last.at:
            last = self._observed = _Observed(now, {}, [_NEVER] * len(groups), _NEVER)
            dirty.update(range(always))
        elif now >= last.deadline:
            dirty.update([i for i, d in enumerate(last.deadlines) if d <= now])
        values, deadlines = last.values, last.deadlines
        dirty.discard(always)
        for index in (*sorted(dirty), always):
            deadline = groups[index](self, now, values)
            deadlines[index] = _NEVER if deadline is None else deadline
        last.at = now
        dirty.clear()
        soonest = last.deadline = min(deadlines)
        return values, None if soonest == _NEVER else int(soonest)

    def observe(self, now: int) -> tuple[dict[str, Any], int | None]:
        """``snapshot(now)`` and ``next_change(now)`` at once (``read``, copied)."""
        values, deadline = self.read(now)
        return dict(values), deadline

    def _observation(self, now: int) -> tuple[dict[str, Any], list[float], bool]:
        """The values and group deadlines at ``now``, and whether they are this call's own (to
        change at will): the last read's when it was at ``now`` (events applied since wait
        for their own evaluation; not to be changed), else computed aside: the last read and
        what events applied since must recompute are kept for the next evaluation."""
        last = self._observed
        if last is None or last.at != now:
            waiting = set(self._dirty)
            try:
                self._observed = None
                self.read(now)
                found = self._observed
                assert found is not None
                return found.values, found.deadlines, True
            finally:
                self._observed, self._dirty = last, waiting
        return last.values, last.deadlines, False

    def record_at(
        self, now: int, until: float, most: int
    ) -> tuple[dict[str, Any], list[FeatureChange], int | None]:
        """What a profile record carries: a copy of the values at ``now`` (``_observation``),
        the values the windowed and session features (and what derives from them) take after
        ``now`` through ``until`` with no new event, in time order, at most ``most`` instants
        of them, and the first instant of a change left out (past ``until`` or past ``most``),
        if any. With them readers see exact values between the dataflow's evaluations
        (``app.features.features_as_of``)."""
        values, deadlines, own = self._observation(now)
        shown = dict(values)
        soonest = min(deadlines)
        if soonest == _NEVER or soonest > until or most <= 0:  # nothing to work out
            return shown, [], None if soonest == _NEVER else int(soonest)
        if not own:  # worked out on copies: the last read stays as it was
            values, deadlines = shown.copy(), list(deadlines)
        changes, cutoff = self._changes(values, deadlines, until, most)
        return shown, changes, cutoff

    def _changes(
        self, values: dict[str, Any], deadlines: list[float], until: float, most: int
    ) -> tuple[list[FeatureChange], int | None]:
        plan = self.catalogue.plan
        groups, outputs = plan.groups, plan.outputs
        derived, read = outputs[-1], plan.derived_reads
        changes: list[FeatureChange] = []
        for _ in range(most):
            instant = min(deadlines)
            if instant == _NEVER:
                return changes, None
            if instant > until:
                return changes, int(instant)
            at = int(instant)
            touched = False  # a value the derived built-ins read
            for index, deadline in enumerate(deadlines):
                if deadline != instant:
                    continue
                names = outputs[index]
                before = [values[name] for name in names]
                found = groups[index](self, at, values)
                deadlines[index] = _NEVER if found is None else found
                for name, old in zip(names, before, strict=True):
                    value = values[name]
                    if value != old:
                        changes.append((at, name, value))
                        touched = touched or name in read
            if touched:
                before = [values[name] for name in derived]
                plan.derive(values)
                for name, old in zip(derived, before, strict=True):
                    if values[name] != old:
                        changes.append((at, name, values[name]))
        instant = min(deadlines)
        return changes, None if instant == _NEVER else int(instant)

    def watched_deadline(
        self,
        now: int,
        watch: Watch,
        deadlines: list[float] | None = None,
        values: dict[str, Any] | None = None,
    ) -> int | None:
        """The next instant after ``now`` at which a watched feature can change what the
        dataflow decides (``Watch``), as of the last read, which was at ``now`` (or given the
        groups' ``deadlines`` and the ``values`` at ``now``, every deadline after it): a
        watched group's next deadline, or for a count compared with thresholds, the exit that
        moves it into another class among them (for ``gte 5``: the one from 5 to 4, not every
        exit)."""
        if deadlines is None or values is None:
            last = self._observed
            assert last is not None, "read the customer at now first"
            assert last.at == now, "read the customer at now first"
            deadlines, values = last.deadlines, last.values
        best = _NEVER
        for index, key, counts in watch.groups:
            deadline = deadlines[index]
            if deadline >= best:
                continue
            if key is None or counts is None:
                best = deadline
                continue
            log = self.logs[key]
            times = log.times
            if log.folded or times[-1] > now:  # not only falling: every exit counts
                best = deadline
                continue
            end = len(times)
            for name, window, limits in counts:
                if limits is None:  # any change: its window's next exit
                    start = bisect.bisect_right(times, now - window)
                    if start < end and times[start] + window < best:
                        best = times[start] + window
                    continue
                count = values[name]
                if not count:
                    continue
                at = bisect.bisect_left(limits, count)
                if limits[at] == count:
                    below = count - 1
                elif at == 0:
                    continue  # no class below: it only falls further inside its own
                else:
                    below = math.floor(limits[at - 1])
                    if below < 0:
                        continue
                # the window holds times[end - count:end]; ``below`` are left once the entry
                # before the last ``below`` has left (classes are ordered by value, so one
                # step over several values lands in another class too)
                crossing = times[end - below - 1] + window
                if crossing < best:
                    best = crossing
        return None if best == _NEVER else int(best)

    def first_change(
        self,
        now: int,
        watch: Watch,
        until: float,
        most: int,
        changed: Callable[[int, dict[str, Any], float], int | None],
    ) -> int | None:
        """The first instant after ``now`` and before ``until`` that ``changed(instant, values,
        before)`` finds: ``values`` are the features at ``instant`` with no new event, walked
        through the instants at which a feature ``watch`` watches can change
        (``watched_deadline`` from the instant before, on the walk's own copies), and
        ``changed`` answers the first instant from ``instant`` and before ``before`` (the next
        walked instant, or ``until``) at which what it follows changes, or None. After ``most``
        instants without, the next one (to walk on from there); None when none comes before
        ``until``. As of the last read, which was at ``now``: the customer's state and their
        last read are left as they were (``values`` is a copy, changed as it walks)."""
        last = self._observed
        assert last is not None, "read the customer at now first"
        assert last.at == now, "read the customer at now first"
        instant = self.watched_deadline(now, watch)
        if instant is None or instant >= until:
            return None
        computed = self.catalogue.plan.groups
        always = computed[-1]
        indices = [index for index, _, _ in watch.groups]
        deadlines = list(last.deadlines)
        values = dict(last.values)
        for _ in range(most):
            at = instant
            for index in indices:  # those due by then, each from scratch at ``at``
                if deadlines[index] <= instant:
                    found = computed[index](self, at, values)
                    deadlines[index] = _NEVER if found is None else found
            always(self, at, values)
            following = self.watched_deadline(at, watch, deadlines, values)
            before = until if following is None else min(following, until)
            found_at = changed(at, values, before)
            if found_at is not None:
                return found_at
            if following is None or following >= until:
                return None
            instant = following
        return instant

    def observe_after(self, now: int, name: str | None) -> tuple[dict[str, Any], int | None]:
        """``observe(now)`` after applying an event named ``name`` (``apply`` marked what it
        fed, so this is ``observe``; kept for the callers that say which event it was)."""
        return self.observe(now)

    def merge(self, other: CustomerFeatures) -> None:
        """Fold ``other`` (the same catalogue) into this customer, as one history."""
        self._observed = None
        for key, log in other.logs.items():
            self.logs[key].merge(log)
        for name, when in other.last_at.items():
            if when > self.last_at.get(name, -1):
                self.last_at[name] = when
                for spec in self.catalogue.last_values_by_event.get(name, ()):
                    if spec.name in other.last_values:
                        self.last_values[spec.name] = other.last_values[spec.name]
        for chain in self.catalogue.sequences:
            self.sequences[chain.name].merge(chain, other.sequences[chain.name])
        self.cart.merge(other.cart)
        self.session_log = sorted(self.session_log + other.session_log)[-SESSION_LOG_CAP:]
        self._visits = None
        for category, times in other.category_views.items():
            self.category_views[category] = sorted(self.category_views.get(category, []) + times)
        self.traits = {**other.traits, **self.traits}
        self.first_seen = _min(self.first_seen, other.first_seen)
        self.last_seen = _max(self.last_seen, other.last_seen)
        self.newest = _max(self.newest, other.newest)
        self.evaluated = _max(self.evaluated, other.evaluated)
        self.events_total += other.events_total

    def is_late(self, when: int, allowed_lateness_ms: int) -> bool:
        return self.newest is not None and when < self.newest - allowed_lateness_ms


class _StateUnpickler(pickle.Unpickler):
    ALLOWED = frozenset(
        {
            ("pipelines.features", "_rebuilt"),
            ("pipelines.features", "Folded"),
            ("builtins", "frozenset"),
            ("builtins", "set"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"a customer's state does not hold {module}.{name}")
        return super().find_class(module, name)


def _rebuilt(
    logs: tuple[tuple[LogKey, list[int], list[Any], list[int], bool], ...],
    last_at: dict[str, int],
    last_values: dict[str, Any],
    cart: tuple[int | None, list[tuple[int, int, str, dict[str, Any]]], dict[str, Any], int],
    *rest: Any,
) -> CustomerFeatures:
    """The other half of ``CustomerFeatures.__reduce__``: no catalogue until ``restore``."""
    customer = object.__new__(CustomerFeatures)
    customer.logs = {
        key: EventLog(None, times, values, weights, folded)
        for key, times, values, weights, folded in logs
    }
    customer.last_at, customer.last_values = last_at, last_values
    customer.cart = Cart(*cart)
    (
        customer.session_log,
        customer.category_views,
        customer.traits,
        customer.first_seen,
        customer.last_seen,
        customer.events_total,
        customer.newest,
        customer.segments,
    ) = rest[:8]
    customer.sequences = {  # absent from snapshots taken before sequences were computed
        name: SequenceLog(entries, completed, arrivals)
        for name, entries, completed, arrivals in (rest[8] if len(rest) > 8 else ())
    }
    customer.evaluated = rest[9] if len(rest) > 9 else customer.newest  # from before it was kept
    customer.outlier = False
    customer.assignment = None
    customer._observed = None
    customer._dirty = set()
    customer._expired_at = None
    customer._visits = None
    return customer


# --- how a snapshot is computed: groups of features that change together ------------------------


@dataclass
class _Observed:
    at: int
    values: dict[str, Any]
    deadlines: list[float]  # per group of the plan (_NEVER: none)
    deadline: float  # the soonest of them


_NEVER = math.inf


@dataclass(frozen=True)
class Watch:
    """The deadlines that can change what the dataflow decides (a segment, a cluster, so a
    trigger): the groups of the plan whose features a rule or a cluster column reads, each as
    (group index, None, None) when every change of the group counts (the built-ins, but for
    those that change only at an event, ``EVENT_DRIVEN_BUILTINS``: no deadline), or for a
    log's windowed features (index, the log, (feature, window, class limits) per feature read):
    for a count compared with thresholds, only a crossing into another class among them counts;
    for any other feature read (limits None), every exit from its own window, not those of the
    group's other windows (a 30-day count that a ratio reads moves only as views leave 30
    days, not as they leave the 10 minutes a rule reads). Other deadlines change what a
    profile shows, which its record carries (``CustomerFeatures.changes_after``)."""

    groups: tuple[
        tuple[int, LogKey | None, tuple[tuple[str, int, tuple[float, ...] | None], ...] | None],
        ...,
    ]

    @classmethod
    def of(cls, plan: FeaturePlan, watched: Mapping[str, tuple[float, ...] | None]) -> Watch:
        """``watched``: feature -> the constants it is compared with, None for any change."""
        wanted = dict(watched)
        for name, reads in plan.derived:  # a copy keeps the thresholds, a ratio does not
            if name in watched:
                for read in reads:
                    given = watched[name] if len(reads) == 1 else None
                    wanted[read] = _joined(wanted[read], given) if read in wanted else given
        groups: list[
            tuple[int, LogKey | None, tuple[tuple[str, int, tuple[float, ...] | None], ...] | None]
        ] = []
        for index, names in enumerate(plan.outputs[:-1]):
            if not any(name in wanted for name in names):
                continue
            if index >= len(plan.specs):
                # a built-in that changes only at an event has no deadline to watch
                if any(name in wanted and name not in EVENT_DRIVEN_BUILTINS for name in names):
                    groups.append((index, None, None))
                continue
            counts: list[tuple[str, int, tuple[float, ...] | None]] = []
            for spec in plan.specs[index]:
                if spec.name not in wanted or spec.window_ms is None:
                    continue  # a lifetime value has no deadline
                thresholds = wanted[spec.name]
                if spec.aggregate == "count" and thresholds is not None:
                    limits: tuple[float, ...] | None = (*sorted(set(thresholds)), math.inf)
                else:
                    limits = None  # every exit from its own window (not the group's others)
                counts.append((spec.name, spec.window_ms, limits))
            windows = sum(spec.window_ms is not None for spec in plan.specs[index])
            if len(counts) == windows and all(limits is None for _, _, limits in counts):
                groups.append((index, None, None))  # every exit of the group: its deadline
            elif counts:
                groups.append((index, plan.specs[index][0].log_key, tuple(counts)))
        # the groups taken whole first: their deadline, already known, bounds the others'
        groups.sort(key=lambda group: group[2] is not None)
        return cls(tuple(groups))


def _joined(a: tuple[float, ...] | None, b: tuple[float, ...] | None) -> tuple[float, ...] | None:
    return None if a is None or b is None else tuple(sorted({*a, *b}))


# A group writes its features' values at an instant and returns its next deadline, if any.
GroupFn = Callable[[CustomerFeatures, int, dict[str, Any]], int | None]


@dataclass(frozen=True)
class FeaturePlan:
    """The catalogue as groups of features, and which groups each event name feeds.

    Windowed features are grouped by the log they read; the built-ins by what they read (the
    session, the cart, the category views). The ``always`` group (time since an event or a
    sequence, totals, RFM, interaction rate) is cheap and runs on every change, after the
    others.
    """

    groups: tuple[GroupFn, ...]
    dirty: dict[str, tuple[int, ...]]  # event name -> the groups it feeds
    named: tuple[int, ...]  # the groups any other named event feeds (session, always)
    always: tuple[int, ...]  # the groups an unnamed event (identify) feeds
    # per group, the features it writes (the always group's: only those derived from others'
    # values, in ``derived``), and its windowed specs (log groups)
    outputs: tuple[tuple[str, ...], ...] = ()
    specs: tuple[tuple[Windowed, ...], ...] = ()
    # features the always group derives from windowed ones: (name, the features it reads)
    derived: tuple[tuple[str, tuple[str, ...]], ...] = ()
    derive: Callable[[dict[str, Any]], None] = lambda values: None

    @cached_property
    def derived_reads(self) -> frozenset[str]:
        return frozenset(name for _, reads in self.derived for name in reads)

    @classmethod
    def of(cls, catalogue: Catalogue) -> FeaturePlan:
        windowed: dict[LogKey, list[tuple[str, Windowed, int | None]]] = {}
        for spec in catalogue.all_specs():
            if isinstance(spec, Windowed):
                windowed.setdefault(spec.log_key, []).append((spec.name, spec, spec.window_ms))
        groups: list[GroupFn] = [_log_group(tuple(specs)) for specs in windowed.values()]
        outputs = [tuple(name for name, _, _ in specs) for specs in windowed.values()]
        feeds: dict[str, list[int]] = {}
        for index, key in enumerate(windowed):
            feeds.setdefault(key[0], []).append(index)
        last_values = catalogue.last_values_by_event
        if last_values:
            for event in last_values:
                feeds.setdefault(event, []).append(len(groups))
            groups.append(_last_values_group(catalogue))
            outputs.append(tuple(s.name for specs in last_values.values() for s in specs))
        builtins = set(catalogue.builtins)
        named: list[int] = []  # the groups every named event feeds
        if SESSION_BUILTINS & builtins:
            named.append(len(groups))
            groups.append(_session_group(catalogue))
            outputs.append(tuple(n for n in catalogue.builtins if n in SESSION_BUILTINS))
        if {"cart_value", "cart_items"} & builtins:
            for event in CART_EVENTS:
                feeds.setdefault(event, []).append(len(groups))
            groups.append(_cart_group(catalogue))
            outputs.append(
                tuple(n for n in catalogue.builtins if n in ("cart_value", "cart_items"))
            )
        if "top_category_30d" in builtins:
            feeds.setdefault("Product Viewed", []).append(len(groups))
            groups.append(_top_category)
            outputs.append(("top_category_30d",))
        always = (len(groups),)
        groups.append(_always_group(catalogue))
        derived = tuple(
            (name, tuple(spec.name for spec in BUILTIN_INPUTS[name]))
            for name in catalogue.builtins
            if BUILTIN_INPUTS[name] and not any(isinstance(s, Since) for s in BUILTIN_INPUTS[name])
        )
        outputs.append(tuple(name for name, _ in derived))
        dirty = {event: (*indexes, *named, *always) for event, indexes in feeds.items()}
        specs = tuple(tuple(spec for _, spec, _ in found) for found in windowed.values())
        return cls(
            tuple(groups),
            dirty,
            (*named, *always),
            always,
            tuple(outputs),
            specs,
            derived,
            _derive(catalogue),
        )

    def feeds(self, name: str | None) -> tuple[int, ...]:
        if name is None:
            return self.always
        return self.dirty.get(name, self.named)


def _log_group(specs: tuple[tuple[str, Windowed, int | None], ...]) -> GroupFn:
    key = specs[0][1].log_key

    def compute(state: CustomerFeatures, now: int, values: dict[str, Any]) -> int | None:
        log = state.logs[key]
        times = log.times
        end = bisect.bisect_right(times, now)
        deadline = None
        for name, spec, window_ms in specs:
            if window_ms is None:
                start = 0
            else:
                start = bisect.bisect_right(times, now - window_ms, 0, end)
                if start < end:
                    exit_at = times[start] + window_ms
                    if deadline is None or exit_at < deadline:
                        deadline = exit_at
            if spec.aggregate == "count" and not log.folded:
                values[name] = end - start
            else:
                values[name] = _aggregate(spec, log, start, end)
        return deadline

    return compute


def _last_values_group(catalogue: Catalogue) -> GroupFn:
    names = tuple(spec.name for specs in catalogue.last_values_by_event.values() for spec in specs)

    def compute(state: CustomerFeatures, _now: int, values: dict[str, Any]) -> None:
        for name in names:
            values[name] = state.last_values.get(name)

    return compute


def _session_group(catalogue: Catalogue) -> GroupFn:
    wanted = tuple(name for name in catalogue.builtins if name in SESSION_BUILTINS)
    gap = catalogue.session_gap_ms
    # where each wanted value is in ``found`` below (the views last: two names read them)
    order = (
        "session_events",
        "session_duration_ms",
        "session_pages",
        "last_session_duration_ms",
        "last_session_products_viewed",
        "recent_visit_duration_ms",
        "recent_visit_products_viewed",
    )
    slots = tuple((name, order.index(name) if name in order else len(order)) for name in wanted)

    def compute(state: CustomerFeatures, now: int, values: dict[str, Any]) -> int | None:
        log = state.session_log
        size = len(log)
        end = size if not size or log[-1][0] <= now else bisect.bisect_right(log, (now, "\uffff"))
        visits = state._visits
        if visits is None or end != size:
            visits = _LatestVisits.walked(log, end, gap)
            if end == size:  # of the whole log: kept up to date as events are appended
                state._visits = visits
        duration = visits.last_at - visits.first_at
        viewed, before_ms, before_viewed = visits.viewed, visits.before_ms, visits.before_viewed
        recent_ms = duration if duration > before_ms else before_ms
        recent_viewed = viewed if viewed > before_viewed else before_viewed
        if end and now - visits.last_at < gap:  # the latest visit goes on: the current one
            found = (
                visits.events,
                duration,
                visits.paged,
                before_ms,
                before_viewed,
                recent_ms,
                recent_viewed,
                viewed,
            )
            deadline: int | None = visits.last_at + gap
        else:  # no current session: the latest visit is the last ended
            found = (0, 0, 0, duration, viewed, recent_ms, recent_viewed, 0)
            deadline = None
        for name, slot in slots:
            values[name] = found[slot]
        return deadline

    return compute


class _LatestVisits:
    """A customer's latest visit (ongoing or not) and the one before it, of the first
    ``count`` entries of their session log: the session group's walk back from the end,
    carried forward event by event while events are appended after them (``add``)."""

    __slots__ = (
        "before_first",
        "before_ms",
        "before_viewed",
        "count",
        "events",
        "first",
        "first_at",
        "last_at",
        "paged",
        "viewed",
    )

    def __init__(self, count: int) -> None:
        self.count = count
        self.first = -1  # the latest visit's first entry (-1: no visit)
        self.first_at = self.last_at = 0
        self.events = self.paged = self.viewed = 0
        self.before_first = -1  # the visit before's first entry (-1: none)
        self.before_ms = self.before_viewed = 0

    @classmethod
    def walked(cls, log: list[tuple[int, str]], end: int, gap: int) -> _LatestVisits:
        """The visits of ``log[:end]``, walked back from its end."""
        found = cls(end)
        if not end:
            return found
        found.last_at = log[end - 1][0]
        start, found.first_at, found.events, found.paged, found.viewed = _visit_back(
            log, end - 1, gap
        )
        found.first = start + 1
        if start >= 0:  # log[start]: the last event of the visit before
            before, first_at, _, _, found.before_viewed = _visit_back(log, start, gap)
            found.before_first, found.before_ms = before + 1, log[start][0] - first_at
        return found

    def add(self, when: int, kind: str, gap: int) -> None:
        """An entry appended after the ``count`` covered (no earlier than the last of them)."""
        if self.first < 0 or when - self.last_at >= gap:  # a new visit: the latest one before
            if self.first >= 0:
                self.before_first = self.first
                self.before_ms = self.last_at - self.first_at
                self.before_viewed = self.viewed
            self.first, self.first_at = self.count, when
            self.events = self.paged = self.viewed = 0
        self.last_at = when
        self.events += 1
        if kind == "Product Viewed":
            self.viewed += 1
        elif kind in _PAGES:
            self.paged += 1
        self.count += 1

    def shift(self, cut: int) -> bool:
        """The log's first ``cut`` entries dropped; False when they held part of a visit
        kept here (a walk of what is left would see less of it)."""
        self.count -= cut
        self.first -= cut
        if self.before_first >= 0:
            self.before_first -= cut
            if self.before_first < 0:
                return False
        return self.first >= 0


_PAGES = (PAGE_EVENT, SCREEN_EVENT)


def _visit_back(log: list[tuple[int, str]], last: int, gap: int) -> tuple[int, int, int, int, int]:
    """The visit whose last entry is ``log[last]``, walked back: the index of the entry
    before its first (-1: none), its first entry's time, its events, pages and views."""
    later = log[last][0]
    start = last
    events = paged = viewed = 0
    while start >= 0:
        at, kind = log[start]
        if later - at >= gap:
            break
        events += 1
        if kind == "Product Viewed":
            viewed += 1
        elif kind in _PAGES:
            paged += 1
        later = at
        start -= 1
    return start, later, events, paged, viewed


def _cart_group(catalogue: Catalogue) -> GroupFn:
    wanted = tuple(name for name in catalogue.builtins if name in ("cart_value", "cart_items"))

    def compute(state: CustomerFeatures, now: int, values: dict[str, Any]) -> None:
        lines = state.cart.lines(now).values()
        for name in wanted:
            if name == "cart_value":
                value = sum(quantity * price for quantity, price in lines)
                if not math.isfinite(value):  # past the largest float (events may say 1e308)
                    value = bounded_sum([bounded(q * price) for q, price in lines])
                values[name] = round(value, 6)
            else:
                value = sum(quantity for quantity, _ in lines)
                if not math.isfinite(value):
                    value = bounded_sum([quantity for quantity, _ in lines])
                values[name] = value

    return compute


def _top_category(state: CustomerFeatures, now: int, values: dict[str, Any]) -> int | None:
    window_start = now - TOP_CATEGORY_WINDOW_MS
    top, most = None, 0  # the most viewed category, the first by name among equals
    deadline = None
    for category, times in state.category_views.items():
        inside = bisect.bisect_right(times, window_start)
        count = bisect.bisect_right(times, now) - inside
        if count > 0:
            if count > most or (count == most and top is not None and category < top):
                top, most = category, count
            exit_at = times[inside] + TOP_CATEGORY_WINDOW_MS
            if deadline is None or exit_at < deadline:
                deadline = exit_at
    values["top_category_30d"] = top
    return deadline


def _derive(catalogue: Catalogue) -> Callable[[dict[str, Any]], None]:
    """The built-ins computed from windowed features' values (RFM copies, interaction rate)."""
    copies = tuple(  # built-ins that are the value of the one feature they read (RFM)
        (name, BUILTIN_INPUTS[name][0].name)
        for name in catalogue.builtins
        if name.startswith("rfm_")
    )
    rate = "interaction_rate_30d" in catalogue.builtins
    views, adds = (spec.name for spec in BUILTIN_INPUTS["interaction_rate_30d"])

    def derive(values: dict[str, Any]) -> None:
        for name, read in copies:
            values[name] = values[read]
        if rate:
            viewed = values[views]
            values["interaction_rate_30d"] = None if not viewed else round(values[adds] / viewed, 6)

    return derive


def _always_group(catalogue: Catalogue) -> GroupFn:
    since = tuple((s.name, s.event) for s in catalogue.all_specs() if isinstance(s, Since))
    totals = tuple(
        n for n in catalogue.builtins if n in ("first_seen", "last_seen", "events_total")
    )
    sequences = tuple(spec.name for spec in catalogue.sequences)
    derive = _derive(catalogue)

    def compute(state: CustomerFeatures, now: int, values: dict[str, Any]) -> None:
        for name, event in since:
            last = state.last_at.get(event)
            values[name] = None if last is None or last > now else now - last
        for name in sequences:  # a time since too: rules' thresholds set its deadlines
            completed = state.sequences[name].completed
            values[name] = None if completed is None or completed > now else now - completed
        derive(values)
        for name in totals:
            values[name] = getattr(state, name)

    return compute


def _min(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)
