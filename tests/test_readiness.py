"""``/readyz`` answers from cached state and never waits on a model (issue 15, item 10).

The real app under uvicorn on loopback, real Redis; the model deployments are replaced by the
``model_info`` callable the API context takes (the same seam the Serve gateway fills with
deployment handles), here one that hangs until the test lets it answer.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from core.registry import Autoscaling, load_registry
from core.schemas import ModelInfo
from core.settings import Settings
from core.tokens import new_id
from serve_app.local import RedisServer, free_port
from serve_app.readiness import Readiness
from tests.support.asgi import answering_model_info, local_api

PROBE_TIMEOUT_S = 1.0  # Kubernetes' default probe timeout


class HangingModels:
    """``model_info`` whose calls block until ``gate`` opens; counts calls in flight."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.calls = 0
        self.in_flight = 0
        self.most_in_flight = 0

    async def __call__(self, name: str) -> ModelInfo:
        self.calls += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.gate.wait()
            return await answering_model_info(name)
        finally:
            self.in_flight -= 1


async def until(predicate: Callable[[], bool | Awaitable[bool]], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if await result if inspect.isawaitable(result) else result:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def api_settings(settings: Settings, **update: object) -> Settings:
    return settings.model_copy(update={"key_prefix": new_id("swrdy"), **update})


async def test_readyz_does_not_wait_on_a_hanging_model(settings: Settings) -> None:
    models = HangingModels()
    async with local_api(api_settings(settings, readiness_interval_s=0.2), models) as api, \
            httpx.AsyncClient(base_url=api.url, timeout=PROBE_TIMEOUT_S) as probe:
        n_models = len(api.ctx.registry.names())
        await until(lambda: models.in_flight > 0)  # the refresh is asking the models
        replies = await asyncio.gather(*(probe.get("/readyz") for _ in range(10)))
        assert [r.status_code for r in replies] == [503] * 10
        assert all(r.json()["checks"]["models"] is False for r in replies)
        # Ten probes made no model call of their own: only the background round is asking.
        assert models.most_in_flight <= n_models

        models.gate.set()

        async def ready() -> bool:
            return (await probe.get("/readyz")).status_code == 200

        await until(ready)
        checks = (await probe.get("/readyz")).json()["checks"]
    assert checks["redis"] is True
    assert checks["models"] == {name: f"{name}@test" for name in api.ctx.registry.names()}


async def test_readyz_is_503_while_redis_is_unreachable(settings: Settings) -> None:
    nowhere = api_settings(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0", readiness_interval_s=0.2)
    async with local_api(nowhere) as api, httpx.AsyncClient(base_url=api.url, timeout=PROBE_TIMEOUT_S) as probe:
        await until(lambda: api.ctx.readiness.snapshot.checked_at is not None)
        reply = await probe.get("/readyz")
    assert reply.status_code == 503
    assert reply.json()["checks"]["redis"] is False
    assert reply.json()["checks"]["models"]  # the models answered: Redis alone keeps it unready


async def test_a_request_that_finds_redis_down_drops_readiness_at_once(settings: Settings) -> None:
    """The background round runs hourly here, so only the failed request can have said it."""
    with RedisServer() as redis:
        hourly = api_settings(settings, redis_url=redis.url, readiness_interval_s=3600.0)
        async with local_api(hourly) as api, httpx.AsyncClient(base_url=api.url, timeout=30) as client:
            await until(lambda: api.ctx.readiness.snapshot.ready)
            assert (await client.get("/readyz")).status_code == 200
            key = await api.ctx.store.accounts.create_api_key(new_id("org"))
            await asyncio.to_thread(redis.stop)
            down = await client.get("/v1/images", headers={"Authorization": f"Bearer {key}"})
            assert down.status_code == 503 and down.json()["type"].endswith("/store-unavailable")
            assert down.headers["retry-after"] == "1"
            reply = await client.get("/readyz")
    assert reply.status_code == 503 and reply.json()["checks"]["redis"] is False


async def test_a_failed_round_is_logged_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    answers: list[object] = [None]  # the first round gets a malformed answer, later ones a real one

    async def ping() -> bool:
        return True

    async def models() -> list[ModelInfo]:
        return answers.pop() if answers else [await answering_model_info("m")]  # type: ignore[return-value]

    readiness = Readiness(ping, models, interval_s=0.05, timeout_s=1.0)
    with caplog.at_level(logging.ERROR, logger="sightwire.readiness"):
        async with readiness.running():
            await until(lambda: readiness.snapshot.ready, timeout_s=5)
    assert readiness.snapshot.models == {"m": "m@test"}
    assert any("refresh round failed" in r.getMessage() for r in caplog.records)


async def test_a_model_that_scales_to_zero_is_not_asked_and_readiness_does_not_wait_for_it(
    settings: Settings,
) -> None:
    """A readiness probe that asked it would bring up its replica (and, on an autoscaling cluster,
    its GPU node) whenever the app starts: ``min_replicas: 0`` would never hold."""
    tiny = load_registry("tiny", Path("/nonexistent"))
    detector = tiny.models["object_detection"]
    on_demand = detector.model_copy(update={"autoscaling": Autoscaling(min_replicas=0, max_replicas=1)})
    registry = tiny.model_copy(update={"models": {**tiny.models, "object_detection": on_demand}})
    asked: list[str] = []

    async def model_info(name: str) -> ModelInfo:
        asked.append(name)
        return await answering_model_info(name)

    async with local_api(api_settings(settings, readiness_interval_s=0.1), model_info, registry) as api, \
            httpx.AsyncClient(base_url=api.url, timeout=PROBE_TIMEOUT_S) as probe:
        await until(lambda: api.ctx.readiness.snapshot.ready)
        await asyncio.sleep(0.3)  # a few more rounds
        checks = (await probe.get("/readyz")).json()["checks"]
    assert registry.scales_to_zero("object_detection") and "object_detection" not in asked
    assert set(asked) == set(registry.names()) - {"object_detection"}
    assert checks["modelsOnDemand"] == ["object_detection"]
    assert set(checks["models"]) == set(registry.names()) - {"object_detection"}
