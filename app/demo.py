"""The simulated shop behind ``segflow demo`` and ``segflow up --demo``.

Shoppers of a few kinds (browsers, cart abandoners, buyers, returning customers, anonymous
visitors who sign up) send Segment e-commerce events to the collector over real HTTP, at a
steady rate, so a fresh install has live segments to look at.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

CATALOGUE = [
    {"product_id": f"sku-{n:03d}", "category": category, "price": price}
    for n, (category, price) in enumerate(
        [
            ("shoes", 89.0),
            ("shoes", 129.0),
            ("shirts", 35.0),
            ("shirts", 49.0),
            ("bags", 210.0),
            ("bags", 75.0),
            ("hats", 25.0),
            ("socks", 9.5),
        ]
        * 3
    )
]
PERSONAS = ("browser", "abandoner", "buyer", "returning", "signup")


@dataclass
class Shopper:
    customer_id: str
    persona: str


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _track(
    user: str, event: str, properties: dict[str, Any], *, anonymous: bool = False
) -> dict[str, Any]:
    ids = {"anonymousId": user} if anonymous else {"userId": user}
    return {
        "type": "track",
        "event": event,
        "properties": properties,
        "timestamp": _now(),
        "messageId": str(uuid.uuid4()),
        **ids,
    }


def visit(shopper: Shopper, rng: random.Random) -> Iterator[dict[str, Any]]:
    """One visit's events, in order."""
    user = shopper.customer_id
    anonymous = shopper.persona == "signup"
    viewed = rng.sample(CATALOGUE, k=rng.randint(1, 7 if shopper.persona == "browser" else 3))
    yield {
        "type": "page",
        "name": "Home",
        "timestamp": _now(),
        "messageId": str(uuid.uuid4()),
        **({"anonymousId": user} if anonymous else {"userId": user}),
    }
    for product in viewed:
        yield _track(user, "Product Viewed", dict(product), anonymous=anonymous)
    if shopper.persona == "browser":
        return
    product = viewed[-1]
    yield _track(
        user, "Product Added", {**product, "quantity": rng.randint(1, 2)}, anonymous=anonymous
    )
    if shopper.persona == "signup":
        known = f"user-{user.removeprefix('anon-')}"
        yield {
            "type": "identify",
            "userId": known,
            "anonymousId": user,
            "traits": {"email": f"{known}@example.com", "plan": "free"},
            "timestamp": _now(),
            "messageId": str(uuid.uuid4()),
        }
        shopper.customer_id, shopper.persona = known, "buyer"
        user = known
    if shopper.persona in ("buyer", "returning"):
        yield _track(user, "Checkout Started", {"value": product["price"]})
        yield _track(
            user,
            "Order Completed",
            {
                "order_id": str(uuid.uuid4())[:8],
                "revenue": product["price"],
                "products": [product],
            },
        )


REPORT_EVERY_S = 10.0


class Unreachable(SystemExit):
    """The collector cannot be reached, or is not a collector: the demo stops."""


@dataclass
class Tally:
    events: int = 0
    accepted: int = 0
    visits: int = 0
    last: str = ""

    def add(self, shopper: Shopper, batch: list[dict[str, Any]], accepted: int) -> None:
        self.visits += 1
        self.events += len(batch)
        self.accepted += accepted
        names = Counter(m.get("event") or m["type"] for m in batch)
        what = ", ".join(f"{name} x{n}" if n > 1 else name for name, n in names.items())
        self.last = f"{shopper.customer_id} ({shopper.persona}): {what}"

    def line(self) -> str:
        return (
            f"demo shop: {self.events:,} events sent in {self.visits:,} visits, "
            f"{self.accepted:,} accepted; last visit {self.last}"
        )


def run(
    *,
    url: str,
    write_key: str,
    rate: float,
    shoppers: int,
    seed: int | None,
    wait_s: float = 0.0,
    echo: Callable[[str], None] = print,
) -> None:
    """Send visits at about ``rate`` events per second until interrupted, saying what it
    sends every ``REPORT_EVERY_S``. The collector must answer within ``wait_s`` of the start
    (at once by default): a refused connection or an answer that is not the collector's stops
    the demo with the reason, rather than retrying a wrong address for ever."""
    rng = random.Random(seed)
    crowd = [
        Shopper(f"anon-{n}" if persona == "signup" else f"shopper-{n}", persona)
        for n in range(shoppers)
        for persona in [rng.choice(PERSONAS)]
    ]
    target = f"{url.rstrip('/')}/v1/batch"
    echo(
        f"demo shop: sending {shoppers} simulated shoppers' events to {target}, "
        f"about {rate:g} per second (Ctrl-C stops)"
    )
    tally = Tally()
    give_up_at = time.monotonic() + wait_s
    reported_at = time.monotonic()
    down = False
    with httpx.Client(auth=(write_key, ""), timeout=10) as client:
        while True:
            shopper = rng.choice(crowd)
            batch = list(visit(shopper, rng))
            try:
                response = client.post(target, json={"batch": batch})
            except httpx.HTTPError as error:
                if not tally.visits:  # never reached: a wrong address, or Segflow not up
                    if time.monotonic() >= give_up_at:
                        raise Unreachable(
                            f"demo shop: cannot reach {target} ({error}); is Segflow running "
                            "there? Start it with `make up`, or give its address with --url"
                        ) from None
                    time.sleep(0.5)
                    continue
                if not down:  # the API is restarting: this visit is lost, as a visitor's
                    echo(f"demo shop: {target} is unreachable ({error}); going on")
                down = True
            else:
                _check(response, target)
                if down:
                    echo(f"demo shop: {target} answers again")
                down = False
                tally.add(shopper, batch, _accepted(response))
            first = tally.visits == 1 and not down
            if first or time.monotonic() - reported_at >= REPORT_EVERY_S:
                echo(tally.line())
                reported_at = time.monotonic()
            time.sleep(len(batch) / rate)


def _check(response: httpx.Response, target: str) -> None:
    """Stop on an answer no retry can change: a refused key, or no collector at ``target``."""
    if response.status_code == 401:
        raise Unreachable(f"demo shop: {target} refused the write key (401)")
    if response.status_code in (404, 405):
        raise Unreachable(
            f"demo shop: {target} answered {response.status_code}: is --url Segflow's address?"
        )


def _accepted(response: httpx.Response) -> int:
    if response.status_code != 200:
        return 0
    try:
        return int(response.json().get("accepted", 0))
    except (ValueError, AttributeError):
        return 0
