"""Models served, liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from core.schemas import ModelInfo
from serve_app.auth import Org
from serve_app.lookups import Ctx

router = APIRouter()


@router.get("/v1/models", response_model=dict[str, list[ModelInfo]], tags=["models"])
async def list_models(org: Org, ctx: Ctx) -> dict[str, list[ModelInfo]]:
    return {"data": await ctx.models()}


@router.get("/healthz", tags=["operations"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["operations"])
async def readyz(ctx: Ctx) -> JSONResponse:
    """200 once Redis answers and every model that keeps a replica has answered once (one that
    scales to zero is not asked); 503 before. Read from the replica's snapshot
    (``serve_app.readiness``), so it answers at once whatever is slow."""
    snapshot = ctx.readiness.snapshot
    return JSONResponse({"ready": snapshot.ready, "checks": snapshot.checks()},
                        status_code=200 if snapshot.ready else 503)
