"""``create_app()``: routers, lifespan and error handlers; nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api import (
    activation,
    clusters,
    collector,
    credentials,
    customers,
    deliveries,
    docs,
    health,
    rules,
    segments,
    status,
)
from app.api.body_timeout import BodyTimeout
from app.api.deps import AppState
from app.db import make_engine
from app.dispatch.rendering import TemplateRenderer
from app.errors import CollectorError
from app.ingest.auth import WriteKeyCache
from app.ingest.service import EventStore
from app.redis_client import async_redis
from app.redis_server import redis_url_for
from app.settings import Settings, get_settings
from app.web import pages


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with redis_url_for(settings.redis_url, settings.data_dir) as url:
            client = async_redis(url)
            engine = make_engine(settings)
            store = EventStore(
                client, partitions=settings.partitions, dedup_ttl_s=settings.dedup_window_s
            )
            app.state.segflow = AppState(
                settings=settings,
                redis=client,
                engine=engine,
                store=store,
                write_keys=WriteKeyCache(engine, client),
                renderer=TemplateRenderer(processes=1),
                redis_url=url,
            )
            tasks = [asyncio.create_task(segments.record_history(app.state.segflow))]
            if settings.cluster_refit_interval_s:
                tasks.append(asyncio.create_task(clusters.refit_on_schedule(app.state.segflow)))
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                await app.state.segflow.renderer.close()
                await client.aclose()
                engine.dispose()

    app = FastAPI(
        title="Segflow",
        summary="Real-time customer segmentation: Segment-compatible collector and admin API.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # served by app.api.docs, with its files, not from a CDN
        redoc_url=None,
    )
    app.add_middleware(
        BodyTimeout, idle_s=settings.body_idle_timeout_s, total_s=settings.body_timeout_s
    )
    app.include_router(collector.router)
    app.include_router(customers.router)
    app.include_router(segments.router)
    app.include_router(clusters.router)
    app.include_router(status.router)
    app.include_router(rules.router)
    app.include_router(activation.destinations)
    app.include_router(activation.templates)
    app.include_router(deliveries.router)
    app.include_router(credentials.write_keys)
    app.include_router(credentials.admin_tokens)
    app.include_router(health.router)
    docs.mount(app)
    pages.mount(app)
    app.add_exception_handler(CollectorError, _collector_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    return app


def _allowed_methods(request: Request) -> str:
    methods: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, APIRoute) and route.path_regex.match(request.url.path):
            methods |= route.methods or set()
    return ", ".join(sorted(methods))


def _collector_body(
    status_code: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    body = {"success": False, "code": code, "message": message}
    return Response(
        orjson.dumps(body),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )


async def _collector_error(_request: Request, error: CollectorError) -> Response:
    headers = None
    if error.retry_after_s is not None:
        headers = {"Retry-After": str(error.retry_after_s)}
    return _collector_body(error.status_code, error.code, error.message, headers)


SHOWN_INPUT_BYTES = 512  # a refused input longer than this is described, not echoed


async def _validation_error(_request: Request, error: RequestValidationError) -> Response:
    """FastAPI's 422 (``{"detail": [...]}``), with the inputs JSON cannot hold (a body's
    ``NaN`` or ``Infinity``, which Python's JSON reader takes, and integers past 64 bits)
    shown as text: written as they are, they made the answer itself fail, a 500. A long
    input is described by its size: echoed, a megabyte's body made an answer of several."""
    detail = _json_safe(jsonable_encoder(error.errors()))
    for item in detail if isinstance(detail, list) else ():
        if isinstance(item, dict) and "input" in item:
            size = len(orjson.dumps(item["input"]))
            if size > SHOWN_INPUT_BYTES:
                item["input"] = f"(not shown: {size:,} bytes of JSON)"
    return Response(orjson.dumps({"detail": detail}), 422, media_type="application/json")


def _json_safe(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, int) and not -(2**63) <= value < 2**64:  # past what orjson writes
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


async def _http_error(request: Request, error: StarletteHTTPException) -> Response:
    if error.status_code == 405:
        # Starlette's Allow names the methods of the first route matching the path only;
        # a path served by several routes (GET and DELETE of a customer) must list them all.
        error.headers = {**(error.headers or {}), "Allow": _allowed_methods(request)}
    # The SDKs read `code` and `message` from any non-200 answer and crash without them.
    if request.url.path.startswith("/v1/"):
        code = {404: "not_found", 405: "method_not_allowed", 408: "request_timeout"}.get(
            error.status_code, "error"
        )
        headers = dict(error.headers) if error.headers else None
        return _collector_body(error.status_code, code, str(error.detail), headers)
    return await http_exception_handler(request, error)
