"""Seeded shoppers of an e-commerce shop, for replay tests.

``shop_history(seed=...)`` gives Segment track messages (``Product Viewed``, ``Product Added``,
``Product Removed``, ``Checkout Started``, ``Order Completed``) of several personas over 100 days
of event time, in the order a collector would have received them: some events arrive a little
late (never more than the allowed lateness behind their customer's newest event), some arrive
twice (the same message, same messageId), some share a millisecond, and dedicated customers put
events exactly on the shipped rules' window bounds (an order 30 days after the previous one, a
fifth view 10 minutes after the first, a second checkout 24 hours after the first, ...).

The history is deterministic for a seed and lies wholly in the past (2025), so a replay that
ends on today's wall clock leaves every deadline due.

Two things the contract leaves open are kept out on purpose: a product has one price (the
contract does not say what adding it again at another price does to what is already in the
cart), and events of one customer at one millisecond never include two cart changes whose order
matters (an add and an order; a removal and an add of the same product).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

SECOND = 1_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

START_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z
SPAN_MS = 100 * DAY
END_MS = START_MS + SPAN_MS  # every event is before this instant
ALLOWED_LATENESS_MS = 5 * MINUTE  # SEGFLOW_ALLOWED_LATENESS's default

LATE_SHARE = 0.04  # events held back by up to the allowed lateness on their way in
DUPLICATE_SHARE = 0.02  # events sent twice

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def iso(ms: int) -> str:
    """An instant in ms as ISO-8601 text with every millisecond (whole-number arithmetic)."""
    moment = _EPOCH + timedelta(milliseconds=ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _catalogue() -> dict[str, int]:
    """Product id -> price in cents, fixed for the whole history."""
    rng = random.Random(7)
    prices = {f"p{n:03d}": rng.randrange(199, 8_000) for n in range(100)}
    prices |= {f"p{n:03d}": rng.randrange(8_000, 30_000) for n in range(100, 120)}
    prices |= {
        "sample": 0,  # free: in the cart, worth nothing
        "gift-wrap": 50,
        "bike": 10_000,  # two are a cart of exactly 200.00
        "lamp": 6_667,  # three are 200.01
        "tv": 25_000,
    }
    return prices


PRICES = _catalogue()
EVERYDAY = [f"p{n:03d}" for n in range(100)]
PREMIUM = [f"p{n:03d}" for n in range(100, 120)]


class Shopper:
    """One customer's messages, built session by session in event-time order."""

    def __init__(self, customer_id: str, rng: random.Random, *, anonymous: bool = False) -> None:
        self.customer_id = customer_id
        self.rng = rng
        self.anonymous = anonymous
        self.messages: list[dict[str, Any]] = []
        self.cart: dict[str, int] = {}  # what the shopper believes is in it: picks removals
        self.held_back: dict[str, int] = {}  # messageId -> how long it takes to arrive
        self._ids = 0

    def _track(self, event: str, at: int, properties: dict[str, Any]) -> None:
        if not START_MS <= at < END_MS:
            return  # the history is cut at its end
        self._ids += 1
        self.messages.append(
            {
                "type": "track",
                "anonymousId" if self.anonymous else "userId": self.customer_id,
                "event": event,
                "timestamp": iso(at),
                "properties": properties,
                "messageId": f"{self.customer_id}-{self._ids}",
            }
        )

    def hold_back(self, delay: int) -> None:
        """The last message arrives ``delay`` after its event time (at most the lateness)."""
        assert 0 <= delay <= ALLOWED_LATENESS_MS
        self.held_back[self.messages[-1]["messageId"]] = delay

    def pause(self, low: int, high: int, *, same_ms: float = 0.0) -> int:
        """A pause between two events; 0 (the same millisecond) with probability ``same_ms``."""
        if self.rng.random() < same_ms:
            return 0
        return self.rng.randint(low, high)

    def view(self, at: int, product: str | None = None) -> None:
        product = product or self.rng.choice(EVERYDAY + PREMIUM)
        self._track("Product Viewed", at, {"product_id": product, "price": PRICES[product] / 100})

    def add(self, at: int, product: str, quantity: int | None = None) -> None:
        properties: dict[str, Any] = {"product_id": product, "price": PRICES[product] / 100}
        if quantity is not None:
            properties["quantity"] = quantity
        self._track("Product Added", at, properties)
        self.cart[product] = self.cart.get(product, 0) + (quantity or 1)

    def remove(self, at: int, product: str, quantity: int | None = None) -> None:
        properties: dict[str, Any] = {"product_id": product}
        if quantity is not None:
            properties["quantity"] = quantity
        self._track("Product Removed", at, properties)
        left = 0 if quantity is None else self.cart.get(product, 0) - quantity
        if left > 0:
            self.cart[product] = left
        else:
            self.cart.pop(product, None)

    def checkout(self, at: int) -> None:
        self._track("Checkout Started", at, {"checkout_id": f"k{self._ids}", "value": self.total})

    def order(self, at: int) -> None:
        revenue = self.total or self.rng.randrange(500, 9_000) / 100
        self._track("Order Completed", at, {"order_id": f"o{self._ids}", "revenue": revenue})
        self.cart.clear()

    @property
    def total(self) -> float:
        return sum(PRICES[p] * q for p, q in self.cart.items()) / 100


