"""``/admin``: the marketers' web UI, server-rendered (Jinja2) with htmx for the parts that
refresh, served by the API's own app. Every page and call needs a session (``app.web.session``);
every asset is Segflow's own (``/static``)."""

from __future__ import annotations

import time
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from redis import RedisError

from app.api.deps import AppState, StateDep, confirmed_admin
from app.clock import now_ms
from app.clustering import store as cluster_store
from app.clustering.model import membership
from app.credentials import hash_secret
from app.dispatch import erasure as dispatch_erasure
from app.dispatch.deliveries import DEAD_KEY, DeliveryStore, index_key
from app.ingest import failed_events
from app.ingest.status import pipeline_status
from app.profiles import erasure, history, moves, segments
from app.profiles import service as profiles
from app.rules.service import explain
from app.streams import FAILED_EVENTS_KEY
from app.web import activation_pages, cluster_pages, rule_pages
from app.web.base import (
    LoginRequired,
    StoredRulesDep,
    WebSessionDep,
    html,
    page,
    signer,
)
from app.web.session import (
    LOGIN_COOKIE,
    LOGIN_S,
    SESSION_COOKIE,
    SESSION_S,
    login_nonce_matches,
    new_login_nonce,
    new_session,
)

router = APIRouter(prefix="/admin", include_in_schema=False)
MOVES_SHOWN = 50  # a segment page's transitions, newest first (older ones a page at a time)


def _login_form(
    request: Request, state: AppState, *, next_path: str, error: str | None, status_code: int
) -> HTMLResponse:
    nonce, cookie = new_login_nonce(signer(state))
    context = {"nonce": nonce, "next": next_path, "error": error}
    response = html(request, "login.html", context, status_code)
    _set_cookie(request, response, LOGIN_COOKIE, cookie, LOGIN_S)
    return response


def _set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/admin",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _local(next_path: str) -> str:
    """Only a path of this UI: never an open redirect to another site."""
    return next_path if next_path.startswith("/admin") and "//" not in next_path else "/admin"


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, state: StateDep, next: str = "/admin") -> HTMLResponse:
    return _login_form(request, state, next_path=_local(next), error=None, status_code=200)


@router.post("/login", response_class=HTMLResponse)
async def login(
    request: Request,
    state: StateDep,
    token: Annotated[str, Form()],  # any length is just not a token (the body is at most 1 MB)
    nonce: Annotated[str, Form(max_length=128)],
    next: Annotated[str, Form(max_length=2048)] = "/admin",
) -> Response:
    next_path = _local(next)
    keys = signer(state)
    if not login_nonce_matches(keys, request.cookies.get(LOGIN_COOKIE), nonce):
        error = "The login form expired: enter the token again."
        return _login_form(request, state, next_path=next_path, error=error, status_code=403)
    digest = hash_secret(token.strip())
    if await confirmed_admin(state, digest) is None:
        error = "That is not a valid admin token."
        return _login_form(request, state, next_path=next_path, error=error, status_code=401)
    _, cookie = new_session(keys, digest)
    response = RedirectResponse(next_path, status_code=303)
    _set_cookie(request, response, SESSION_COOKIE, cookie, SESSION_S)
    response.delete_cookie(LOGIN_COOKIE, path="/admin")
    return response


@router.post("/logout")
def logout(request: Request, _session: WebSessionDep) -> Response:
    response: Response
    if request.headers.get("HX-Request"):  # htmx follows HX-Redirect, not a 303
        response = Response(status_code=204, headers={"HX-Redirect": "/admin/login"})
    else:
        response = RedirectResponse("/admin/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/admin")
    return response


# --- overview ------------------------------------------------------------------------------


@router.get("", response_class=HTMLResponse)
def overview(request: Request, session: WebSessionDep) -> HTMLResponse:
    return page(request, "overview.html", session, title="Overview")


