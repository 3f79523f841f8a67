"""The v1 HTTP API as a FastAPI app, built around an ``ApiContext`` (store, registry, models).

``create_app`` is plain FastAPI: the Serve ingress in ``serve_app.gateway`` builds it on each
replica, and it can be exercised without Serve as well.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from core.registry import Registry
from core.schemas import ImageCreate, ImageRecord, ModelInfo
from core.settings import Settings
from core.store import Store
from core.urlpolicy import UrlPolicy, UrlRejected
from serve_app.auth import authenticate
from serve_app.problems import Problem, install_problem_handlers, invalid, not_found

READY_TIMEOUT_S = 2.0


@dataclass
class ApiContext:
    settings: Settings
    store: Store
    registry: Registry
    model_info: Callable[[str], Awaitable[ModelInfo]]
    policy: UrlPolicy = field(init=False)
    _infos: dict[str, ModelInfo] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.policy = UrlPolicy.from_settings(self.settings)

    async def models(self) -> list[ModelInfo]:
        """Every model's info from its deployment; cached once all have answered."""
        missing = [name for name in self.registry.names() if name not in self._infos]
        if missing:
            infos = await asyncio.wait_for(
                asyncio.gather(*(self.model_info(name) for name in missing)), READY_TIMEOUT_S
            )
            self._infos.update(zip(missing, infos, strict=True))
        return [self._infos[name] for name in self.registry.names()]


def validate_image_request(ctx: ApiContext, body: ImageCreate) -> None:
    """Checks that need settings or the registry; each failure names its field (422)."""
    unknown = [m for m in body.models if m not in ctx.registry]
    if unknown:
        raise invalid("models", f"unknown model(s) {unknown}; available: {ctx.registry.names()}")
    for name, url in (("url", body.url), ("webhookUrl", body.webhook_url)):
        if url is None:
            continue
        try:
            ctx.policy.check_url(url)
        except UrlRejected as exc:
            raise invalid(name, exc.message) from None
    if body.metadata is not None and len(json.dumps(body.metadata)) > ctx.settings.max_metadata_bytes:
        raise invalid("metadata", f"metadata is larger than {ctx.settings.max_metadata_bytes} bytes")


async def current_org(request: Request) -> str:
    return await authenticate(request, request.app.state.ctx.store)


Org = Annotated[str, Depends(current_org)]


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="Sightwire",
        version="1",
        description="Asynchronous computer-vision inference with signed webhooks.",
    )
    app.state.ctx = ctx
    install_problem_handlers(app)

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > ctx.settings.max_body_bytes:
            return Problem(413, "payload-too-large", "Request body too large",
                           f"the limit is {ctx.settings.max_body_bytes} bytes").response(request.url.path)
        try:
            return await call_next(request)
        except RedisError:
            return Problem(503, "store-unavailable", "The store is unreachable; retry shortly",
                           headers={"Retry-After": "1"}).response(request.url.path)

    @app.post("/v1/images", status_code=202, response_model=ImageRecord, tags=["images"])
    async def create_image(body: ImageCreate, org: Org, response: Response) -> ImageRecord:
        """Queue an image for the named models; answers at once with the queued record."""
        validate_image_request(ctx, body)
        record = await ctx.store.images.create(org, body)
        response.headers["Location"] = f"/v1/images/{record.id}"
        return record

    @app.get("/v1/images/{image_id}", response_model=ImageRecord, tags=["images"])
    async def get_image(image_id: str, org: Org) -> ImageRecord:
        record = await ctx.store.images.get(image_id, org)
        if record is None:
            raise not_found(f"image {image_id}")
        return record

    @app.get("/v1/models", response_model=dict[str, list[ModelInfo]], tags=["models"])
    async def list_models(org: Org) -> dict[str, list[ModelInfo]]:
        return {"data": await ctx.models()}

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    async def readyz() -> JSONResponse:
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

    return app
