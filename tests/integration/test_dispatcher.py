"""The dispatcher against a real HTTP receiver on loopback and real Redis: every delivery is
signed (checked with the standardwebhooks library and by an independent HMAC), failing and
absent receivers get each trigger once they recover, the last failure is a dead letter that a
replay delivers, and consent, holdout, caps and quiet hours decide before anything is sent."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as aioredis
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

from app.clock import now_ms
from app.dispatch import policy
from app.dispatch.deliveries import (
    DEAD_KEY,
    DUE_KEY,
    Delivery,
    DeliveryStore,
    delivery_key,
    leases_key,
)
from app.dispatch.webhooks import WebhookTarget, webhook_body
from app.dispatch.worker import Dispatcher, UndeliverableError
from app.profiles.keys import TRIGGERS_KEY, profile_key, retracted_key
from app.profiles.service import CustomerProfile
from app.settings import Settings

HOUR = 3_600_000
DAY = 24 * HOUR
SECRET = "whsec_" + base64.b64encode(b"a test secret of 32 bytes length").decode()


class Receiver:
    """A webhook receiver on loopback; ``answer(n)`` gives the n-th request's status, or
    ``per_id(k)`` the status of the k-th request (from 0) carrying the same webhook-id."""

    def __init__(
        self,
        answer: Callable[[int], int] = lambda _n: 200,
        per_id: Callable[[int], int] | None = None,
    ) -> None:
        self.answer = answer
        self.per_id = per_id
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []  # what each request was answered
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver.lock:
                    n = len(receiver.requests)
                    receiver.requests.append(
                        ({k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    if receiver.per_id is None:
                        status = receiver.answer(n)
                    else:
                        webhook_id = self.headers["webhook-id"]
                        tried = sum(h["webhook-id"] == webhook_id for h, _ in receiver.requests)
                        status = receiver.per_id(tried - 1)
                    receiver.statuses.append(status)
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def unverified(self, secret: str) -> list[str]:
        """webhook-ids of the requests whose signature fails the standardwebhooks library or
        an independent HMAC-SHA256 of the spec's signed content: none, for a good sender."""
        key = base64.b64decode(secret.removeprefix("whsec_"))
        bad = []
        with self.lock:
            requests = list(self.requests)
        for headers, body in requests:
            signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
            digest = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
            try:
                Webhook(secret).verify(body, headers)
            except Exception:
                bad.append(headers["webhook-id"])
                continue
            if f"v1,{digest}" not in headers["webhook-signature"].split(" "):
                bad.append(headers["webhook-id"])
        return bad

    def delivered_ids(self) -> list[str]:
        """webhook-ids of the requests answered 2xx."""
        with self.lock:
            return [
                headers["webhook-id"]
                for (headers, _), status in zip(self.requests, self.statuses, strict=True)
                if 200 <= status < 300
            ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class LoopbackOutbox:
    """One destination, ``email``, at the receiver; the payload names customer and segment.
    (The stored destinations and templates are tested end to end in test_activation.py.)"""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    async def target(self, name: str) -> WebhookTarget:
        if name != "email":
            raise UndeliverableError(f"destination {name!r} does not exist")
        return WebhookTarget("email", self.receiver.url, SecretStr(SECRET), timeout_s=2)

    async def payload(self, delivery: Delivery, profile: CustomerProfile) -> str:
        data = {"customer": profile.customer_id, "segment": delivery.rule}
        return webhook_body(f"segment.{delivery.kind}", data)


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policy, "BACKOFF_BASE_MS", 20)
    monkeypatch.setattr(policy, "BACKOFF_CAP_MS", 100)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


def trigger(
    client: redis.Redis, n: int, customer: str = "c1", at: int | None = None, **send: Any
) -> str:
    """A cart-abandoners enter as the dataflow appends it, of a transition ``at`` (event time;
    default: just now, so it is fresh)."""
    if not client.exists(profile_key(customer)):
        client.hset(profile_key(customer), mapping={"features": "{}", "traits": "{}"})
    at = now_ms() - 1_000 + n if at is None else at
    trigger_id = f"{customer}:cart-abandoners:enter:{at}:0"
    action = {"destination": "email", "template": "cart-reminder", **send}
    client.xadd(
        TRIGGERS_KEY,
        {
            "trigger_id": trigger_id,
            "customer_id": customer,
            "segment": "cart-abandoners",
            "kind": "enter",
            "at": at,
            "rule_version": 1,
            "destination": action["destination"],
            "template": action["template"],
            "send": orjson.dumps(action),
        },
    )
    return trigger_id


