"""End to end: events through the collector, the dataflow, a rule's absence deadline, the
dispatcher and a real receiver. A cart left alone reaches the receiver as the cart-reminder email
within a second of its deadline; a customer who ordered, opted out, was capped or is held out
gets nothing, and the delivery log says why."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from standardwebhooks.webhooks import Webhook

from app.clock import now_ms
from app.dispatch import policy
from app.dispatch.deliveries import TERMINAL
from app.main import create_app
from app.settings import Settings
from tests.factories import iso
from tests.helpers import ServerThread, pipeline_env, wait_for
from tests.integration.test_dispatcher import Receiver, delivery

QUICK_ABANDONERS = """\
id: quick-abandoners
name: Quick abandoners
when:
  all:
    - feature: cart_value
      gt: 0
    - since: {event: Product Added}
      gte: 2s
on_enter:
  - send:
      destination: email
      template: cart-reminder
      at_most: {times: 1, per: 24h}
      holdout_percent: 50
"""
RULE = "quick-abandoners"


def pick(held: bool, prefix: str) -> str:
    """A customer id inside (or outside) the rule's 50 % holdout."""
    return next(
        f"{prefix}{n}" for n in range(1000) if policy.held_out(f"{prefix}{n}", RULE, 50) is held
    )


@pytest.fixture
def private_api(settings: Settings) -> Iterator[tuple[ServerThread, Settings]]:
    allowed = settings.model_copy(update={"allow_private_destinations": True})
    with ServerThread(create_app(allowed)) as server:
        yield server, allowed


def processes(settings: Settings) -> list[subprocess.Popen[bytes]]:
    env = pipeline_env(
        settings.redis_url or "", settings.data_dir, settings.partitions, settings.database_url
    )
    env.pop("DATABASE_URL", None)
    if settings.database_url:
        env["DATABASE_URL"] = settings.database_url
    env["SEGFLOW_ALLOW_PRIVATE_DESTINATIONS"] = "1"
    return [
        subprocess.Popen(
            [sys.executable, "-m", "app.cli", command, *extra],
            env=env,
            start_new_session=True,
        )
        for command, extra in (("pipeline", ["--no-recovery"]), ("dispatcher", []))
    ]


