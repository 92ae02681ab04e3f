"""Liveness, readiness and metrics endpoints (no authentication, as probes expect)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from redis import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from app import metrics
from app.api.deps import StateDep
from app.streams import ALIVE_KEY, ALIVE_TTL_S

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        503: {"description": "Redis, SQL or the dataflow is not there: `checks` says which."}
    },
)
async def readyz(state: StateDep) -> JSONResponse:
    """Redis and SQL answer, and the dataflow runs; 503 naming what does not."""
    checks: dict[str, Any] = {}
    try:
        await state.redis.ping()
        checks["redis"] = "ok"
        alive = await state.redis.exists(ALIVE_KEY)
        checks["dataflow"] = (
            "ok" if alive else f"not running: no heartbeat in the last {ALIVE_TTL_S} s"
        )
    except (RedisError, OSError) as error:
        checks["redis"] = f"unreachable: {error}"
        checks["dataflow"] = "unknown: Redis unreachable"
    try:
        await run_in_threadpool(_ping_sql, state)
        checks["sql"] = "ok"
    except SQLAlchemyError as error:
        checks["sql"] = f"unreachable: {type(error).__name__}"
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


def _ping_sql(state: StateDep) -> None:
    with state.engine.connect() as connection:
        connection.execute(text("SELECT 1"))


@router.get("/metrics", response_class=Response)
async def prometheus_metrics() -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
