"""An oracle of the shipped rules, written from the contract's words alone (DESIGN.md,
"Semantics" and "Shipped rules"): it imports nothing from ``pipelines/`` or ``app/rules``. From
the raw messages, deduplicated by messageId, it decides for every customer, segment and instant
``t`` whether the customer is in the segment, and lists every instant where that changes.

- "In the last W" at ``t`` is event times in ``(t - W, t]``: an event counts from its own
  instant and leaves exactly at its time + W. A count with no window is a lifetime count.
- Events at the same instant apply together: the state at ``t`` is the one after all of them.
- The cart: ``Product Added`` adds ``quantity`` (default 1) of ``product_id`` at ``price``,
  ``Product Removed`` removes ``quantity`` (default: all) of it, ``Order Completed`` empties it;
  ``cart_value`` is the sum of price x quantity.

Why evaluating at a finite set of instants finds every change: each condition is a step
function of ``t`` that is constant between two "candidate" instants. A windowed count changes
only when ``t`` reaches an event's time (it enters) or that time + W (it leaves); the cart only
at a cart event; "the last Product Added at least 30 min ago" only at an add or 30 min after
one. So the candidates are every event time, and every event time plus every duration a
shipped rule names; membership at a candidate holds until the next one.

It also reads what the real system recorded (``recorded_transitions``) and reports where the
two differ (``mismatch_report``).
"""

from __future__ import annotations

import bisect
import itertools
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import redis

from app.profiles.keys import transitions_key

SECOND = 1_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

VIEWED = "Product Viewed"
ADDED = "Product Added"
REMOVED = "Product Removed"
CHECKOUT = "Checkout Started"
ORDERED = "Order Completed"
CART_EVENTS = (ADDED, REMOVED, ORDERED)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# (customer, segment, kind, at), the shape both sides are compared in
Change = tuple[str, str, str, int]


# --- the oracle -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RawEvent:
    at: int  # event time, ms
    name: str
    properties: dict[str, Any]
    message_id: str


def event_time_ms(text: str) -> int:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def raw_events(messages: Iterable[dict[str, Any]]) -> dict[str, list[RawEvent]]:
    """Each customer's track events in event-time order, a messageId counted once. The customer
    is ``userId``, else ``anonymousId``."""
    seen: set[str] = set()
    found: dict[str, list[RawEvent]] = {}
    for message in messages:
        if message["messageId"] in seen:
            continue
        seen.add(message["messageId"])
        customer = message.get("userId") or message["anonymousId"]
        event = RawEvent(
            event_time_ms(message["timestamp"]),
            message["event"],
            message.get("properties") or {},
            message["messageId"],
        )
        found.setdefault(customer, []).append(event)
    for events in found.values():
        events.sort(key=lambda event: event.at)
    return found


class AmbiguousInstant(ValueError):
    """Cart changes at one instant whose result depends on their order: the contract says they
    apply together, not in which order, so the oracle has no answer."""


def _apply_to_cart(cart: dict[str, tuple[Decimal, Decimal]], event: RawEvent) -> None:
    """``cart``: product -> (quantity, unit price)."""
    if event.name == ORDERED:
        cart.clear()
        return
    product = str(event.properties["product_id"])
    quantity = event.properties.get("quantity")
    if event.name == ADDED:
        price = Decimal(str(event.properties["price"]))
        held, held_price = cart.get(product, (Decimal(0), price))
        # One price per product in the test data: the contract does not say what adding a
        # product at another price does to the units already in the cart.
        assert held_price == price, f"{product} added at {price} and at {held_price}"
        cart[product] = (held + Decimal(1 if quantity is None else str(quantity)), price)
    elif product in cart:  # removed: the quantity, or all of it
        held, price = cart[product]
        left = Decimal(0) if quantity is None else held - Decimal(str(quantity))
        if left > 0:
            cart[product] = (left, price)
        else:
            del cart[product]


def _cart_after(
    cart: dict[str, tuple[Decimal, Decimal]], together: list[RawEvent]
) -> dict[str, tuple[Decimal, Decimal]]:
    """The cart after events of one instant, which must not depend on their order."""
    results = []
    orders = itertools.permutations(together) if len(together) <= 5 else [together]
    for order in orders:
        after = dict(cart)
        for event in order:
            _apply_to_cart(after, event)
        results.append(after)
    if any(result != results[0] for result in results):
        raise AmbiguousInstant(f"cart events at {together[0].at}: {together}")
    return results[0]


class CustomerHistory:
    """One customer's deduplicated events, answering the rules' questions at any instant."""

    def __init__(self, events: list[RawEvent]) -> None:
        self.events = events
        self.times: dict[str, list[int]] = {}  # event name -> sorted times
        for event in events:
            self.times.setdefault(event.name, []).append(event.at)
        # The cart value from each cart instant on, all of that instant's events applied.
        self.cart_steps: list[tuple[int, Decimal]] = []
        cart: dict[str, tuple[Decimal, Decimal]] = {}
        cart_events = [event for event in events if event.name in CART_EVENTS]
        for at, group in itertools.groupby(cart_events, key=lambda event: event.at):
            cart = _cart_after(cart, list(group))
            self.cart_steps.append((at, sum((q * p for q, p in cart.values()), Decimal(0))))

    def count(self, name: str, t: int, within: int | None = None) -> int:
        """Events ``name`` with time in ``(t - within, t]`` (``within`` None: ever, up to t)."""
        times = self.times.get(name, [])
        first = 0 if within is None else bisect.bisect_right(times, t - within)
        return bisect.bisect_right(times, t) - first

    def last(self, name: str, t: int) -> int | None:
        """The time of the last ``name`` at or before ``t``."""
        times = self.times.get(name, [])
        index = bisect.bisect_right(times, t)
        return times[index - 1] if index else None

    def cart_value(self, t: int) -> Decimal:
        index = bisect.bisect_right(self.cart_steps, (t, Decimal("Infinity")))
        return self.cart_steps[index - 1][1] if index else Decimal(0)