@pytest.mark.backend_independent
def test_a_left_cart_reaches_the_receiver_within_a_second_of_its_deadline(
    redis_client: redis.Redis,
    private_api: tuple[ServerThread, Settings],
    credentials: dict[str, str],
    tmp_path: Path,
):
    api, settings = private_api
    admin = {"Authorization": f"Bearer {credentials['admin_token']}"}
    receiver = Receiver()
    received_at: dict[str, float] = {}
    original = receiver.answer

    def answer(n: int) -> int:
        received_at.setdefault(receiver.requests[n][0]["webhook-id"], time.time())
        return original(n)

    receiver.answer = answer
    created = httpx.post(
        f"{api.url}/api/destinations",
        json={"name": "email", "kind": "email", "url": receiver.url},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    secret = created.json()["secret"]
    rule = httpx.post(
        f"{api.url}/api/rules",
        content=QUICK_ABANDONERS,
        headers={**admin, "Content-Type": "application/yaml"},
    )
    assert rule.status_code == 201, rule.text

    running = processes(settings)
    try:
        # both processes up first: a warm-up event processed, the dispatcher's group made
        warm = {"type": "track", "userId": "warm", "event": "Page Viewed", "messageId": "warm"}
        httpx.post(
            f"{api.url}/v1/batch", json={"batch": [warm]}, auth=(credentials["write_key"], "")
        )
        wait_for(lambda: redis_client.exists("profile:{warm}"), what="the dataflow running")
        wait_for(lambda: _has_group(redis_client), what="the dispatcher reading")
        ann, held = pick(False, "ann"), pick(True, "held")
        bob, opted, cap = pick(False, "bob"), pick(False, "opted"), pick(False, "cap")
        now = time.time_ns() // 1_000_000

        def message(kind: str, who: str, at: int, n: str, **fields: Any) -> dict[str, Any]:
            return {"type": kind, "userId": who, "messageId": n, "timestamp": iso(at), **fields}

        def add(who: str, at: int, n: str) -> dict[str, Any]:
            properties = {"product_id": "p1", "price": 40.0, "name": "Boots"}
            return message("track", who, at, n, event="Product Added", properties=properties)

        batch = [
            message("identify", ann, now, "ann-id", traits={"first_name": "Ann"}),
            add(ann, now, "ann-add"),
            add(held, now, "held-add"),
            add(bob, now, "bob-add"),
            message(
                "track",
                bob,
                now + 500,
                "bob-order",
                event="Order Completed",
                properties={"order_id": "o1", "revenue": 40.0},
            ),
            message("identify", opted, now, "opted-id", traits={"marketing_opt_out": True}),
            add(opted, now, "opted-add"),
            add(cap, now, "cap-add"),
            add(cap, now + 3_000, "cap-add-again"),  # exits, and enters again 2 s later
        ]
        sent = httpx.post(
            f"{api.url}/v1/batch", json={"batch": batch}, auth=(credentials["write_key"], "")
        )
        assert sent.json()["accepted"] == len(batch), sent.text

        def statuses() -> dict[str, str]:
            page = httpx.get(f"{api.url}/api/deliveries?rule={RULE}", headers=admin).json()
            return {
                item["customer_id"] + ":" + str(item["at"]): item["status"]
                for item in page["items"]
            }

        def settled() -> bool:  # a delivery is recorded "scheduled" before it is decided
            found = statuses()
            return len(found) == 5 and set(found.values()) <= TERMINAL

        wait_for(settled, timeout_s=30, what="five triggers dispatched and decided")
        assert statuses() == {
            f"{ann}:{now + 2000}": "delivered",
            f"{held}:{now + 2000}": "held_out",
            f"{opted}:{now + 2000}": "suppressed",
            f"{cap}:{now + 2000}": "delivered",
            f"{cap}:{now + 5000}": "capped",
        }
        by_customer = {}
        for headers, body in receiver.requests:
            payload = Webhook(secret).verify(body, headers)
            by_customer[payload["data"]["customer_id"]] = (headers, body, payload)
        assert sorted(by_customer) == sorted([ann, cap])
        assert receiver.unverified(secret) == []
        headers, body, payload = by_customer[ann]
        key = base64.b64decode(secret.removeprefix("whsec_"))
        signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
        digest = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        assert f"v1,{digest}" in headers["webhook-signature"].split(" ")
        message_sent = payload["data"]["message"]
        assert message_sent["subject"].startswith("Ann, your cart is waiting")
        assert "40.00" in message_sent["text"]
        assert payload["data"]["at"] == now + 2000

        late_by = received_at[headers["webhook-id"]] * 1000 - (now + 2000)
        assert late_by < 1000, f"the reminder left {late_by:.0f} ms after its deadline"
        assert orjson.loads(body)["type"] == "segment.enter"
    finally:
        for process in running:
            os.killpg(process.pid, 9)
            process.wait()
        receiver.close()


def _has_group(client: redis.Redis) -> bool:
    try:
        return bool(client.xinfo_groups("triggers"))
    except redis.ResponseError:
        return False


@pytest.mark.backend_independent
def test_a_dispatcher_killed_mid_flight_loses_no_trigger(
    redis_client: redis.Redis,
    private_api: tuple[ServerThread, Settings],
    credentials: dict[str, str],
):
    api, settings = private_api
    admin = {"Authorization": f"Bearer {credentials['admin_token']}"}

    def slowly(_n: int) -> int:
        time.sleep(0.05)
        return 200

    slow = Receiver(slowly)
    created = httpx.post(
        f"{api.url}/api/destinations",
        json={"name": "email", "kind": "email", "url": slow.url},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    ids = []
    for n in range(60):
        customer = f"k{n}"
        redis_client.hset(f"profile:{{{customer}}}", mapping={"features": "{}", "traits": "{}"})
        ids.append(
            trigger_entry(
                redis_client, customer, n, {"destination": "email", "template": "cart-reminder"}
            )
        )
    env = pipeline_env(
        settings.redis_url or "", settings.data_dir, settings.partitions, settings.database_url
    )
    env.pop("DATABASE_URL", None)
    if settings.database_url:
        env["DATABASE_URL"] = settings.database_url
    env["SEGFLOW_ALLOW_PRIVATE_DESTINATIONS"] = "1"
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        started.append(
            subprocess.Popen(
                [sys.executable, "-m", "app.cli", "dispatcher"], env=env, start_new_session=True
            )
        )
        return started[-1]

    try:
        for _ in range(3):  # killed while sending, three times
            dispatcher = start()
            before = len(slow.requests)

            def sending(b: int = before) -> bool:
                return len(slow.requests) > b + 3

            wait_for(sending, timeout_s=60, what="sending")
            os.killpg(dispatcher.pid, 9)
            dispatcher.wait()
        start()
        wait_for(lambda: set(slow.delivered_ids()) >= set(ids), timeout_s=90, what="all sent")
    finally:  # none outlives the test, even one that fails: it would deliver into the next
        for process in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
            process.wait()
        slow.close()
    assert set(slow.delivered_ids()) == set(ids)  # each at least once, nothing else
    assert slow.unverified(created.json()["secret"]) == []


def trigger_entry(client: redis.Redis, customer: str, n: int, send: dict[str, Any]) -> str:
    """A trigger of a transition just now, as the dataflow appends it."""
    trigger_id = f"{customer}:{RULE}:enter:{n}:0"
    client.xadd(
        "triggers",
        {
            "trigger_id": trigger_id,
            "customer_id": customer,
            "segment": RULE,
            "kind": "enter",
            "at": now_ms() - 1_000 + n,
            "rule_version": 1,
            "destination": send["destination"],
            "template": send["template"],
            "send": orjson.dumps(send),
        },
    )
    return trigger_id


@pytest.mark.backend_independent
def test_a_template_that_renders_forever_fails_its_own_delivery_and_nothing_else(
    redis_client: redis.Redis,
    private_api: tuple[ServerThread, Settings],
    credentials: dict[str, str],
):
    """Rendered in the dispatcher's loop, nested loops held up every other trigger for
    minutes; now the render is killed after its time and only its delivery fails."""
    api, settings = private_api
    admin = {"Authorization": f"Bearer {credentials['admin_token']}"}
    receiver = Receiver()
    created = httpx.post(
        f"{api.url}/api/destinations",
        json={"name": "email", "kind": "email", "url": receiver.url},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    loops = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
    stored = httpx.post(
        f"{api.url}/api/templates",
        json={"name": "forever", "kind": "email", "subject": "hi", "text": loops},
        headers=admin,
    )
    assert stored.status_code == 201, stored.text
    for customer in ("slow", *(f"g{n}" for n in range(6))):
        redis_client.hset(f"profile:{{{customer}}}", mapping={"features": "{}", "traits": "{}"})
    slow = trigger_entry(redis_client, "slow", 0, {"destination": "email", "template": "forever"})
    good = [
        trigger_entry(
            redis_client, f"g{n}", n + 1, {"destination": "email", "template": "cart-reminder"}
        )
        for n in range(6)
    ]
    env = pipeline_env(
        settings.redis_url or "", settings.data_dir, settings.partitions, settings.database_url
    )
    env.pop("DATABASE_URL", None)
    if settings.database_url:
        env["DATABASE_URL"] = settings.database_url
    env["SEGFLOW_ALLOW_PRIVATE_DESTINATIONS"] = "1"
    dispatcher = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "dispatcher"], env=env, start_new_session=True
    )
    try:

        def failed() -> bool:
            found = delivery(redis_client, slow)
            return found is not None and found.status == "failed"

        wait_for(lambda: set(receiver.delivered_ids()) == set(good), timeout_s=60, what="sent")
        wait_for(failed, timeout_s=60, what="the slow template's delivery failed")
    finally:
        os.killpg(dispatcher.pid, 9)
        dispatcher.wait()
        receiver.close()
    failure = delivery(redis_client, slow)
    assert failure is not None
    assert "renders for more than 2 s" in (failure.reason or ""), failure.reason
    assert "forever" in (failure.reason or "")
    assert slow not in receiver.delivered_ids()


def dispatcher_process(settings: Settings) -> subprocess.Popen[bytes]:
    env = pipeline_env(
        settings.redis_url or "", settings.data_dir, settings.partitions, settings.database_url
    )
    env.pop("DATABASE_URL", None)
    if settings.database_url:
        env["DATABASE_URL"] = settings.database_url
    env["SEGFLOW_ALLOW_PRIVATE_DESTINATIONS"] = "1"
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "dispatcher"], env=env, start_new_session=True
    )