# --- sessions: what a shopper does in one visit; each returns the instant it ends -------------


def browse(s: Shopper, t: int) -> int:
    """Many products, quickly: a browsing enthusiast once five fall within 10 minutes."""
    for _ in range(s.rng.randint(2, 14)):
        s.view(t)
        t += s.pause(5 * SECOND, 150 * SECOND, same_ms=0.06)
    return t


def _pick_products(s: Shopper, t: int, count: int) -> int:
    for _ in range(count):
        product = s.rng.choice(EVERYDAY if s.rng.random() < 0.8 else PREMIUM)
        s.view(t, product)
        t += s.pause(5 * SECOND, 90 * SECOND, same_ms=0.2)  # a view and its add together
        s.add(t, product, s.rng.choice([None, None, 1, 2, 3]))
        t += s.pause(10 * SECOND, 5 * MINUTE)
    return t


def abandon(s: Shopper, t: int) -> int:
    """Adds one to three products and leaves; sometimes takes one out first."""
    t = browse(s, t) if s.rng.random() < 0.5 else t
    t = _pick_products(s, t, s.rng.randint(1, 3))
    roll = s.rng.random()
    if roll < 0.25 and s.cart:
        product = s.rng.choice(sorted(s.cart))
        s.remove(t, product, s.rng.choice([None, 1]))
    elif roll < 0.3:
        absent = [p for p in EVERYDAY if p not in s.cart]
        s.remove(t, s.rng.choice(absent))  # nothing of it in the cart: changes nothing
    return t + s.pause(SECOND, MINUTE)


def buy(s: Shopper, t: int) -> int:
    """Views, adds, checks out and orders within minutes."""
    t = _pick_products(s, t, s.rng.randint(1, 3))
    s.checkout(t)
    t += s.pause(30 * SECOND, 10 * MINUTE, same_ms=0.05)  # a checkout and its order together
    s.order(t)
    return t + s.pause(SECOND, MINUTE)


def hesitate(s: Shopper, t: int) -> int:
    """Starts checkout, comes back to it minutes or hours later, and mostly does not order."""
    t = _pick_products(s, t, s.rng.randint(1, 2))
    s.checkout(t)
    t += s.pause(MINUTE, 20 * HOUR)
    s.checkout(t)
    if s.rng.random() < 0.3:
        t += s.pause(MINUTE, 30 * HOUR)
        s.order(t)
    return t + s.pause(SECOND, MINUTE)


def big_cart(s: Shopper, t: int) -> int:
    """A cart over 200 (or of exactly 200, which is not over it)."""
    shape = s.rng.randrange(4)
    if shape == 0:
        s.add(t, "tv")
    elif shape == 1:
        s.add(t, "bike", 2)  # 200.00
    elif shape == 2:
        s.add(t, "lamp", 3)  # 200.01
    else:
        t = _pick_products(s, t, s.rng.randint(2, 4))
        for product in s.rng.sample(PREMIUM, 2):
            t += s.pause(10 * SECOND, 3 * MINUTE)
            s.add(t, product)
    t += s.pause(MINUTE, 50 * MINUTE)
    roll = s.rng.random()
    if roll < 0.3 and s.cart:
        s.remove(t, s.rng.choice(sorted(s.cart)), s.rng.choice([None, 1]))
    elif roll < 0.6:
        s.checkout(t)
        t += s.pause(MINUTE, 3 * HOUR)
        s.order(t)
    return t + s.pause(SECOND, MINUTE)


