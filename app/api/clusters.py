"""Admin endpoints for the behavioural clusters: the current model with its quality, live sizes
and turnover, a refit now, the refits' history, a cluster's members, and renaming one. Refits
are CPU work of seconds: they run in a thread with a client of their own."""

from __future__ import annotations

import asyncio
import unicodedata
from collections.abc import Sequence
from typing import Annotated, Any, Literal, get_args

import redis
from fastapi import Body, HTTPException, Query
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from redis import RedisError
from sqlalchemy.exc import SQLAlchemyError

from app.api.deps import Admin, AppState, Limit, StateDep, When, admin_router
from app.clock import now_ms
from app.clustering import schedule, service, store
from app.clustering.fitting import FAMILIES, MIN_PROFILES
from app.clustering.model import ClusterModel, membership
from app.models import ClusterRefit
from app.profiles import segments
from app.profiles.segments import MemberPage

router = admin_router(
    prefix="/api/clusters",
    tags=["clusters"],
    responses={503: {"description": "Redis or SQL unreachable."}},
)
Cursor = Annotated[str | None, Query(pattern=r"^\d{1,18}$")]
NO_MODEL = "no cluster model yet: refit first (POST /api/clusters/refit, or `segflow cluster fit`)"
MOST_SAMPLE = 1_000_000
Family = Literal["kmeans", "gaussian_mixture", "agglomerative", "dbscan", "hdbscan"]


class Quality(BaseModel):
    """Measured on the held-back part of the fitting sample (the README's "Clusters")."""

    model_config = ConfigDict(extra="allow")

    silhouette: float | None = None
    davies_bouldin: float | None = None
    calinski_harabasz: float | None = None
    noise_share: float | None = None  # held-back profiles in no cluster (density models)
    outlier_share: float | None = None  # of the whole sample
    sample_size: int | None = None


class ClusterOut(BaseModel):
    id: str
    name: str
    named_by: str  # "auto" (from what sets it apart) or "marketer" (renamed; kept by refits)
    size: int  # members now (the dataflow's assignment)
    sample_size: int  # members in the fitting sample
    centroid: dict[str, float]  # feature: value in its own unit (a category: share of members)
    outlier_share: float | None  # of its members in the fitting sample


class Turnover(BaseModel):
    moved_24h: int  # customers who changed cluster in the last 24 hours
    assigned: int  # customers in a cluster now
    share_24h: float


class ClusterModelOut(BaseModel):
    version: int  # of the published model (a rename publishes a new one)
    algorithm: str
    params: dict[str, Any]
    fitted_at: int  # ms since the epoch
    quality: Quality
    items: list[ClusterOut]
    turnover: Turnover


class RefitIn(BaseModel):
    sample_size: int = Field(default=service.DEFAULT_SAMPLE, ge=MIN_PROFILES, le=MOST_SAMPLE)
    algorithms: list[Family] = Field(
        default_factory=lambda: list(get_args(Family)), min_length=1, max_length=10
    )


def _printable(name: str) -> str:
    for char in name:
        if char != "\u200d" and unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            raise ValueError(f"must not hold control characters (found U+{ord(char):04X})")
    return name


ClusterName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100),
    AfterValidator(_printable),
]


class RenameIn(BaseModel):
    name: ClusterName


class RefitOut(BaseModel):
    id: int
    fitted_at: When
    reason: str  # "schedule" | "api" | "cli" | "ui"
    algorithm: str
    params: dict[str, Any]
    sample_size: int
    silhouette: float | None
    davies_bouldin: float | None
    calinski_harabasz: float | None
    outlier_share: float | None
    sizes: dict[str, int]  # cluster id: members in the sample
    kept: list[str]  # ids kept from the model before
    added: list[str]
    retired: list[str]
    fit_seconds: float
    candidates: list[dict[str, Any]]  # every model tried, judged (the chosen one's is above)
    model_version: int


class RefitPage(BaseModel):
    items: list[RefitOut]  # newest first
    next_cursor: str | None


def _unreachable(error: Exception) -> HTTPException:
    return HTTPException(503, detail=f"clusters: Redis or SQL unreachable ({error})")


async def model_view(state: AppState, model: ClusterModel) -> ClusterModelOut:
    """The model as the API shows it, with each cluster's live size and the turnover."""
    sizes = await store.sizes(state.redis, model.ids)
    turnover = await store.turnover(state.redis, now_ms(), sum(sizes))
    quality = dict(model.quality)
    shares = quality.pop("outlier_shares", {})
    items = [
        ClusterOut(
            id=cluster.id,
            name=cluster.name,
            named_by=cluster.named_by,
            size=size,
            sample_size=cluster.size,
            centroid=model.centroid(cluster),
            outlier_share=shares.get(cluster.id),
        )
        for cluster, size in zip(model.clusters, sizes, strict=True)
    ]
    return ClusterModelOut(
        version=model.version,
        algorithm=model.algorithm,
        params=model.params,
        fitted_at=model.fitted_at,
        quality=Quality.model_validate(quality),
        items=items,
        turnover=Turnover.model_validate(turnover),
    )


async def current_model(state: AppState) -> ClusterModel | None:
    try:
        return await store.published_async(state.redis)
    except (RedisError, OSError) as error:
        raise _unreachable(error) from error


def _refit(
    state: AppState, *, reason: str, sample_size: int, families: Sequence[str]
) -> ClusterModel:
    """A refit with a client of this thread's own; the published model."""
    client = redis.Redis.from_url(state.redis_url, socket_connect_timeout=2, socket_timeout=60)
    try:
        return service.refit(
            client, state.engine, reason=reason, sample_size=sample_size, families=families
        ).model
    finally:
        client.close()


