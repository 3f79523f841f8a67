"""The real API app (``serve_app.api.create_app``) under a real uvicorn server on loopback.

For tests of the HTTP layer that need neither Ray nor models: the app, its middleware and its
lifespan run exactly as on a Serve replica, with a real Redis behind the store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from core.registry import Registry, load_registry
from core.schemas import ModelInfo
from core.settings import Settings
from core.store import Store
from serve_app.api import create_app
from serve_app.context import ApiContext
from serve_app.local import free_port

ModelInfoCall = Callable[[str], Awaitable[ModelInfo]]


async def answering_model_info(name: str) -> ModelInfo:
    """What a loaded model deployment answers to ``info``."""
    return ModelInfo(name=name, task="object-detection", version=f"{name}@test", labels=["thing"])


@dataclass
class LocalApi:
    url: str
    ctx: ApiContext


@asynccontextmanager
async def local_api(
    settings: Settings, model_info: ModelInfoCall = answering_model_info, registry: Registry | None = None
) -> AsyncIterator[LocalApi]:
    """Serve ``create_app`` on a free loopback port until the block ends (lifespan included);
    the registry is the tiny profile's unless given (names and tasks only; nothing loads)."""
    registry = registry or load_registry("tiny", Path("/nonexistent"))
    ctx = ApiContext(settings, Store.from_settings(settings), registry, model_info)
    port = free_port()
    config = uvicorn.Config(create_app(ctx), host="127.0.0.1", port=port, lifespan="on", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn exited before it started")
            await asyncio.sleep(0.01)
        yield LocalApi(f"http://127.0.0.1:{port}", ctx)
    finally:
        server.should_exit = True
        await task
        await ctx.store.close()
