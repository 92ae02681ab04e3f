"""The dispatcher: reads rule triggers, decides, renders, and delivers signed webhooks.

    segflow dispatcher          (``segflow up`` runs and supervises it)

Two loops share one Redis:

- *intake* reads the ``triggers`` stream in the consumer group ``dispatcher`` and records each
  trigger as a delivery, due now, or once its rule's ``settle`` has passed (a late event may
  retract its transition meanwhile) (``app.dispatch.deliveries``); only then is the entry
  acknowledged, so a trigger read by a dispatcher that died is read again, and found recorded.
- *attempts* lease the deliveries that are due and try each: retracted (not sent), stale (its
  transition older than the send's ``max_age``: history, such as a replay of last month, is
  not messaged), consent, holdout, frequency cap and quiet hours first
  (``app.dispatch.policy``), then the
  destination, the template, and a POST signed per Standard Webhooks. A timeout, a 5xx or a
  429 is tried again later (Retry-After honoured, else backoff with jitter); after
  ``MAX_ATTEMPTS``, or on another 4xx, the delivery is a dead letter, replayable through the
  admin API (as is one whose destination was missing, ``undeliverable``, or whose template
  was, ``failed``).

The ``webhook-id`` is the trigger's id, the same on every attempt: a receiver that saw it
already can drop the repeat (a dispatcher killed between sending and recording sends again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from app import metrics
from app.clock import now_ms
from app.dispatch import policy
from app.dispatch.deliveries import Delivery, DeliveryStatus, DeliveryStore
from app.dispatch.retention import DispatchRetention
from app.dispatch.webhooks import DeliveryResult, WebhookTarget, send_webhook, webhook_client
from app.durations import format_duration_ms
from app.profiles.keys import TRIGGERS_KEY, retracted_key
from app.profiles.service import CustomerProfile, get_profile

GROUP = "dispatcher"
READ_COUNT = 200
LEASE_COUNT = 32  # leased at once
MAX_IN_FLIGHT = 256  # attempts under way at most (destinations limit their own, the pool too)
BLOCK_MS = 500
IDLE_S = 0.05

log = logging.getLogger(__name__)


class UndeliverableError(Exception):
    """The destination cannot be sent to (missing, disabled, or an address not allowed)."""


class RenderError(Exception):
    """The template did not render; nothing is sent."""


class Outbox(Protocol):
    """Destinations and templates, as the dispatcher needs them (``app.dispatch.outbox``)."""

    async def target(self, name: str) -> WebhookTarget:
        """The destination (raises ``UndeliverableError``)."""
        ...

    async def payload(self, delivery: Delivery, profile: CustomerProfile) -> str:
        """The webhook body (JSON text) for this delivery (raises ``RenderError``)."""
        ...


class Dispatcher:
    def __init__(
        self,
        client: aioredis.Redis,
        outbox: Outbox,
        *,
        allow_private: bool = False,
        consumer: str = "dispatcher-1",
        http: httpx.AsyncClient | None = None,
        rng: random.Random | None = None,
        retention: DispatchRetention | None = None,
    ) -> None:
        self._redis = client
        self._retention = retention  # None: triggers and deliveries are kept (tests)
        self._store = DeliveryStore(client)
        self._outbox = outbox
        self._allow_private = allow_private
        self._consumer = consumer
        self._http = http or webhook_client()
        self._rng = rng or random.Random()
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._next_free: dict[str, float] = {}  # per destination: when its rate allows a send
        # being attempted here: a lease that ran out while its destination's rate or
        # concurrency kept it waiting does not start a second attempt of it
        self._in_flight: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        # an attempt holds one Redis connection at a time; intake's blocking read holds one:
        # more attempts than the client's pool serves fail with "Too many connections"
        pool_size = client.connection_pool.max_connections or MAX_IN_FLIGHT + 4
        self._max_in_flight = max(1, min(MAX_IN_FLIGHT, pool_size - 4))
        self._stopping = asyncio.Event()
        self._recorded = asyncio.Event()  # intake recorded deliveries: attempt them now

    # --- running ----------------------------------------------------------------------------

    async def run(self) -> None:
        await self._ensure_group()
        reclaimed = await self._store.reclaim(self._consumer, now_ms())
        if reclaimed:
            log.info(
                "dispatch: %d deliveries in flight when the last run stopped are due", reclaimed
            )
        loops = [self._intake_loop(), self._attempt_loop()]
        if self._retention is not None:
            loops.append(self._retention.run(self._redis, group=GROUP, stopping=self._stopping))
        await asyncio.gather(*loops)

    def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        await self._http.aclose()

    async def _ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(TRIGGERS_KEY, GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def _intake_loop(self) -> None:
        # First what this consumer read and never acknowledged (it died), then new entries.
        backlog = True
        while not self._stopping.is_set():
            taken = await self.intake(backlog=backlog)
            if backlog and not taken:
                backlog = False

    async def intake(self, *, backlog: bool = False) -> int:
        """Record one read of triggers as deliveries; return how many entries were read."""
        reply: Any = await self._redis.xreadgroup(
            GROUP,
            self._consumer,
            {TRIGGERS_KEY: "0" if backlog else ">"},
            count=READ_COUNT,
            block=None if backlog else BLOCK_MS,
        )
        entries = reply[0][1] if reply else []
        now = now_ms()
        if not entries:
            return 0
        await self._store.create([_delivery(fields, now) for _, fields in entries])
        # acknowledged once all are recorded: a dispatcher dying before reads them again
        await self._redis.xack(TRIGGERS_KEY, GROUP, *(entry_id for entry_id, _ in entries))
        self._recorded.set()
        return len(entries)

    async def _attempt_loop(self) -> None:
        while not self._stopping.is_set():
            if not await self.attempt_due():
                with contextlib.suppress(TimeoutError):  # a retry falls due, or intake wakes it
                    await asyncio.wait_for(self._recorded.wait(), IDLE_S)
                self._recorded.clear()
        await asyncio.gather(*self._tasks)  # let the attempts under way finish

    async def attempt_due(self) -> int:
        """Start attempts of deliveries due now, as many as there is room for; return how
        many started."""
        room = self._max_in_flight - len(self._in_flight)
        if room <= 0:
            return 0
        now = now_ms()
        due = await self._store.lease_due(now, min(room, LEASE_COUNT), self._consumer)
        ending = [delivery_id for delivery_id in due if delivery_id in self._in_flight]
        if ending:  # their attempts here scheduled these retries and have not ended yet: left
            await self._store.unlease(self._consumer, ending, now)  # leased, they would wait
        fresh = [delivery_id for delivery_id in due if delivery_id not in self._in_flight]
        for delivery_id in fresh:  # each on its own: a slow receiver holds up no other
            self._in_flight.add(delivery_id)
            task = asyncio.create_task(self._attempt_once(delivery_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(fresh)

    # --- one delivery -----------------------------------------------------------------------

    async def _attempt_once(self, delivery_id: str) -> None:
        try:
            await self._attempt(delivery_id)
        finally:
            self._in_flight.discard(delivery_id)

    async def _attempt(self, delivery_id: str) -> None:
        try:
            delivery = await self._store.get(delivery_id)
            if delivery is not None and delivery.status == "scheduled":
                await self._store.save(await self._decide(delivery))
            await self._store.release(self._consumer, delivery_id)
        except Exception:  # never lose it: the lease runs out and it is tried again
            log.exception("dispatch: delivery %s could not be attempted", delivery_id)

    async def _decide(self, delivery: Delivery) -> Delivery:
        now = now_ms()
        profile = await get_profile(self._redis, delivery.customer_id)
        if profile is None:
            return _finished(delivery, "failed", now, "the customer has no profile (erased?)")
        traits = profile.traits
        send = delivery.send
        if delivery.attempts == 0:
            if await self._redis.exists(retracted_key(delivery.id)):
                why = (
                    "a late event corrected the customer's history: the transition no longer holds"
                )
                return _finished(delivery, "retracted", now, why)
            if delivery.stale_after is not None and now > delivery.stale_after:
                return _finished(delivery, "stale", now, _stale_reason(delivery, now))
            if policy.opted_out(send, traits):
                return _finished(delivery, "suppressed", now, f"consent: {policy.OPT_OUT_TRAIT}")
            if policy.held_out(delivery.customer_id, delivery.rule, send.get("holdout_percent", 0)):
                return _finished(delivery, "held_out", now, "in the rule's holdout group")
            until = policy.quiet_until(send, traits, now)
            if until is not None:
                # decided while fresh: the wait the rule asked for does not make it stale
                update = {"next_at": until, "updated_at": now, "reason": "quiet hours"}
                return delivery.model_copy(update={**update, "stale_after": None})
        try:
            target = await self._outbox.target(delivery.destination)
        except UndeliverableError as error:
            return _finished(delivery, "undeliverable", now, str(error))
        try:
            body = await self._outbox.payload(delivery, profile)
        except RenderError as error:
            return _finished(delivery, "failed", now, str(error))
        cap = send.get("at_most")
        if delivery.attempts == 0 and cap:
            per = policy.cap_window_ms(send) or 0
            if not await self._store.reserve_send(delivery, now, int(cap["times"]), per):
                return _finished(delivery, "capped", now, f"frequency cap: {cap}")
        attempt = await self._post(target, delivery, body)
        attempts = delivery.attempts + 1
        metrics.record_delivery(attempt.status_code, attempt.latency_ms)
        done = now_ms()
        answered = {
            "attempts": attempts,
            "response_code": attempt.status_code,
            "latency_ms": round(attempt.latency_ms, 1),
            "updated_at": done,
        }
        if attempt.ok:
            return delivery.model_copy(update={**answered, "status": "delivered", "reason": ""})
        reason = attempt.error or attempt.outcome
        if attempt.outcome == "refused":  # an address Segflow will not send to
            if cap:
                await self._store.release_send(delivery)
            return _finished(delivery.model_copy(update=answered), "undeliverable", done, reason)
        if policy.retryable(attempt.status_code) and attempts < policy.MAX_ATTEMPTS:
            asked = None if attempt.retry_after_s is None else int(attempt.retry_after_s * 1000)
            wait = policy.retry_delay_ms(attempts, asked, self._rng)
            return delivery.model_copy(
                update={**answered, "next_at": done + wait, "reason": f"{reason}; retrying"}
            )
        why = reason if policy.retryable(attempt.status_code) else f"{reason}: not retried"
        if cap:
            await self._store.release_send(delivery)
        return delivery.model_copy(update={**answered, "status": "dead", "reason": why})

    async def _post(self, target: WebhookTarget, delivery: Delivery, body: str) -> DeliveryResult:
        """One signed POST, within the destination's concurrency and rate."""
        limit = self._limits.setdefault(
            target.name, asyncio.Semaphore(getattr(target, "concurrency", 8))
        )
        async with limit:
            rate = getattr(target, "rate_limit_per_s", 0) or 0
            if rate > 0:
                loop = asyncio.get_running_loop()
                free = max(loop.time(), self._next_free.get(target.name, 0.0))
                self._next_free[target.name] = free + 1 / rate
                await asyncio.sleep(free - loop.time())
            return await send_webhook(
                client=self._http,
                destination=target,
                webhook_id=delivery.id,
                body=body,
                allow_private=self._allow_private,
            )