class RateMeter:
    """Events per second between this reading and the one before (per API process)."""

    def __init__(self) -> None:
        self._last: tuple[float, int, int] | None = None

    def rates(self, accepted: int, processed: int) -> tuple[float | None, float | None]:
        now = time.monotonic()
        last, self._last = self._last, (now, accepted, processed)
        if last is None or now - last[0] < 0.5:
            return None, None
        elapsed = now - last[0]
        return (accepted - last[1]) / elapsed, (processed - last[2]) / elapsed


_rates = RateMeter()


@router.get("/overview/stats", response_class=HTMLResponse)
async def overview_stats(request: Request, state: StateDep, session: WebSessionDep) -> Response:
    try:
        status = await pipeline_status(state.redis, partitions=state.settings.partitions)
        pipe = state.redis.pipeline(transaction=False)
        pipe.xlen(FAILED_EVENTS_KEY)
        pipe.zcard(DEAD_KEY)
        failed, dead = await pipe.execute()
        hour_ago = now_ms() - history.HOUR_MS
        deliveries = await DeliveryStore(state.redis).statuses_since(hour_ago)
    except (RedisError, OSError) as error:
        return page(request, "_overview_stats.html", session, down=str(error))
    accepted_rate, processed_rate = _rates.rates(status.events_accepted, status.events_processed)
    return page(
        request,
        "_overview_stats.html",
        session,
        status=status,
        accepted_rate=accepted_rate,
        processed_rate=processed_rate,
        failed=failed,
        dead=dead,
        sent=deliveries.get("delivered", 0),
        waiting=deliveries.get("scheduled", 0),
        gave_up=sum(deliveries.get(k, 0) for k in ("dead", "failed", "undeliverable")),
        down=None,
    )


# --- segments ------------------------------------------------------------------------------


@router.get("/segments", response_class=HTMLResponse)
async def segment_list(
    request: Request, state: StateDep, session: WebSessionDep, rules: StoredRulesDep
) -> HTMLResponse:
    ids = [stored.id for stored in rules]
    sizes = await segments.sizes(state.redis, ids)
    now = now_ms()
    counts = await moves.counts(state.redis, ids, now=now)
    flagged = await history.anomaly_counts(state.redis, ids, since=now - history.DAY_MS, until=now)
    rows = [
        {"rule": stored, "size": size, "moves": counted, "anomalies": anomalies}
        for stored, size, counted, anomalies in zip(rules, sizes, counts, flagged, strict=True)
    ]
    return page(request, "segments.html", session, title="Segments", rows=rows, kept=moves.KEPT)


@router.get("/segments/{segment_id}", response_class=HTMLResponse)
async def segmentpage(
    request: Request,
    segment_id: str,
    state: StateDep,
    session: WebSessionDep,
    rules: StoredRulesDep,
    cursor: str | None = None,
    moved: str | None = None,
) -> HTMLResponse:
    stored = next((r for r in rules if r.id == segment_id), None)
    if stored is None:
        return page(request, "missing.html", session, 404, title="No such segment", what=segment_id)
    if cursor is not None and not (cursor.isdigit() and len(cursor) <= 18):
        cursor = None
    if not moves.valid_cursor(moved):
        moved = None
    members = await segments.members(state.redis, segment_id, limit=50, cursor=cursor)
    (size,) = await segments.sizes(state.redis, [segment_id])
    now = now_ms()
    (counted,) = await moves.counts(state.redis, [segment_id], now=now)
    recent = await moves.page(state.redis, segment_id, limit=MOVES_SHOWN, cursor=moved)
    day_ago = now - history.DAY_MS
    samples = await history.read(state.redis, segment_id, since=day_ago)
    chart = {
        "at": [s.at / 1000 for s in samples],
        "size": [s.size for s in samples],
        "anomaly": [s.anomaly for s in samples],
    }
    return page(
        request,
        "segment.html",
        session,
        title=stored.rule.name,
        stored=stored,
        size=size,
        members=members,
        chart=chart,
        anomalies=[s for s in samples if s.anomaly],
        counts=counted,
        kept=moves.KEPT,
        recent=recent,
        older=moved is not None,
    )


# --- customers -----------------------------------------------------------------------------


