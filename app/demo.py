"""The simulated shop behind ``segflow demo`` and ``segflow up --demo``.

Shoppers of a few kinds (browsers, cart abandoners, buyers, returning customers, anonymous
visitors who sign up) send Segment e-commerce events to the collector over real HTTP, at a
steady rate, so a fresh install has live segments to look at.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
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


def run(*, url: str, write_key: str, rate: float, shoppers: int, seed: int | None) -> None:
    """Send visits at about ``rate`` events per second until interrupted."""
    rng = random.Random(seed)
    crowd = [
        Shopper(f"anon-{n}" if persona == "signup" else f"shopper-{n}", persona)
        for n in range(shoppers)
        for persona in [rng.choice(PERSONAS)]
    ]
    with httpx.Client(base_url=url, auth=(write_key, ""), timeout=10) as client:
        while True:
            batch = list(visit(rng.choice(crowd), rng))
            try:
                response = client.post("/v1/batch", json={"batch": batch})
                if response.status_code == 401:
                    raise SystemExit("demo shop: the collector refused the write key")
            except httpx.HTTPError:
                pass  # the API is restarting; this visit is lost, as a real visitor's would be
            time.sleep(len(batch) / rate)