LATER_RULE = QUICK_ABANDONERS.replace("destination: email", "destination: later").replace(
    "template: cart-reminder", "template: later-note"
)


def test_a_rule_sending_to_what_does_not_exist_yet_is_saved_with_warnings(
    private_api: tuple[ServerThread, Settings], credentials: dict[str, str]
):
    """Saving a rule that sends to a destination or template nobody created answered a plain
    success; its triggers then went nowhere unnoticed."""
    api, _settings = private_api
    admin = {"Authorization": f"Bearer {credentials['admin_token']}"}
    yaml_body = {**admin, "Content-Type": "application/yaml"}
    saved = httpx.post(f"{api.url}/api/rules", content=LATER_RULE, headers=yaml_body)
    assert saved.status_code == 201, saved.text
    warnings = {w["field"]: w for w in saved.json()["warnings"]}
    assert sorted(warnings) == ["on_enter[0].send.destination", "on_enter[0].send.template"]
    destination, template = warnings.values()
    assert "destination 'later' does not exist yet" in destination["message"]
    assert "undeliverable" in destination["message"]
    assert "template 'later-note' does not exist yet" in template["message"]
    assert destination["rule"] == RULE
    assert (destination["line"], template["line"]) == (11, 12)  # where the YAML names them
    checked = httpx.post(f"{api.url}/api/rules/validate", content=LATER_RULE, headers=yaml_body)
    assert [w["field"] for w in checked.json()["warnings"]] == sorted(warnings)

    made = httpx.post(
        f"{api.url}/api/destinations",
        json={"name": "later", "kind": "email", "url": "http://127.0.0.1:9/hooks"},
        headers=admin,
    )
    assert made.status_code == 201, made.text
    note = {"name": "later-note", "kind": "email", "subject": "Hi", "text": "Your cart"}
    made = httpx.post(f"{api.url}/api/templates", json=note, headers=admin)
    assert made.status_code == 201, made.text
    again = httpx.put(f"{api.url}/api/rules/{RULE}", content=LATER_RULE, headers=yaml_body)
    assert again.status_code == 200, again.text
    assert again.json()["warnings"] == []
    assert httpx.get(f"{api.url}/api/rules/{RULE}", headers=admin).json()["warnings"] == []


