"""Admin endpoints for one customer: the profile, GDPR erasure, transitions and explanations.
Views are thin: profiles, erasure and explanations are read by their services."""

from __future__ import annotations

from typing import Annotated

from fastapi import HTTPException, Query
from redis import RedisError

from app.api.deps import Limit, StateDep, StoredRules, admin_router
from app.clock import now_ms
from app.dispatch import erasure as dispatch_erasure
from app.profiles import erasure, segments
from app.profiles import service as profiles
from app.profiles.erasure import ErasureReport
from app.profiles.segments import CorrectionPage, TransitionPage
from app.profiles.service import CustomerProfile
from app.rules.service import Explanation, explain

router = admin_router(
    prefix="/api/customers",
    tags=["customers"],
    responses={503: {"description": "Redis unreachable."}},
)
Cursor = Annotated[str | None, Query(pattern=r"^\d{1,18}$")]  # fits Redis's 64-bit integers


def _unreachable(what: str, error: Exception) -> HTTPException:
    return HTTPException(503, detail=f"{what}: Redis unreachable ({error})")


@router.get("/{customer_id:customer}/transitions", response_model=TransitionPage)
async def list_transitions(
    customer_id: str, state: StateDep, limit: Limit = 100, cursor: Cursor = None
) -> TransitionPage:
    """When the customer entered and left segments, oldest first, in event time."""
    try:
        return await segments.transitions(state.redis, customer_id, limit=limit, cursor=cursor)
    except (RedisError, OSError) as error:
        raise _unreachable("segments", error) from error


@router.get("/{customer_id:customer}/corrections", response_model=CorrectionPage)
async def list_corrections(
    customer_id: str, state: StateDep, limit: Limit = 100, cursor: Cursor = None
) -> CorrectionPage:
    """What late events corrected in the customer's transitions: each late event that changed
    them, with the transitions it retracted and added (the transitions list is corrected)."""
    try:
        return await segments.corrections(state.redis, customer_id, limit=limit, cursor=cursor)
    except (RedisError, OSError) as error:
        raise _unreachable("segments", error) from error


@router.get(
    "/{customer_id:customer}/explain",
    response_model=Explanation,
    responses={404: {"description": "No such customer or segment."}},
)
async def explain_membership(
    customer_id: str,
    state: StateDep,
    rules: StoredRules,
    segment: Annotated[str, Query(min_length=1)],
) -> Explanation:
    """Why the customer is in the segment or not: its rule's condition tree with each leaf's
    current value and truth, next to the membership the dataflow keeps."""
    found = {stored.id: stored for stored in rules}.get(segment)
    if found is None:
        raise HTTPException(404, detail=f"segment {segment!r}: no such segment")
    try:
        explained = await explain(state.redis, customer_id, found.rule, found.version)
    except (RedisError, OSError) as error:
        raise _unreachable("segments", error) from error
    if explained is None:
        raise HTTPException(404, detail=f"customer {customer_id!r}: no profile")
    return explained


# Last: an id may hold "/" (``deps.CustomerIdConvertor``), so the routes
# above take ".../transitions", ".../corrections" and ".../explain" first.
@router.get(
    "/{customer_id:customer}",
    response_model=CustomerProfile,
    responses={404: {"description": "No events from this customer yet."}},
)
async def read_customer(customer_id: str, state: StateDep) -> CustomerProfile:
    """A customer's traits, features (as of their last change), and recent events."""
    try:
        found = await profiles.get_profile(state.redis, customer_id)
    except (RedisError, OSError) as error:
        raise _unreachable("profiles", error) from error
    if found is None:
        raise HTTPException(404, detail=f"customer {customer_id!r}: no profile")
    return found


@router.delete(
    "/{customer_id:customer}",
    response_model=ErasureReport,
    responses={404: {"description": "Segflow holds nothing about this customer."}},
)
async def erase_customer(customer_id: str, state: StateDep) -> ErasureReport:
    """GDPR erasure: the profile, the dataflow's state, every stored and failed event, trigger
    and delivery of the customer; answers the profile as it was and what went (the README's
    erasure section says what is erased later)."""
    try:
        report = await erasure.erase_customer(
            state.redis,
            customer_id,
            partitions=state.settings.partitions,
            now=now_ms(),
            forget_elsewhere=dispatch_erasure.forget_customers,
        )
    except (RedisError, OSError) as error:
        raise _unreachable("erasure", error) from error
    if report is None:
        raise HTTPException(404, detail=f"customer {customer_id!r}: nothing to erase")
    return report
