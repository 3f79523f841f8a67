"""``Idempotency-Key`` (issue 12): replay, reuse with another body, concurrent duplicates.

On the session's real stack (Serve proxy, gateway, Redis); the in-progress 409 on the real app
under uvicorn with a real Redis, where no processor finishes the first request early.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from core.settings import Settings
from core.store import Store
from core.tokens import new_id
from tests.conftest import png_bytes
from tests.support.asgi import local_api
from tests.support.servers import ImageHost

pytestmark = pytest.mark.integration


def headers(api_key: str, idempotency_key: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", "Idempotency-Key": idempotency_key, **extra}


async def image_count(store: Store, org: str) -> int:
    return int(await store.redis.zcard(store.keys.org_images(org)))


async def test_same_key_and_body_replays_the_first_response(
    api: httpx.AsyncClient, api_key: str, stack_store: Store, org: str, image_host: ImageHost
) -> None:
    body = {"url": image_host.put("/idem.png", png_bytes(seed=11)), "models": ["object_detection"]}
    first = await api.post("/v1/images", json=body, headers=headers(api_key, "k-1"))
    assert first.status_code == 202 and "idempotent-replayed" not in first.headers
    reordered = dict(reversed(body.items()))  # the same JSON by value
    again = await api.post("/v1/images", json=reordered, headers=headers(api_key, "k-1"))
    assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json() and again.headers["location"] == first.headers["location"]
    assert await image_count(stack_store, org) == 1

    other = await api.post("/v1/images", json={**body, "metadata": {"a": 1}}, headers=headers(api_key, "k-1"))
    assert other.status_code == 422 and other.headers["content-type"] == "application/problem+json"
    assert other.json()["type"].endswith("/idempotency-key-reused")
    fresh_key = await api.post("/v1/images", json=body, headers=headers(api_key, "k-2"))
    assert fresh_key.status_code == 202 and fresh_key.json()["id"] != first.json()["id"]
    assert await image_count(stack_store, org) == 2

    # Scoped per org: another org's same key creates its own image.
    other_org = new_id("org")
    other_key = await stack_store.accounts.create_api_key(other_org)
    theirs = await api.post("/v1/images", json=body, headers=headers(other_key, "k-1"))
    assert theirs.status_code == 202 and "idempotent-replayed" not in theirs.headers
    assert await image_count(stack_store, other_org) == 1


async def test_an_error_frees_the_key_and_groups_are_covered(
    api: httpx.AsyncClient, api_key: str, stack_store: Store, org: str, image_host: ImageHost
) -> None:
    url = image_host.put("/idem-group.png", png_bytes(seed=12))
    refused = await api.post("/v1/images", json={"url": url, "models": ["nope"]}, headers=headers(api_key, "k-err"))
    assert refused.status_code == 422
    fixed = await api.post("/v1/images", json={"url": url, "models": ["object_detection"]},
                           headers=headers(api_key, "k-err"))
    assert fixed.status_code == 202 and "idempotent-replayed" not in fixed.headers

    group = {"images": [{"url": url}, {"url": url}], "models": ["object_detection"]}
    made = [await api.post("/v1/groups", json=group, headers=headers(api_key, "g-1")) for _ in range(2)]
    assert [r.status_code for r in made] == [202, 202] and made[1].headers["idempotent-replayed"] == "true"
    assert made[0].json()["id"] == made[1].json()["id"]
    assert await image_count(stack_store, org) == 3  # one image, then one group of two


async def test_concurrent_duplicates_create_exactly_one_image(
    api: httpx.AsyncClient, api_key: str, stack_store: Store, org: str, image_host: ImageHost
) -> None:
    body = {"url": image_host.put("/idem-race.png", png_bytes(seed=13)), "models": ["object_detection"]}
    responses = await asyncio.gather(
        *(api.post("/v1/images", json=body, headers=headers(api_key, "race")) for _ in range(12))
    )
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum("idempotent-replayed" not in r.headers for r in responses) == 1
    assert await image_count(stack_store, org) == 1


@pytest.fixture
async def bare_api(settings: Settings, org: str) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """The app with no processor behind it: an image never finishes, so ``Prefer: wait`` holds."""
    api_settings = settings.model_copy(update={"key_prefix": new_id("swidem"), "idempotency_wait_s": 0.3})
    async with local_api(api_settings) as app:
        key = await app.ctx.store.accounts.create_api_key(org)
        async with httpx.AsyncClient(base_url=app.url, timeout=30) as http:
            yield http, key


async def test_a_duplicate_of_a_running_request_gets_409_then_the_replay(
    bare_api: tuple[httpx.AsyncClient, str],
) -> None:
    http, key = bare_api
    body = {"url": "http://example.com/a.png", "models": ["object_detection"]}
    first = asyncio.create_task(http.post("/v1/images", json=body, headers=headers(key, "slow", Prefer="wait=2")))
    await asyncio.sleep(0.5)
    busy = await http.post("/v1/images", json=body, headers=headers(key, "slow"))
    assert busy.status_code == 409 and busy.headers["retry-after"] == "1"
    assert busy.json()["type"].endswith("/idempotency-in-progress")
    done = await first
    assert done.status_code == 202 and "preference-applied" not in done.headers  # waited, not finished
    replay = await http.post("/v1/images", json=body, headers=headers(key, "slow"))
    assert replay.status_code == 202 and replay.json() == done.json()
    bad = await http.post("/v1/images", json=body, headers=headers(key, "x" * 300))
    assert bad.status_code == 400