@router.get("/customers", response_class=HTMLResponse)
async def customer_lookup(
    request: Request,
    state: StateDep,
    session: WebSessionDep,
    id: str = "",
) -> Response:
    wanted = id.strip()
    if wanted and await profiles.get_profile(state.redis, wanted) is not None:
        return RedirectResponse(f"/admin/customers/{quote(wanted, safe='')}", status_code=303)
    return page(
        request, "customers.html", session, title="Customers", wanted=wanted, missing=bool(wanted)
    )


@router.get("/customers/{customer_id:customer}", response_class=HTMLResponse)
async def customerpage(
    request: Request,
    customer_id: str,
    state: StateDep,
    session: WebSessionDep,
    rules: StoredRulesDep,
) -> HTMLResponse:
    profile = await profiles.get_profile(state.redis, customer_id)
    if profile is None:
        return page(
            request,
            "customers.html",
            session,
            404,
            title="Customers",
            wanted=customer_id,
            missing=True,
        )
    explained = [await explain(state.redis, customer_id, r.rule, r.version) for r in rules]
    model = await cluster_store.published_async(state.redis)
    names = {r.id: r.rule.name for r in rules}
    if model is not None:  # cluster changes are transitions too, of ``cluster:<id>``
        names |= {membership(c.id): f"Cluster: {c.name}" for c in model.clusters}
    transitions = await segments.transitions(state.redis, customer_id, limit=50, cursor=None)
    deliveries, _ = await DeliveryStore(state.redis).page(
        index_key("customer", customer_id), limit=20, cursor=None
    )
    return page(
        request,
        "customer.html",
        session,
        title=customer_id,
        profile=profile,
        explanations=[e for e in explained if e is not None],
        names=names,
        transitions=list(reversed(transitions.items)),
        cluster_name=model.names().get(profile.cluster or "") if model else None,
        deliveries=deliveries,
    )


@router.post("/customers/{customer_id:customer}/erase", response_class=HTMLResponse)
async def erase_customer(
    request: Request,
    customer_id: str,
    state: StateDep,
    session: WebSessionDep,
    confirm: Annotated[str, Form(max_length=1024)] = "",
) -> HTMLResponse:
    """GDPR erasure, once the customer's id is typed to confirm it."""
    if confirm != customer_id:
        # 200: htmx swaps only a successful answer in, and this one is the page's message
        return page(
            request,
            "_erased.html",
            session,
            error="Type the customer's id exactly to erase them.",
            report=None,
        )
    report = await erasure.erase_customer(
        state.redis,
        customer_id,
        partitions=state.settings.partitions,
        now=now_ms(),
        forget_elsewhere=dispatch_erasure.forget_customers,
    )
    return page(request, "_erased.html", session, error=None, report=report)


# --- failed events -------------------------------------------------------------------------


@router.get("/failed-events", response_class=HTMLResponse)
async def failed_event_list(
    request: Request, state: StateDep, session: WebSessionDep, cursor: str | None = None
) -> HTMLResponse:
    try:
        found = await failed_events.page(state.redis, limit=50, cursor=cursor)
    except failed_events.BadCursor:
        found = await failed_events.page(state.redis, limit=50, cursor=None)
    return page(request, "failed_events.html", session, title="Failed events", page=found)


# --- wiring --------------------------------------------------------------------------------


async def _login_required(request: Request, error: LoginRequired) -> Response:
    target = f"/admin/login?next={quote(error.next_path)}"
    if request.headers.get("HX-Request"):
        return Response(status_code=401, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


def mount(app: FastAPI) -> None:
    """The UI's routes, its login redirect, and ``/`` leading to it."""
    app.include_router(router)
    app.include_router(rule_pages.router)
    app.include_router(cluster_pages.router)
    app.include_router(activation_pages.router)
    app.add_exception_handler(LoginRequired, _login_required)  # type: ignore[arg-type]

    @app.get("/", include_in_schema=False)
    def front_door() -> RedirectResponse:
        return RedirectResponse("/admin", status_code=307)
