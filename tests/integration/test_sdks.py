"""The unchanged Segment and RudderStack Python SDKs, pointed at Segflow, just work: every
message lands exactly once, also when the SDK retries after Segflow answered 503."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from rudderstack.analytics.client import Client as RudderClient
from segment.analytics.client import Client as SegmentClient

from app.main import create_app
from tests.factories import stored_events
from tests.helpers import ServerThread, proxied, through_proxy, wait_for


def segment_client(key: str, url: str, errors: list[Any]) -> SegmentClient:
    return SegmentClient(
        write_key=key,
        host=url,
        on_error=lambda e, _batch: errors.append(e),
        max_retries=20,
        upload_interval=0.05,
    )


def rudder_client(key: str, url: str, errors: list[Any]) -> RudderClient:
    return RudderClient(
        write_key=key,
        host=url,
        on_error=lambda e, _batch: errors.append(e),
        max_retries=20,
        upload_interval=0.05,
    )


SDKS: dict[str, Callable[[str, str, list[Any]], Any]] = {
    "segment": segment_client,
    "rudderstack": rudder_client,
}


@pytest.fixture(params=sorted(SDKS))
def sdk(request: pytest.FixtureRequest) -> Callable[[str, str, list[Any]], Any]:
    return SDKS[request.param]


@pytest.fixture(autouse=True)
def _quiet_sdk_logs() -> Iterator[None]:
    # The SDKs log every retry at ERROR; the retries are what these tests are about.
    loggers = [logging.getLogger(name) for name in ("segment", "rudderstack", "backoff")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


def send_everything(client: Any) -> None:
    client.identify("user-1", {"email": "ada@example.com", "plan": "pro"})
    for i in range(120):  # more than one upload batch
        client.track("user-1", "Product Viewed", {"product_id": f"p{i}", "price": i / 2})
    client.track(anonymous_id="anon-7", event="Product Added", properties={"product_id": "p1"})
    client.page("user-1", category="Docs", name="Pricing", properties={"path": "/pricing"})
    client.screen("user-1", name="Cart")
    client.group("user-1", "acme", {"name": "ACME"})
    client.alias("anon-7", "user-1")


def test_every_call_lands_exactly_once(sdk, api, credentials, redis_client):
    errors: list[Any] = []
    client = sdk(credentials["write_key"], api.url, errors)
    send_everything(client)
    client.flush()
    client.shutdown()

    assert errors == []
    events = stored_events(redis_client)
    assert len(events) == 126
    assert len({e.message_id for e in events}) == 126
    types = sorted({e.type for e in events})
    assert types == ["alias", "group", "identify", "page", "screen", "track"]
    (identify,) = [e for e in events if e.type == "identify"]
    assert identify.traits == {"email": "ada@example.com", "plan": "pro"}
    (alias,) = [e for e in events if e.type == "alias"]
    assert (alias.customer_id, alias.previous_id) == ("user-1", "anon-7")
    (anonymous,) = [e for e in events if e.customer_id == "anon-7"]
    assert anonymous.event == "Product Added"
    views = [e for e in events if e.event == "Product Viewed"]
    assert sorted(e.properties["price"] for e in views) == [i / 2 for i in range(120)]


@pytest.mark.backend_independent
def test_retries_after_503_store_each_message_once(sdk, services, credentials, redis_client):
    conn = redis.Redis.from_url(services.redis_url).connection_pool.connection_kwargs
    with proxied(conn.get("host", "127.0.0.1"), conn["port"]) as proxy:
        settings = services.settings(REDIS_URL=through_proxy(services.redis_url, proxy.port))
        with ServerThread(create_app(settings)) as api:
            errors: list[Any] = []
            client = sdk(credentials["write_key"], api.url, errors)
            for i in range(50):
                client.track("user-1", "Product Viewed", {"product_id": f"a{i}"})
            client.flush()

            proxy.cut()  # Redis is unreachable: Segflow answers 503, the SDK keeps retrying
            for i in range(50):
                client.track("user-1", "Product Viewed", {"product_id": f"b{i}"})
            time.sleep(1.5)
            assert len(stored_events(redis_client)) == 50

            proxy.restore()
            client.flush()
            client.shutdown()
            wait_for(lambda: len(stored_events(redis_client)) >= 100)

    assert errors == []
    events = stored_events(redis_client)
    assert sorted(e.properties["product_id"] for e in events) == sorted(
        [f"a{i}" for i in range(50)] + [f"b{i}" for i in range(50)]
    )


def test_a_wrong_write_key_is_reported_to_the_sdk_not_crashed_on(sdk, api, redis_client):
    errors: list[Any] = []
    client = sdk("sk_not-a-key", api.url, errors)
    client.track("user-1", "Product Viewed")
    client.flush()
    client.shutdown()
    assert len(errors) == 1
    assert getattr(errors[0], "status", None) == 401
    assert "write key" in str(errors[0])
    assert stored_events(redis_client) == []
