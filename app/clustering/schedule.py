"""Refits on a schedule, inside the API processes (``SEGFLOW_CLUSTER_REFIT_INTERVAL_S``).

Time is cut into intervals from the epoch (every hour on the hour by default). In each, the
first API process to claim it (``SET NX`` of the interval's key, so one of several processes)
refits in a thread, unless a refit (the API's, ``segflow cluster fit``) already published a
model during that interval. While there are too few profiles, or another refit is under way,
the interval is skipped with one log line. When the API stops, a refit under way is finished
first (a thread cannot be stopped).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import redis.asyncio as aioredis
from redis import RedisError
from sqlalchemy.exc import SQLAlchemyError

from app.clock import now_ms
from app.clustering import store
from app.clustering.fitting import TooFewProfiles
from app.clustering.service import RefitBusy
from app.clustering.stream import STREAM_ALGORITHM
from app.db import to_the_end

log = logging.getLogger(__name__)


def _interval_key(start: int) -> str:
    return f"clusters:scheduled:{start}"


async def run(client: aioredis.Redis, refit: Callable[[], object], *, interval_s: int) -> None:
    """Refit once per interval, for ever (``refit`` runs in a thread)."""
    interval_ms = interval_s * 1000
    while True:
        now = now_ms()
        try:
            await refit_in_interval(
                client, refit, start=now - now % interval_ms, length=interval_ms
            )
        except (RedisError, OSError, SQLAlchemyError) as error:
            log.warning("scheduled cluster refit: not run this interval (%s)", error)
        except Exception:  # a fault of one refit must not end the schedule
            log.exception("scheduled cluster refit failed")
        await asyncio.sleep((interval_ms - now_ms() % interval_ms) / 1000)


async def refit_in_interval(
    client: aioredis.Redis, refit: Callable[[], object], *, start: int, length: int
) -> bool:
    """The interval's refit, unless another process claimed it or a model was published in
    it: whether this call refitted."""
    if not await client.set(_interval_key(start), 1, nx=True, px=2 * length + 60_000):
        return False
    model = await store.published_async(client)
    # a stream publication (every few minutes in stream mode) is no refit: it does not count
    if model is not None and model.fitted_at >= start and model.algorithm != STREAM_ALGORITHM:
        log.info(
            "scheduled cluster refit skipped: model %d was fitted in this interval", model.version
        )
        return False
    try:
        # cancelled, the refit still ends before the process lets go of what it uses (the SQL
        # engine, the refit lock); the process could not exit before it anyway
        await to_the_end(refit)
    except TooFewProfiles as error:
        log.info("scheduled cluster refit skipped: %s", error)
        return False
    except RefitBusy:
        log.info("scheduled cluster refit skipped: another refit is under way")
        return False
    return True
