"""The stage limits a replica builds from its settings and the registry."""

from __future__ import annotations

import asyncio
from pathlib import Path

from redis.asyncio import Redis

from core.failures import Failure
from core.keys import Keys
from core.registry import load_registry
from core.settings import Settings
from core.store.weights import Weights
from core.tokens import new_id
from deployments.engine.limits import OrgWeights, StageLimits, model_in_flight
from imaging import ImageFetcher
from tests.conftest import LOOPBACK


async def test_stage_limits_follow_the_settings_and_the_registry() -> None:
    settings = Settings(engine_max_in_flight=64, engine_org_max_in_flight=16, engine_host_fetches=4,
                        engine_org_host_fetches=3, engine_decode_threads=3)
    specs = load_registry("bench", Path("/nonexistent")).models
    limits = StageLimits.build(settings, specs)
    fetch = limits.fetch
    assert (fetch.capacity, fetch.flow_cap, fetch.key_cap, fetch.flow_key_cap) == (64, 16, 4, 3)
    assert limits.decode.capacity == 3
    assert limits.bodies.capacity == settings.engine_body_budget_bytes
    assert limits.pixels.capacity == settings.engine_pixel_budget
    # a batch running and one gathering, on every replica: 2 x 16 x 1 for the bench CLIP models
    assert {name: lim.capacity for name, lim in limits.models.items()} == {
        name: model_in_flight(spec) for name, spec in specs.items()}
    assert limits.models["room_classification"].capacity == 32


async def test_the_fetch_stage_caps_a_host_without_holding_up_others() -> None:
    limits = StageLimits.build(Settings(engine_host_fetches=2), {})
    slow = [await limits.fetch.acquire("org_a", key="slow.example") for _ in range(2)]
    blocked = asyncio.create_task(limits.fetch.acquire("org_b", key="slow.example"))
    other = await asyncio.wait_for(limits.fetch.acquire("org_b", key="fast.example"), 1)
    await asyncio.sleep(0)
    assert not blocked.done()
    slow[0].release()
    (await asyncio.wait_for(blocked, 1)).release()
    for grant in (slow[1], other):
        grant.release()
    assert limits.fetch.free == limits.fetch.capacity


def test_decode_threads_default_to_the_cpus_of_the_process() -> None:
    limits = StageLimits.build(Settings(), {})
    assert limits.decode.capacity >= 1


async def test_every_stage_shares_by_the_operators_org_weights(redis: Redis) -> None:
    store = Weights(redis, Keys(new_id("swlim")))
    await store.set("org_a", 3)
    weights = OrgWeights()
    await weights.refresh(store)
    assert (weights("org_a"), weights("org_b")) == (3.0, 1.0)
    decode = StageLimits.build(Settings(engine_decode_threads=1), {}, weight=weights).decode
    grant = await decode.acquire("org_c")
    pending = {asyncio.create_task(decode.acquire(org)) for _ in range(6) for org in ("org_a", "org_b")}
    await asyncio.sleep(0)
    order = []
    while pending:  # one thread: each release grants the next waiter the round chooses
        grant.release()
        done, pending = await asyncio.wait(pending, timeout=1, return_when=asyncio.FIRST_COMPLETED)
        grant = done.pop().result()
        order.append(grant.flow)
    grant.release()
    assert order == ["org_a"] * 3 + ["org_b"] + ["org_a"] * 3 + ["org_b"] * 5
    await store.set("org_a", 1)  # back to the default: refreshed, the stages follow
    await weights.refresh(store)
    assert weights("org_a") == 1.0


async def test_every_download_the_fetch_stage_starts_has_a_connection() -> None:
    """More downloads than httpx's default pool (100) are in flight at once: none waits in the
    pool's FIFO queue, which the fetch stage's fair round cannot see."""
    downloads, peak, now = 150, 0, 0

    async def slow_404(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal peak, now
        await reader.readuntil(b"\r\n\r\n")
        now += 1
        peak = max(peak, now)
        await asyncio.sleep(0.5)
        now -= 1
        writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(slow_404, "127.0.0.1", 0, backlog=downloads)
    port = server.sockets[0].getsockname()[1]
    fetcher = ImageFetcher.from_settings(Settings(engine_max_in_flight=downloads, allow_private_cidrs=LOOPBACK,
                                                  fetch_retries=0))
    try:
        results = await asyncio.gather(*(fetcher.fetch(f"http://127.0.0.1:{port}/{i}") for i in range(downloads)),
                                       return_exceptions=True)
    finally:
        await fetcher.aclose()
        server.close()
    assert all(isinstance(r, Failure) for r in results)
    assert peak == downloads