def _finished(delivery: Delivery, status: DeliveryStatus, now: int, reason: str) -> Delivery:
    return delivery.model_copy(update={"status": status, "updated_at": now, "reason": reason})


def _stale_reason(delivery: Delivery, now: int) -> str:
    age = _rough(max(0, now - delivery.at))
    at = datetime.fromtimestamp(delivery.at / 1000, tz=UTC).isoformat(timespec="seconds")
    max_age = delivery.send.get("max_age") or f"{policy.DEFAULT_MAX_AGE}, the default"
    return (
        f"the transition at {at} was {age} old when first decided, older than the send's "
        f"max_age ({max_age}): not sent"
    )


def _rough(ms: int) -> str:
    """A duration in its largest whole unit, rounded down: ``61d``, ``5h``, ``12m``."""
    for unit in (86_400_000, 3_600_000, 60_000, 1_000):
        if ms >= unit:
            return format_duration_ms(ms // unit * unit)
    return f"{ms}ms"


def _delivery(fields: Mapping[bytes, bytes], now: int) -> Delivery:
    def text(name: str) -> str:
        return fields.get(name.encode(), b"").decode()

    send = orjson.loads(fields[b"send"]) if b"send" in fields else {}
    settle = policy.settle_ms(send)
    at = int(text("at") or 0)
    return Delivery(
        id=text("trigger_id"),
        customer_id=text("customer_id"),
        rule=text("segment"),
        kind=text("kind"),
        at=at,
        rule_version=int(text("rule_version") or 0),
        destination=text("destination"),
        template=text("template"),
        send=send or {"destination": text("destination"), "template": text("template")},
        status="scheduled",
        created_at=now,
        updated_at=now,
        next_at=now + settle,
        reason=f"settling for {settle} ms" if settle else "",
        stale_after=policy.stale_after(send, at),
    )
