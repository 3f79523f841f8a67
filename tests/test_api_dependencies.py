"""Every dependency of every route runs on the event loop: FastAPI sends a plain function to
its thread pool on every request, a hand-off that cost the API replica ~19 % of its request path
under load (py-spy, bench_ingest)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path

from fastapi.dependencies.models import Dependant

from core.registry import load_registry
from core.settings import Settings
from core.store import Store
from serve_app.api import create_app
from serve_app.context import ApiContext
from serve_app.openapi import api_routes
from tests.support.asgi import answering_model_info


def calls(dependant: Dependant) -> Iterator[object]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from calls(sub)


def test_no_route_dependency_goes_to_the_thread_pool(settings: Settings) -> None:
    ctx = ApiContext(settings, Store.from_settings(settings), load_registry("tiny", Path("/nonexistent")),
                     answering_model_info)
    routes = api_routes(create_app(ctx))
    assert len(routes) > 20
    sync = {f"{path}: {call.__qualname__}" for path, route in routes for call in calls(route.dependant)
            if not inspect.iscoroutinefunction(call)}
    assert not sync, sorted(sync)