def browsing_enthusiast(c: CustomerHistory, t: int) -> bool:
    # 5+ Product Viewed in the last 10 min and no Order Completed in the last 10 min.
    return c.count(VIEWED, t, 10 * MINUTE) >= 5 and c.count(ORDERED, t, 10 * MINUTE) == 0


def cart_abandoner(c: CustomerHistory, t: int) -> bool:
    # cart_value > 0 and the last Product Added at least 30 min ago.
    last_add = c.last(ADDED, t)
    return c.cart_value(t) > 0 and last_add is not None and t - last_add >= 30 * MINUTE


def lapsed_customer(c: CustomerHistory, t: int) -> bool:
    # At least one Order Completed ever, none in the last 30 days.
    return c.count(ORDERED, t) >= 1 and c.count(ORDERED, t, 30 * DAY) == 0


def high_intent_buyer(c: CustomerHistory, t: int) -> bool:
    # (2+ Checkout Started in the last 24 h, or cart_value > 200), no Order Completed in 24 h.
    wants = c.count(CHECKOUT, t, 24 * HOUR) >= 2 or c.cart_value(t) > 200
    return wants and c.count(ORDERED, t, 24 * HOUR) == 0


def loyal_customer(c: CustomerHistory, t: int) -> bool:
    # 3+ Order Completed in the last 90 days.
    return c.count(ORDERED, t, 90 * DAY) >= 3


SEGMENTS: dict[str, Callable[[CustomerHistory, int], bool]] = {
    "browsing-enthusiasts": browsing_enthusiast,
    "cart-abandoners": cart_abandoner,
    "lapsed-customers": lapsed_customer,
    "high-intent-buyers": high_intent_buyer,
    "loyal-customers": loyal_customer,
}
# Every duration the rules above name: an event's time plus one of them is where it may leave
# a window, or where "at least 30 min ago" turns.
DURATIONS = (10 * MINUTE, 30 * MINUTE, 24 * HOUR, 30 * DAY, 90 * DAY)


def candidate_instants(history: CustomerHistory) -> list[int]:
    times = {event.at for event in history.events}
    return sorted(times | {at + duration for at in times for duration in DURATIONS})


def customer_transitions(customer: str, history: CustomerHistory) -> list[Change]:
    """Every enter and exit of every segment, in time order (exits before enters at one
    instant); before the first event the customer is in no segment."""
    inside: set[str] = set()
    changes: list[Change] = []
    for t in candidate_instants(history):
        now = {segment for segment, holds in SEGMENTS.items() if holds(history, t)}
        changes += [(customer, s, "exit", t) for s in sorted(inside - now)]
        changes += [(customer, s, "enter", t) for s in sorted(now - inside)]
        inside = now
    return changes


def oracle_transitions(messages: Iterable[dict[str, Any]]) -> dict[str, list[Change]]:
    """Customer -> their transitions, for every customer with at least one."""
    found = {}
    for customer, events in raw_events(messages).items():
        changes = customer_transitions(customer, CustomerHistory(events))
        if changes:
            found[customer] = changes
    return found


# --- the real system --------------------------------------------------------------------------


def _in_order(change: Change) -> tuple[int, bool, str]:
    """Time order; at one instant, exits first, then by segment."""
    _, segment, kind, at = change
    return at, kind != "exit", segment


def recorded_transitions(client: redis.Redis, customers: Iterable[str]) -> dict[str, list[Change]]:
    """What the dataflow's sink wrote: each customer's transitions sorted set."""
    customers = list(customers)
    pipe = client.pipeline(transaction=False)
    for customer in customers:
        pipe.zrange(transitions_key(customer), 0, -1)
    found = {}
    for customer, members in zip(customers, pipe.execute(), strict=True):
        items = [orjson.loads(member) for member in members]
        if items:
            changes = [(customer, i["segment"], i["kind"], i["at"]) for i in items]
            found[customer] = sorted(changes, key=_in_order)
    return found


def describe(at: int) -> str:
    return (_EPOCH + timedelta(milliseconds=at)).isoformat(timespec="milliseconds")[:-6]


def mismatch_report(
    expected: dict[str, list[Change]],
    got: dict[str, list[Change]],
    events: dict[str, list[RawEvent]],
    *,
    shown: int = 6,
) -> str:
    """The first differing customers: what each side says, and the customer's events."""
    differing = sorted(c for c in expected.keys() | got.keys() if expected.get(c) != got.get(c))
    lines = [f"{len(differing)} customers differ (of {len(expected.keys() | got.keys())})"]
    for customer in differing[:shown]:
        want, have = set(expected.get(customer, [])), set(got.get(customer, []))
        lines.append(f"\n== {customer}")
        for label, changes in (("oracle only", want - have), ("system only", have - want)):
            for _, segment, kind, at in sorted(changes, key=_in_order):
                lines.append(f"  {label:12} {describe(at)} {kind:5} {segment}")
        lines.append("  events:")
        for event in events.get(customer, [])[:80]:
            properties = json.dumps(event.properties, sort_keys=True)
            lines.append(f"    {describe(event.at)} {event.name:16} {properties}")
    return "\n".join(lines)
