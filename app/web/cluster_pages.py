"""Clusters in the admin UI: the current model's quality, each cluster with its size, what sets
it apart and a rename form, a 2-D picture of a sample of profiles, the refits' history, and a
refit now. Refits and renames go through the admin API's functions (``app.api.clusters``)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from app.api.clusters import RenameIn, current_model, model_view, refit_now, rename
from app.api.deps import AppState, StateDep
from app.clustering import picture, service
from app.clustering.fitting import FAMILIES, MIN_PROFILES
from app.clustering.model import ClusterModel, membership
from app.clustering.summary import distinguishing
from app.profiles import segments
from app.web.base import WebSessionDep, page

router = APIRouter(prefix="/admin", include_in_schema=False)
REFITS_SHOWN = 20
# one colour per cluster in the picture, in the model's order (outliers: grey)
PALETTE = ("#3b5bdb", "#e8590c", "#2f9e44", "#ae3ec9", "#c92a2a", "#1098ad", "#f08c00", "#5c940d")
OUTLIER_COLOUR = "#868e96"


def _interval(seconds: int) -> str:
    if not seconds:
        return "only on demand (SEGFLOW_CLUSTER_REFIT_INTERVAL_S is 0)"
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return f"every {unit}" if count == 1 else f"every {count} {unit}s"
    return f"every {seconds} s"


@router.get("/clusters", response_class=HTMLResponse)
async def cluster_list(request: Request, state: StateDep, session: WebSessionDep) -> HTMLResponse:
    model = await current_model(state)
    refits = await asyncio.to_thread(service.refits, state.engine, before=None, limit=REFITS_SHOWN)
    context: dict[str, Any] = {
        "view": None,
        "refits": refits,
        "min_profiles": MIN_PROFILES,
        "schedule": _interval(state.settings.cluster_refit_interval_s),
    }
    if model is not None:
        context["view"] = await model_view(state, model)
        context["traits"] = {c.id: distinguishing(model, c) for c in model.clusters}
        context["colours"] = _colours(model)
    return page(request, "clusters.html", session, title="Clusters", **context)


def _colours(model: ClusterModel) -> dict[str, str]:
    return {c.id: PALETTE[i % len(PALETTE)] for i, c in enumerate(model.clusters)}


def _picture(state: AppState, model: ClusterModel) -> dict[str, Any]:
    client = redis.Redis.from_url(state.redis_url, socket_connect_timeout=2, socket_timeout=60)
    try:
        return picture.picture(client, model)
    finally:
        client.close()


@router.get("/clusters/picture", response_class=HTMLResponse)
async def cluster_picture(request: Request, state: StateDep, session: WebSessionDep) -> Response:
    """The picture's partial (the page loads it after itself: the first after a refit scans
    the profiles)."""
    model = await current_model(state)
    if model is None:
        return page(request, "_cluster_picture.html", session, chart=None)
    drawn = await asyncio.to_thread(_picture, state, model)
    names, colours = model.names(), _colours(model)
    series = [
        {
            "label": names.get(s["id"], s["id"]) if s["id"] else "Outliers",
            "colour": colours.get(s["id"], OUTLIER_COLOUR) if s["id"] else OUTLIER_COLOUR,
            "x": s["x"],
            "y": s["y"],
        }
        for s in drawn["series"]
    ]
    chart = {"series": series, "explained": drawn["explained"]}
    points = sum(len(s["x"]) for s in series)
    return page(request, "_cluster_picture.html", session, chart=chart, points=points)


@router.get("/clusters/{cluster_id}", response_class=HTMLResponse)
async def cluster_detail(
    request: Request,
    cluster_id: str,
    state: StateDep,
    session: WebSessionDep,
    cursor: str | None = None,
) -> HTMLResponse:
    """One cluster: its size, what sets it apart, its centre, and its members a page at a
    time."""
    model = await current_model(state)
    found = next((c for c in model.clusters if c.id == cluster_id), None) if model else None
    if model is None or found is None:
        back = ("/admin/clusters", "All clusters")
        return page(
            request,
            "missing.html",
            session,
            404,
            title="No such cluster",
            what=cluster_id,
            back=back,
        )
    if cursor is not None and not (cursor.isdigit() and len(cursor) <= 18):
        cursor = None
    view = await model_view(state, model)
    members = await segments.members(state.redis, membership(cluster_id), limit=50, cursor=cursor)
    return page(
        request,
        "cluster.html",
        session,
        title=found.name,
        item=next(item for item in view.items if item.id == cluster_id),
        traits=distinguishing(model, found),
        typical=model.prep.original([0.0] * model.prep.width),
        members=members,
    )


@router.post("/clusters/refit", response_class=HTMLResponse)
async def cluster_refit(request: Request, state: StateDep, session: WebSessionDep) -> Response:
    """A refit now; the page again when done (a refusal: 200 with the reason, for htmx)."""
    try:
        await refit_now(state, reason="ui", sample_size=service.DEFAULT_SAMPLE, families=FAMILIES)
    except (service.TooFewProfiles, service.RefitBusy) as error:
        return page(request, "_cluster_refused.html", session, error=f"Not refitted: {error}")
    return Response(status_code=204, headers={"HX-Redirect": "/admin/clusters"})


@router.post("/clusters/{cluster_id}/rename", response_class=HTMLResponse)
async def cluster_rename(
    request: Request,
    cluster_id: str,
    state: StateDep,
    session: WebSessionDep,
    name: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    """A marketer's name for the cluster (kept across refits)."""
    try:
        wanted = RenameIn(name=name)
        await rename(state, cluster_id, wanted.name, session.name)
    except ValidationError as error:
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in error.errors())
        return page(request, "_cluster_refused.html", session, error=f"Not renamed: {problems}")
    except (service.UnknownCluster, service.NameTaken) as error:
        return page(request, "_cluster_refused.html", session, error=f"Not renamed: {error}")
    return Response(status_code=204, headers={"HX-Redirect": "/admin/clusters"})
