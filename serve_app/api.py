"""The v1 HTTP API as a FastAPI app around an ``ApiContext``.

``create_app`` is plain FastAPI: the Serve ingress in ``serve_app.gateway`` builds it on each
replica. Routes live in ``serve_app.routes``, one router per resource.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from redis.exceptions import RedisError

from serve_app.context import ApiContext
from serve_app.problems import Problem, install_problem_handlers
from serve_app.routes import deliveries, endpoints, groups, images, operations, secrets, webhooks


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="Sightwire",
        version="1",
        description="Asynchronous computer-vision inference with signed webhooks.",
    )
    app.state.ctx = ctx
    install_problem_handlers(app)
    routers = (images, groups, operations, deliveries, endpoints, secrets, webhooks)
    for router in (module.router for module in routers):
        app.include_router(router)

    @app.middleware("http")
    async def limits_and_outages(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > ctx.settings.max_body_bytes:
            return Problem(413, "payload-too-large", "Request body too large",
                           f"the limit is {ctx.settings.max_body_bytes} bytes").response(request.url.path)
        try:
            return await call_next(request)
        except RedisError:
            return Problem(503, "store-unavailable", "The store is unreachable; retry shortly",
                           headers={"Retry-After": "1"}).response(request.url.path)

    return app