Session = Callable[[Shopper, int], int]


def sessions(
    s: Shopper,
    mix: dict[Session, float],
    *,
    gap: tuple[int, int],
    start: int = START_MS,
    until: int = END_MS,
) -> int:
    """Sessions drawn from ``mix`` (weights), ``gap`` apart, from near ``start`` to ``until``;
    returns the end of the last one."""
    kinds, weights = list(mix), list(mix.values())
    t = start + s.rng.randint(0, gap[1])
    while t < until:
        t = s.rng.choices(kinds, weights)[0](s, t)
        t += s.rng.randint(*gap)
    return t


# --- personas ---------------------------------------------------------------------------------


def browser(s: Shopper) -> None:
    sessions(s, {browse: 0.85, abandon: 0.05, buy: 0.1}, gap=(HOUR, 4 * DAY))


def cart_abandoner(s: Shopper) -> None:
    sessions(s, {abandon: 0.6, browse: 0.2, buy: 0.2}, gap=(6 * HOUR, 6 * DAY))


def buyer(s: Shopper) -> None:
    sessions(s, {buy: 0.5, browse: 0.3, abandon: 0.2}, gap=(DAY, 12 * DAY))


def loyal_buyer(s: Shopper) -> None:
    sessions(s, {buy: 0.7, browse: 0.3}, gap=(2 * DAY, 14 * DAY))


def lapsed_customer(s: Shopper) -> None:
    """Buys for a few weeks, then at most browses: the last order is over 30 days before the end."""
    stop = START_MS + s.rng.randint(20, 60) * DAY
    sessions(s, {buy: 0.6, browse: 0.4}, gap=(2 * DAY, 8 * DAY), until=stop)
    if s.rng.random() < 0.5:
        sessions(s, {browse: 1.0}, gap=(5 * DAY, 20 * DAY), start=stop + 5 * DAY)


def high_intent(s: Shopper) -> None:
    sessions(s, {hesitate: 0.6, buy: 0.2, browse: 0.2}, gap=(12 * HOUR, 5 * DAY))


def big_spender(s: Shopper) -> None:
    sessions(s, {big_cart: 0.6, buy: 0.2, browse: 0.2}, gap=(12 * HOUR, 5 * DAY))


def anonymous_browser(s: Shopper) -> None:
    sessions(s, {browse: 0.9, abandon: 0.1}, gap=(2 * HOUR, 5 * DAY))


# persona -> (customers, behaviour)
PERSONAS: dict[str, tuple[int, Callable[[Shopper], None]]] = {
    "browser": (50, browser),
    "abandoner": (40, cart_abandoner),
    "buyer": (45, buyer),
    "loyal": (40, loyal_buyer),
    "lapsed": (40, lapsed_customer),
    "intent": (30, high_intent),
    "bigcart": (25, big_spender),
    "anon": (15, anonymous_browser),
}


# --- customers whose events sit exactly on the rules' bounds (t: where the script starts) ------


def fifth_view_as_first_leaves(s: Shopper, t: int) -> None:
    # At t+10m the first view leaves as the fifth arrives: still four. A sixth view at that
    # same millisecond makes five.
    for offset in (0, MINUTE, 2 * MINUTE, 3 * MINUTE, 10 * MINUTE, 10 * MINUTE):
        s.view(t + offset)


def order_leaves_as_fifth_view_arrives(s: Shopper, t: int) -> None:
    s.order(t)
    for offset in (6, 7, 8, 9, 10):
        s.view(t + offset * MINUTE)


def five_views_in_one_millisecond(s: Shopper, t: int) -> None:
    for _ in range(5):
        s.view(t)