async def refit_now(
    state: AppState, *, reason: str, sample_size: int, families: Sequence[str]
) -> ClusterModel:
    """A refit in a thread; raises ``TooFewProfiles`` and ``RefitBusy``."""
    try:
        return await asyncio.to_thread(
            _refit, state, reason=reason, sample_size=sample_size, families=families
        )
    except (RedisError, OSError, SQLAlchemyError) as error:
        raise _unreachable(error) from error


def _rename(state: AppState, cluster_id: str, name: str, by: str) -> ClusterModel:
    client = redis.Redis.from_url(state.redis_url, socket_connect_timeout=2, socket_timeout=10)
    try:
        return service.rename(client, state.engine, cluster_id, name, by)
    finally:
        client.close()


async def rename(state: AppState, cluster_id: str, name: str, by: str) -> ClusterModel:
    """Raises ``UnknownCluster`` and ``NameTaken``."""
    try:
        return await asyncio.to_thread(_rename, state, cluster_id, name, by)
    except (RedisError, OSError, SQLAlchemyError) as error:
        raise _unreachable(error) from error


async def refit_on_schedule(state: AppState) -> None:
    """Every ``SEGFLOW_CLUSTER_REFIT_INTERVAL_S``, in one of the API processes."""
    sample = service.DEFAULT_SAMPLE

    def refit() -> ClusterModel:
        return _refit(state, reason="schedule", sample_size=sample, families=FAMILIES)

    await schedule.run(state.redis, refit, interval_s=state.settings.cluster_refit_interval_s)


@router.get(
    "",
    response_model=ClusterModelOut,
    responses={404: {"description": "No model yet (before the first refit)."}},
)
async def read_clusters(state: StateDep) -> ClusterModelOut:
    """The current cluster model: algorithm, quality, each cluster with its size now and its
    centroid in the features' own units, and the share of customers who changed cluster in
    the last 24 hours."""
    model = await current_model(state)
    if model is None:
        raise HTTPException(404, detail=NO_MODEL)
    try:
        return await model_view(state, model)
    except (RedisError, OSError) as error:
        raise _unreachable(error) from error


@router.post(
    "/refit",
    response_model=ClusterModelOut,
    responses={
        400: {"description": "The body is not JSON."},
        409: {"description": "A refit is already under way."},
        422: {"description": "Too few profiles to fit (the detail says how many are needed)."},
    },
)
async def refit(state: StateDep, body: Annotated[RefitIn | None, Body()] = None) -> ClusterModelOut:
    """Fit now on a sample of the current profiles (``sample_size``, every algorithm unless
    ``algorithms`` names some), publish the chosen model to the dataflow, and answer it as
    ``GET /api/clusters`` does. Takes seconds to minutes, by the sample."""
    wanted = body or RefitIn()
    try:
        model = await refit_now(
            state, reason="api", sample_size=wanted.sample_size, families=wanted.algorithms
        )
    except service.TooFewProfiles as error:
        raise HTTPException(422, detail=str(error)) from error
    except service.RefitBusy as error:
        raise HTTPException(409, detail=str(error)) from error
    try:
        return await model_view(state, model)
    except (RedisError, OSError) as error:
        raise _unreachable(error) from error


@router.get("/refits", response_model=RefitPage)
async def list_refits(state: StateDep, limit: Limit = 20, cursor: Cursor = None) -> RefitPage:
    """Every refit, newest first: the chosen model's quality and parameters, every candidate
    judged, and which cluster ids it kept, added and retired."""
    before = int(cursor) if cursor else None
    try:
        rows = await asyncio.to_thread(service.refits, state.engine, before=before, limit=limit + 1)
    except SQLAlchemyError as error:
        raise _unreachable(error) from error
    items = [_refit_out(row) for row in rows[:limit]]
    more = str(items[-1].id) if len(rows) > limit else None
    return RefitPage(items=items, next_cursor=more)


def _refit_out(row: ClusterRefit) -> RefitOut:
    return RefitOut.model_validate(row.model_dump(exclude={"model"}))


@router.get(
    "/{cluster_id}/members",
    response_model=MemberPage,
    responses={404: {"description": "No such cluster in the current model."}},
)
async def list_members(
    cluster_id: str, state: StateDep, limit: Limit = 100, cursor: Cursor = None
) -> MemberPage:
    """The customers in the cluster now, a page at a time (as a segment's members)."""
    model = await current_model(state)
    if model is None or cluster_id not in model.ids:
        raise HTTPException(404, detail=f"cluster {cluster_id!r}: not in the current model")
    try:
        return await segments.members(
            state.redis, membership(cluster_id), limit=limit, cursor=cursor
        )
    except (RedisError, OSError) as error:
        raise _unreachable(error) from error


@router.patch(
    "/{cluster_id}",
    response_model=ClusterOut,
    responses={
        400: {"description": "The body is not JSON."},
        404: {"description": "No such cluster in the current model."},
        422: {"description": "Not a valid name, or another cluster's."},
    },
)
async def rename_cluster(
    cluster_id: str, body: RenameIn, state: StateDep, admin: Admin
) -> ClusterOut:
    """Give the cluster a name of your own: it keeps it across refits while it keeps its id
    (and rules' ``cluster:`` conditions may name it)."""
    try:
        model = await rename(state, cluster_id, body.name, admin)
    except service.UnknownCluster as error:
        raise HTTPException(404, detail=str(error)) from error
    except service.NameTaken as error:
        raise HTTPException(422, detail=f"name {body.name!r}: {error}") from error
    try:
        view = await model_view(state, model)
    except (RedisError, OSError) as error:
        raise _unreachable(error) from error
    return next(item for item in view.items if item.id == cluster_id)
