"""Models served, liveness and readiness."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from core.schemas import ModelInfo
from serve_app.auth import Org
from serve_app.context import READY_TIMEOUT_S, ApiContext, context

router = APIRouter()
Ctx = Annotated[ApiContext, Depends(context)]


@router.get("/v1/models", response_model=dict[str, list[ModelInfo]], tags=["models"])
async def list_models(org: Org, ctx: Ctx) -> dict[str, list[ModelInfo]]:
    return {"data": await ctx.models()}


@router.get("/healthz", tags=["operations"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["operations"])
async def readyz(ctx: Ctx) -> JSONResponse:
    checks: dict[str, Any] = {}
    try:
        checks["redis"] = await asyncio.wait_for(ctx.store.ping(), READY_TIMEOUT_S)
    except (RedisError, OSError, TimeoutError):
        checks["redis"] = False
    try:
        checks["models"] = {m.name: m.version for m in await ctx.models()}
    except Exception:  # a model still loading or failed: not ready yet
        checks["models"] = False
    ready = bool(checks["redis"]) and bool(checks["models"])
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)