def order_ten_minutes_after_first_view(s: Shopper, t: int) -> None:
    for minute in range(5):
        s.view(t + minute * MINUTE)
    s.order(t + 10 * MINUTE)


def add_again_at_thirty_minutes(s: Shopper, t: int) -> None:
    s.add(t, "p001")
    s.add(t + 30 * MINUTE, "p002")


def order_at_thirty_minutes(s: Shopper, t: int) -> None:
    s.add(t, "p003", 2)
    s.order(t + 30 * MINUTE)


def remove_all_at_thirty_minutes(s: Shopper, t: int) -> None:
    s.add(t, "p004", 2)
    s.remove(t + 30 * MINUTE, "p004")


def remove_part_then_more_than_held(s: Shopper, t: int) -> None:
    s.add(t, "p005", 3)
    s.remove(t + 10 * MINUTE, "p005", 1)
    s.remove(t + 50 * MINUTE, "p005", 5)


def free_sample_only(s: Shopper, t: int) -> None:
    s.add(t, "sample")
    s.add(t + HOUR, "sample", 3)


def cart_of_exactly_200(s: Shopper, t: int) -> None:
    s.add(t, "bike", 2)
    s.add(t + 5 * MINUTE, "gift-wrap")
    s.remove(t + 10 * MINUTE, "gift-wrap")


def cart_of_200_01(s: Shopper, t: int) -> None:
    s.add(t, "lamp", 3)
    s.remove(t + 2 * HOUR, "lamp", 1)


def big_cart_after_an_order(s: Shopper, t: int) -> None:
    s.order(t)
    s.add(t + HOUR, "tv")
    s.order(t + 25 * HOUR)  # an hour after the first order left the 24-hour window


def second_checkout_a_day_later(s: Shopper, t: int) -> None:
    s.checkout(t)
    s.checkout(t + 24 * HOUR)  # the first leaves as this one arrives
    s.checkout(t + 25 * HOUR)


def order_a_day_before_checkouts_count(s: Shopper, t: int) -> None:
    s.order(t)
    s.checkout(t + HOUR)
    s.checkout(t + 2 * HOUR)


def checkout_and_order_together(s: Shopper, t: int) -> None:
    # The second checkout in 24 h and an order at one instant, which apply together: never a
    # high-intent buyer.
    s.checkout(t)
    s.checkout(t + HOUR)
    s.order(t + HOUR)


def fifth_view_and_order_together(s: Shopper, t: int) -> None:
    for minute in range(5):
        s.view(t + minute * MINUTE)
    s.order(t + 4 * MINUTE)  # with the fifth view: never a browsing enthusiast


def same_instant_shopping(s: Shopper, t: int) -> None:
    s.view(t, "p010")
    s.add(t, "p010")
    s.add(t, "p011", 2)  # two products at once
    s.checkout(t + MINUTE)
    s.add(t + MINUTE, "p012")
    s.order(t + 2 * HOUR)
    s.view(t + 2 * HOUR, "p013")


def order_exactly_thirty_days_later(s: Shopper, t: int) -> None:
    s.order(t)
    s.order(t + 30 * DAY)  # never lapsed in between


def lapsed_then_back(s: Shopper, t: int) -> None:
    s.order(t)
    s.order(t + 40 * DAY)


def late_by_the_allowed_lateness(s: Shopper, t: int) -> None:
    s.view(t)
    s.hold_back(ALLOWED_LATENESS_MS)  # arrives after the next view: exactly the lateness behind
    s.view(t + ALLOWED_LATENESS_MS)
    s.add(t + ALLOWED_LATENESS_MS, "p020")


def fourth_order_as_first_leaves(s: Shopper, t: int) -> None:
    for day in (0, 20, 40, 90):  # at 90d the first order leaves as the fourth arrives
        s.order(t + day * DAY)


