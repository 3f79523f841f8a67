"""Operator routes: ``/v1/admin/orgs/{org}/weight``, an org's share of the online engine.

Behind an operator key (``serve_app.auth.current_operator``), never an org's. The weight scales
the org's share of every fair queue's claims and every stage limiter of the processors
(``core.store.weights``); a change reaches every replica within its refresh period
(``core.metrics.REFRESH_S``), without a restart. ``sightwire orgs weight`` does the same from
the command line.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import ConfigDict, Field

from core.schemas import Wire
from core.store.weights import MAX_WEIGHT, MIN_WEIGHT
from serve_app.auth import Operator
from serve_app.lookups import Ctx
from serve_app.problems import not_found

router = APIRouter(prefix="/v1/admin", tags=["admin"])


class OrgWeight(Wire):
    org: str
    weight: float  # 1: the default share


class OrgWeightUpdate(Wire):
    model_config = ConfigDict(extra="forbid")

    # a JSON number (not a string or a boolean), finite, in bounds; null: back to 1
    weight: float | None = Field(ge=MIN_WEIGHT, le=MAX_WEIGHT, allow_inf_nan=False, strict=True)


async def _known(org: str, ctx: Ctx) -> None:
    """An org that was never given a key is most likely a typo: 404, not a silent weight."""
    if not await ctx.store.accounts.org_exists(org):
        raise not_found(f"org {org}")


@router.get("/orgs/{org}/weight", response_model=OrgWeight)
async def get_org_weight(org: str, operator: Operator, ctx: Ctx) -> OrgWeight:
    await _known(org, ctx)
    return OrgWeight(org=org, weight=await ctx.store.weights.get(org))


@router.put("/orgs/{org}/weight", response_model=OrgWeight)
async def set_org_weight(org: str, body: OrgWeightUpdate, operator: Operator, ctx: Ctx) -> OrgWeight:
    """Set the org's weight (``null``: back to the default, 1); 2 gets twice the share of an
    org of weight 1 wherever both have work waiting."""
    await _known(org, ctx)
    return OrgWeight(org=org, weight=await ctx.store.weights.set(org, body.weight))
