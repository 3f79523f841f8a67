"""The v1 HTTP API as a FastAPI app around an ``ApiContext``.

``create_app`` is plain FastAPI: the Serve ingress in ``serve_app.gateway`` builds it on each
replica. Routes live in ``serve_app.routes``, one router per resource. Around them: the body cap
(``serve_app.body_limit``, enforced as the body arrives), ``Idempotency-Key`` for every POST
(``serve_app.idempotency``), the problem handlers (every error is problem+json), the OpenAPI
document and offline ``/docs`` (``serve_app.openapi``) and, for the app's lifetime, the
readiness refresh behind ``/readyz``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from serve_app.body_limit import BodyLimit
from serve_app.context import ApiContext
from serve_app.idempotency import Idempotency
from serve_app.openapi import install_openapi
from serve_app.problems import install_problem_handlers
from serve_app.routes import admin, deliveries, endpoints, groups, images, operations, secrets, settings, webhooks


def create_app(ctx: ApiContext) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with ctx.readiness.running(), ctx.waiters.running():
            yield

    app = FastAPI(
        title="Sightwire",
        version="1",
        description="Asynchronous computer-vision inference with signed webhooks.",
        lifespan=lifespan,
        docs_url=None,  # served by install_openapi from local assets
        redoc_url=None,  # so is /redoc
    )
    app.state.ctx = ctx
    install_problem_handlers(app, on_store_unreachable=ctx.readiness.store_unreachable)
    routers = (images, groups, operations, deliveries, endpoints, secrets, settings, webhooks, admin)
    for router in (module.router for module in routers):
        app.include_router(router)
    install_openapi(app)
    app.add_middleware(Idempotency, store=ctx.store, wait_s=ctx.settings.idempotency_wait_s)
    app.add_middleware(BodyLimit, max_bytes=ctx.settings.max_body_bytes,  # outermost: caps what Idempotency reads
                       larger=[(groups.STREAMED_BODIES, ctx.settings.max_group_body_bytes)])
    return app