Script = Callable[[Shopper, int], None]
BOUNDARY_SCRIPTS: dict[str, tuple[Script, int]] = {  # name -> (script, how long it lasts)
    "fifthview": (fifth_view_as_first_leaves, HOUR),
    "orderleaves": (order_leaves_as_fifth_view_arrives, HOUR),
    "sameviews": (five_views_in_one_millisecond, HOUR),
    "orderat10m": (order_ten_minutes_after_first_view, HOUR),
    "addat30m": (add_again_at_thirty_minutes, HOUR),
    "orderat30m": (order_at_thirty_minutes, HOUR),
    "removeat30m": (remove_all_at_thirty_minutes, HOUR),
    "partremove": (remove_part_then_more_than_held, HOUR),
    "sample": (free_sample_only, 2 * HOUR),
    "cart200": (cart_of_exactly_200, HOUR),
    "cart200.01": (cart_of_200_01, 3 * HOUR),
    "bigafterorder": (big_cart_after_an_order, 2 * DAY),
    "checkoutat24h": (second_checkout_a_day_later, 2 * DAY),
    "orderbeforecheckouts": (order_a_day_before_checkouts_count, 2 * DAY),
    "checkoutorder": (checkout_and_order_together, 2 * DAY),
    "vieworder": (fifth_view_and_order_together, HOUR),
    "sameinstant": (same_instant_shopping, 3 * HOUR),
    "order30d": (order_exactly_thirty_days_later, 31 * DAY),
    "lapsedback": (lapsed_then_back, 41 * DAY),
    "fourthorder": (fourth_order_as_first_leaves, 91 * DAY),
    "lateness": (late_by_the_allowed_lateness, HOUR),
}
BOUNDARY_COPIES = 4


# --- the whole history ------------------------------------------------------------------------


@dataclass(frozen=True)
class ShopHistory:
    messages: list[dict[str, Any]]  # in arrival order, duplicates included
    customers: dict[str, str]  # customer id -> persona or boundary script


def shop_history(*, seed: int, scale: float = 1.0) -> ShopHistory:
    """Every persona's customers (``scale`` times as many) and the boundary customers, merged
    into one arrival order with late and duplicate messages."""
    rng = random.Random(seed)
    shoppers: list[Shopper] = []
    customers: dict[str, str] = {}
    for persona, (count, behave) in PERSONAS.items():
        for n in range(max(1, round(count * scale))):
            customer = f"{persona}-{n:03d}"
            shopper = Shopper(customer, random.Random(rng.random()), anonymous=persona == "anon")
            behave(shopper)
            shoppers.append(shopper)
            customers[customer] = persona
    for name, (script, lasts) in BOUNDARY_SCRIPTS.items():
        for n in range(BOUNDARY_COPIES):
            customer = f"edge-{name}-{n}"
            shopper = Shopper(customer, random.Random(rng.random()))
            script(shopper, START_MS + rng.randrange(SPAN_MS - lasts))
            shoppers.append(shopper)
            customers[customer] = name
    return ShopHistory(arrival_order(shoppers, rng), customers)


def _time_of(message: dict[str, Any]) -> int:
    moment = datetime.fromisoformat(message["timestamp"])
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def arrival_order(shoppers: list[Shopper], rng: random.Random) -> list[dict[str, Any]]:
    """Every message in the order it reaches the collector: at its own time, or held back by
    up to the allowed lateness (so it may come after newer events of its customer, but never
    more than the lateness behind the newest of them); some a second time.

    A message arriving at ``time + delay`` with ``delay <= lateness`` comes after only events
    whose time is at most that arrival, so its customer's newest event then is at most
    ``lateness`` newer than it.
    """
    arrivals: list[tuple[int, bool, int, dict[str, Any]]] = []
    for shopper in shoppers:
        for message in shopper.messages:
            at = _time_of(message)
            roll = rng.random()
            if message["messageId"] in shopper.held_back:
                delay = shopper.held_back[message["messageId"]]
            elif roll < LATE_SHARE:
                delay = rng.randint(1, ALLOWED_LATENESS_MS)
            else:
                delay = 0
            # At one arrival instant, what was held back comes last.
            arrivals.append((at + delay, delay > 0, len(arrivals), message))
            if rng.random() < DUPLICATE_SHARE:
                again = at + rng.randint(0, ALLOWED_LATENESS_MS)  # a retry: the same message
                arrivals.append((again, True, len(arrivals), dict(message)))
    arrivals.sort(key=lambda item: item[:3])
    return [item[3] for item in arrivals]