def test_triggers_sent_before_their_destination_existed_are_replayed_once_it_does(
    redis_client: redis.Redis,
    private_api: tuple[ServerThread, Settings],
    credentials: dict[str, str],
):
    """Triggers that came before their destination existed were undeliverable for good: their
    replay answered 404. Now they are dead letters, and a replay delivers each exactly once."""
    api, settings = private_api
    admin = {"Authorization": f"Bearer {credentials['admin_token']}"}
    for customer in ("early", "noted"):
        redis_client.hset(f"profile:{{{customer}}}", mapping={"features": "{}", "traits": "{}"})
    early = trigger_entry(
        redis_client, "early", 0, {"destination": "email", "template": "cart-reminder"}
    )
    receiver = Receiver()
    dispatcher = dispatcher_process(settings)
    try:

        def status(trigger_id: str = early) -> str | None:
            found = delivery(redis_client, trigger_id)
            return found.status if found else None

        wait_for(lambda: status() == "undeliverable", timeout_s=60, what="undeliverable")
        letters = httpx.get(f"{api.url}/api/dead-letters", headers=admin).json()["items"]
        assert [(d["id"], d["status"]) for d in letters] == [(early, "undeliverable")]
        assert "destination 'email' does not exist" in letters[0]["reason"]

        made = httpx.post(
            f"{api.url}/api/destinations",
            json={"name": "email", "kind": "email", "url": receiver.url},
            headers=admin,
        )
        assert made.status_code == 201, made.text
        replayed = httpx.post(f"{api.url}/api/dead-letters/{early}/replay", headers=admin)
        assert replayed.status_code == 200, replayed.text
        assert replayed.json()["status"] == "scheduled"

        wait_for(lambda: status() == "delivered", timeout_s=60, what="the replay delivered")
        again = httpx.post(f"{api.url}/api/dead-letters/{early}/replay", headers=admin)
        assert again.status_code == 404, again.text  # delivered: nothing left to replay
        assert "no such dead, undeliverable or failed delivery" in again.json()["detail"]

        # the same for a template created after its triggers: failed, then replayed
        noted = trigger_entry(
            redis_client, "noted", 1, {"destination": "email", "template": "later-note"}
        )
        wait_for(lambda: status(noted) == "failed", timeout_s=60, what="failed")
        note = {"name": "later-note", "kind": "email", "subject": "Hi", "text": "Your cart"}
        assert httpx.post(f"{api.url}/api/templates", json=note, headers=admin).is_success
        replayed = httpx.post(f"{api.url}/api/dead-letters/{noted}/replay", headers=admin)
        assert replayed.status_code == 200, replayed.text
        wait_for(lambda: status(noted) == "delivered", timeout_s=60, what="delivered")
    finally:
        os.killpg(dispatcher.pid, 9)
        dispatcher.wait()
        receiver.close()
    assert receiver.delivered_ids() == [early, noted]
    assert len(receiver.requests) == 2  # each exactly once
    assert receiver.unverified(made.json()["secret"]) == []
    assert httpx.get(f"{api.url}/api/dead-letters", headers=admin).json()["items"] == []
