"""The dispatcher's view of destinations and templates: the ones stored in SQL, looked up per
attempt (briefly cached) and rendered in the sandbox (``app.dispatch.templates``)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.engine import Engine
from sqlmodel import Session

from app.db import make_engine
from app.dispatch.deliveries import Delivery
from app.dispatch.errors import (
    DestinationNotFound,
    MessageTemplateError,
    SecretUnreadable,
    TemplateNotFound,
)
from app.dispatch.rendering import TemplateRenderer
from app.dispatch.retention import DispatchRetention
from app.dispatch.secret_box import SecretBox, secret_box
from app.dispatch.store import SendableDestination, load_template, sendable_destination
from app.dispatch.templates import CompiledTemplate, message_context
from app.dispatch.webhooks import webhook_body
from app.dispatch.worker import Dispatcher, RenderError, UndeliverableError
from app.profiles.service import CustomerProfile
from app.redis_client import masked_url, wait_until_ready
from app.settings import Settings

# An edited destination or template is used within this. Only what can be sent with is kept:
# one created after its triggers came is used at once, by the replay of what it missed.
CACHE_S = 2.0
T = TypeVar("T")


class StoredOutbox:
    def __init__(self, engine: Engine, box: SecretBox, renderer: TemplateRenderer) -> None:
        self._engine = engine
        self._box = box
        self._renderer = renderer  # templates render in its processes, off this loop
        self._destinations: dict[str, tuple[float, SendableDestination | str]] = {}
        self._templates: dict[str, tuple[float, CompiledTemplate | str]] = {}

    async def target(self, name: str) -> SendableDestination:
        found = await self._cached(self._destinations, name, self._load_destination)
        if isinstance(found, str):
            raise UndeliverableError(found)
        return found

    async def payload(self, delivery: Delivery, profile: CustomerProfile) -> str:
        template = await self._cached(self._templates, delivery.template, self._load_template)
        if isinstance(template, str):
            raise RenderError(template)
        trigger = {
            "trigger_id": delivery.id,
            "segment": delivery.rule,
            "kind": delivery.kind,
            "at": delivery.at,
            "rule_version": delivery.rule_version,
        }
        try:
            context = message_context(profile=profile, trigger=trigger)
            message = await self._renderer.render(template, context)
        except MessageTemplateError as error:
            raise RenderError(str(error)) from error
        data = {
            "customer_id": delivery.customer_id,
            "segment": delivery.rule,
            "transition": delivery.kind,
            "at": delivery.at,
            "rule_version": delivery.rule_version,
            "template": delivery.template,
            "kind": message.kind,
            "message": message.content(),
        }
        return webhook_body(f"segment.{delivery.kind}", data)

    async def _cached(
        self, cache: dict[str, tuple[float, T]], name: str, load: Callable[[str], T]
    ) -> T:
        hit = cache.get(name)
        if hit is not None and time.monotonic() - hit[0] < CACHE_S:
            return hit[1]
        value = await asyncio.to_thread(load, name)
        if isinstance(value, str):  # why there is none: asked again next time
            cache.pop(name, None)
        else:
            cache[name] = (time.monotonic(), value)
        return value

    def _load_destination(self, name: str) -> SendableDestination | str:
        """The destination, or why there is none to send to."""
        with Session(self._engine) as session:
            try:
                found = sendable_destination(session=session, box=self._box, name=name)
            except DestinationNotFound:
                return (
                    f"destination {name!r} does not exist: an operator creates it with "
                    "POST /api/destinations"
                )
            except SecretUnreadable as error:
                return str(error)
        if found.disabled:
            return f"destination {name!r} is disabled"
        return found

    def _load_template(self, name: str) -> CompiledTemplate | str:
        with Session(self._engine) as session:
            try:
                return load_template(session=session, name=name)
            except TemplateNotFound:
                return f"template {name!r} does not exist"
            except MessageTemplateError as error:
                return str(error)


class RedisLost(RuntimeError):
    """Redis went away while the dispatcher ran; its next start waits for it and resumes."""


async def run(settings: Settings, redis_url: str) -> None:
    """``segflow dispatcher``: deliver until SIGTERM or Ctrl-C.

    It starts once Redis answers (waiting quietly while Redis starts or loads its data). A
    Redis lost under way raises ``RedisLost``: the process ends with one line, and its next
    start reclaims the deliveries that were in flight."""
    client = aioredis.Redis.from_url(redis_url)
    engine = make_engine(settings)
    renderer = TemplateRenderer()
    dispatcher = Dispatcher(
        client,
        StoredOutbox(engine, secret_box(settings), renderer),
        allow_private=settings.allow_private_destinations,
        consumer=CONSUMER,
        retention=DispatchRetention(
            triggers_ms=settings.stream_retention_ms,
            deliveries_ms=settings.delivery_retention_ms,
            every_s=settings.trim_interval_s,
        ),
    )
    stop = asyncio.Event()  # a stop asked for while waiting for Redis

    def ask_to_stop() -> None:
        stop.set()
        dispatcher.stop()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, ask_to_stop)
    try:
        if await wait_until_ready(redis_url, who="dispatcher", stop=stop):
            await dispatcher.run()
    except AuthenticationError:
        raise
    except (RedisConnectionError, RedisTimeoutError) as error:
        raise RedisLost(f"lost Redis at {masked_url(redis_url)}: {error}") from None
    finally:
        await dispatcher.close()
        await renderer.close()
        await client.aclose()
        engine.dispose()


# One name across restarts: a dispatcher started again reads what it had read and not
# acknowledged when it died (the consumer group's pending entries are per consumer).
CONSUMER = "segflow-dispatcher"