def dispatch_until(
    settings: Settings,
    outbox: Any,
    done: Callable[[], bool],
    timeout_s: float = 120,
    max_connections: int | None = None,
) -> None:
    async def main() -> None:
        options: dict[str, Any] = (
            {} if max_connections is None else {"max_connections": max_connections}
        )
        client = aioredis.Redis.from_url(settings.redis_url or "", **options)
        dispatcher = Dispatcher(client, outbox, allow_private=True)
        running = asyncio.ensure_future(dispatcher.run())
        try:
            deadline = asyncio.get_running_loop().time() + timeout_s
            while not done():
                assert asyncio.get_running_loop().time() < deadline, "timed out"
                await asyncio.sleep(0.02)
        finally:
            dispatcher.stop()
            await running
            await dispatcher.close()
            await client.aclose()

    asyncio.run(main())


def delivery(client: redis.Redis, trigger_id: str) -> Delivery | None:
    fields: Any = client.hgetall(delivery_key(trigger_id))
    return Delivery.from_fields(fields) if fields else None


def test_a_delivery_is_signed_per_standard_webhooks(settings, redis_client, receiver):
    trigger_id = trigger(redis_client, 1)
    dispatch_until(settings, LoopbackOutbox(receiver), lambda: len(receiver.requests) == 1)
    headers, body = receiver.requests[0]
    assert headers["webhook-id"] == trigger_id
    # the library's own verification...
    assert Webhook(SECRET).verify(body, headers)["data"]["segment"] == "cart-abandoners"
    # ...and the spec's signed content computed independently
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert f"v1,{expected}" in headers["webhook-signature"].split(" ")
    found = delivery(redis_client, trigger_id)
    assert found is not None
    assert (found.status, found.attempts, found.response_code) == ("delivered", 1, 200)


def test_a_receiver_failing_half_the_time_gets_every_trigger_once_delivered(
    settings, redis_client, fast_retries
):
    # Each trigger's first two attempts fail (a 500, then a 429), the third succeeds: which
    # attempt fails does not depend on how concurrent attempts interleave.
    flaky = Receiver(per_id=lambda k: (500, 429)[k] if k < 2 else 200)
    try:
        ids = [trigger(redis_client, n, customer=f"c{n}") for n in range(20)]
        dispatch_until(
            settings, LoopbackOutbox(flaky), lambda: len(set(flaky.delivered_ids())) == 20
        )
        assert len(flaky.requests) == 60  # three attempts each, no more
        assert sorted(flaky.delivered_ids()) == sorted(ids)  # each exactly once
        assert flaky.unverified(SECRET) == []  # every attempt signed, retries too
    finally:
        flaky.close()


def test_a_receiver_down_for_a_while_gets_everything_when_it_is_back(
    settings, redis_client, fast_retries
):
    up_after = 15
    down = Receiver(lambda n: 503 if n < up_after else 200)
    try:
        ids = [trigger(redis_client, n, customer=f"c{n}") for n in range(5)]
        dispatch_until(settings, LoopbackOutbox(down), lambda: len(set(down.delivered_ids())) == 5)
        assert sorted(down.delivered_ids()) == sorted(ids)
        assert down.unverified(SECRET) == []  # every attempt signed, retries too
    finally:
        down.close()


def test_after_the_last_attempt_a_dead_letter_that_a_replay_delivers(
    settings, redis_client, fast_retries
):
    answers = {"status": 500}
    failing = Receiver(lambda _n: answers["status"])
    try:
        trigger_id = trigger(redis_client, 1)
        dispatch_until(
            settings, LoopbackOutbox(failing), lambda: redis_client.zscore(DEAD_KEY, trigger_id)
        )
        dead = delivery(redis_client, trigger_id)
        assert dead is not None
        assert (dead.status, dead.attempts) == ("dead", policy.MAX_ATTEMPTS)
        assert "HTTP 500" in dead.reason
        assert len(failing.requests) == policy.MAX_ATTEMPTS

        answers["status"] = 200

        async def replay() -> None:
            client = aioredis.Redis.from_url(settings.redis_url or "")
            assert await DeliveryStore(client).replay(trigger_id, now_ms()) is not None
            await client.aclose()

        asyncio.run(replay())
        dispatch_until(
            settings, LoopbackOutbox(failing), lambda: failing.delivered_ids() == [trigger_id]
        )
        assert redis_client.zscore(DEAD_KEY, trigger_id) is None
        assert failing.unverified(SECRET) == []
    finally:
        failing.close()


def test_a_refusal_is_not_retried(settings, redis_client, fast_retries):
    refusing = Receiver(lambda _n: 410)
    try:
        trigger_id = trigger(redis_client, 1)
        dispatch_until(
            settings, LoopbackOutbox(refusing), lambda: redis_client.zscore(DEAD_KEY, trigger_id)
        )
        assert len(refusing.requests) == 1
    finally:
        refusing.close()


def test_nothing_is_sent_without_consent_to_the_holdout_past_the_cap_or_nowhere(
    settings, redis_client, receiver
):
    redis_client.hset(
        profile_key("opted"), mapping={"features": "{}", "traits": '{"marketing_opt_out": true}'}
    )
    suppressed = trigger(redis_client, 1, customer="opted")
    held = trigger(redis_client, 2, customer="held", holdout_percent=100)
    first = trigger(redis_client, 3, customer="capped", at_most={"times": 1, "per": "24h"})
    second = trigger(redis_client, 4, customer="capped", at_most={"times": 1, "per": "24h"})
    nowhere = trigger(redis_client, 5, customer="c5", destination="sms")
    quiet = trigger(
        redis_client, 6, customer="night", quiet_hours={"from": "00:00", "until": "23:59"}
    )
    ids = [suppressed, held, first, second, nowhere, quiet]

    def settled() -> bool:
        found = [delivery(redis_client, i) for i in ids]
        return all(d is not None and (d.status != "scheduled" or d.reason) for d in found)

    dispatch_until(settings, LoopbackOutbox(receiver), settled)
    status = {i: delivery(redis_client, i) for i in ids}
    found = {i: (d.status if d else None) for i, d in status.items()}
    # the two capped triggers are tried at once: exactly one of them is sent
    sent_one = first if found[first] == "delivered" else second
    assert {found[first], found[second]} == {"delivered", "capped"}
    assert found == {
        suppressed: "suppressed",
        held: "held_out",
        first: found[first],
        second: found[second],
        nowhere: "undeliverable",
        quiet: "scheduled",  # deferred to the end of the quiet hours, not dropped
    }
    assert receiver.delivered_ids() == [sent_one]
    deferred = status[quiet]
    assert deferred is not None
    assert deferred.reason == "quiet hours"
    assert deferred.next_at is not None
    assert deferred.next_at > now_ms()
    undeliverable = status[nowhere]
    assert "does not exist" in (undeliverable.reason if undeliverable else "")


def test_a_backlog_larger_than_the_connection_pool_is_sent_without_waiting_for_leases(
    settings, redis_client, receiver
):
    """Attempts are bounded by the Redis pool: none fails for want of a connection and waits
    out its 30 s lease (what a backlog did with 256 attempts on a pool of 100)."""
    ids = [trigger(redis_client, n, customer=f"c{n}") for n in range(80)]
    dispatch_until(
        settings,
        LoopbackOutbox(receiver),
        lambda: len(set(receiver.delivered_ids())) == len(ids),
        timeout_s=28,  # under the 30 s lease a starved attempt would wait out, however busy
        max_connections=12,
    )
    assert sorted(receiver.delivered_ids()) == sorted(ids)


@pytest.mark.backend_independent
def test_a_settling_trigger_waits_and_one_retracted_meanwhile_is_not_sent(
    settings, redis_client, receiver
):
    kept = trigger(redis_client, 1, customer="kept", settle="2s")
    retracted = trigger(redis_client, 2, customer="late-order", settle="2s")

    def recorded() -> bool:
        return all(delivery(redis_client, i) is not None for i in (kept, retracted))

    def finished() -> bool:
        found = [delivery(redis_client, i) for i in (kept, retracted)]
        return all(d is not None and d.status != "scheduled" for d in found)

    seen: list[Delivery] = []

    def done() -> bool:
        # what the dataflow's sink does when a late event retracts the transition, while the
        # trigger settles
        if not seen and recorded():
            waiting = delivery(redis_client, retracted)
            assert waiting is not None
            seen.append(waiting)
            redis_client.set(retracted_key(retracted), "1")
        return finished()

    dispatch_until(settings, LoopbackOutbox(receiver), done)
    sent, dropped = delivery(redis_client, kept), delivery(redis_client, retracted)
    assert sent is not None
    assert dropped is not None
    assert (sent.status, dropped.status) == ("delivered", "retracted")
    assert (seen[0].status, seen[0].reason) == ("scheduled", "settling for 2000 ms")
    assert "late event" in dropped.reason
    assert sent.updated_at - sent.created_at >= 2_000  # not before its settle
    assert receiver.delivered_ids() == [kept]


def test_a_replay_of_old_history_is_logged_stale_and_only_fresh_triggers_are_sent(
    settings, redis_client, receiver
):
    """A replay of last October into a running instance sent ~770 webhooks for two-month-old
    transitions. A send goes out only while its transition is fresh (the send's max_age, 1d
    by default); a dispatcher that was down for hours still catches up."""
    now = now_ms()
    october = trigger(redis_client, 1, customer="october", at=now - 61 * DAY)
    fresh = trigger(redis_client, 2, customer="fresh")
    tight = trigger(redis_client, 3, customer="tight", at=now - 2 * HOUR, max_age="1h")
    first = [october, fresh, tight]

    def finished(ids: list[str]) -> Callable[[], bool]:
        def done() -> bool:
            found = [delivery(redis_client, i) for i in ids]
            return all(d is not None and d.status != "scheduled" for d in found)

        return done

    dispatch_until(settings, LoopbackOutbox(receiver), finished(first))

    # the dispatcher is down; a trigger of 6 hours ago waits in the stream for its return
    waited = trigger(redis_client, 4, customer="waited", at=now - 6 * HOUR)
    dispatch_until(settings, LoopbackOutbox(receiver), finished([waited]))

    status = {i: delivery(redis_client, i) for i in [*first, waited]}
    assert {i: d.status if d else None for i, d in status.items()} == {
        october: "stale",
        fresh: "delivered",
        tight: "stale",
        waited: "delivered",
    }
    assert sorted(receiver.delivered_ids()) == sorted([fresh, waited])
    assert len(receiver.requests) == 2  # nothing stale was even tried
    old, narrow = status[october], status[tight]
    assert old is not None
    assert narrow is not None
    assert "61d old" in old.reason, old.reason
    assert "max_age (1d, the default)" in old.reason, old.reason
    assert "2h old" in narrow.reason, narrow.reason
    assert "max_age (1h)" in narrow.reason, narrow.reason
    assert old.attempts == 0
    assert redis_client.zscore(DEAD_KEY, october) is None  # history, not a letter to replay


def test_the_cap_holds_when_two_attempts_reserve_in_the_other_order_than_they_read_the_clock(
    settings,
):
    """Two deliveries to one capped customer attempted at once: the one that read the clock
    later reserved first, and the other, counting only sends up to its own earlier instant,
    did not see it: both were sent (a flaky failure of the test above)."""

    def capped(n: int) -> Delivery:
        return Delivery(
            id=f"capped:cart-abandoners:enter:{n}:0",
            customer_id="capped",
            rule="cart-abandoners",
            kind="enter",
            at=n,
            rule_version=1,
            destination="email",
            template="cart-reminder",
            send={},
            status="scheduled",
            created_at=n,
            updated_at=n,
        )

    async def reserve() -> list[bool]:
        client = aioredis.Redis.from_url(settings.redis_url or "")
        store = DeliveryStore(client)
        now = now_ms()
        try:
            return [
                await store.reserve_send(capped(1), now + 1, 1, DAY),  # read the clock later
                await store.reserve_send(capped(2), now, 1, DAY),
            ]
        finally:
            await client.aclose()

    assert asyncio.run(reserve()) == [True, False]


def test_a_retry_due_while_its_last_attempt_is_still_ending_is_not_left_leased(
    settings, redis_client, receiver
):
    """A failed attempt scheduled its retry, and the attempts loop leased it before that
    attempt had ended: it was skipped, as already under way, and waited out the 30 s lease
    (a flaky 30 s test above). It is due again at once instead."""

    async def lease_while_in_flight() -> tuple[float | None, bool]:
        client = aioredis.Redis.from_url(settings.redis_url or "")
        dispatcher = Dispatcher(client, LoopbackOutbox(receiver), allow_private=True)
        try:
            await dispatcher._ensure_group()
            await dispatcher.intake()
            (delivery_id,) = [m.decode() for m in redis_client.zrange(DUE_KEY, 0, -1)]
            dispatcher._in_flight.add(delivery_id)  # its last attempt has not ended yet
            started = await dispatcher.attempt_due()
            assert started == 0
            leased = redis_client.sismember(leases_key(dispatcher._consumer), delivery_id)
            return redis_client.zscore(DUE_KEY, delivery_id), bool(leased)
        finally:
            await dispatcher.close()
            await client.aclose()

    trigger(redis_client, 1)
    before = now_ms()
    due_at, leased = asyncio.run(lease_while_in_flight())
    assert due_at is not None
    assert due_at <= now_ms()  # due now, not when a lease would have run out
    assert due_at >= before
    assert not leased
