"""Rate limits per API key, configured per org (issue 12): the token bucket at its boundary,
and the 429s with ``Retry-After`` and the IETF ``RateLimit`` headers on the real stack."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from core.store import Store
from core.store.ratelimit import LimitKind
from core.tokens import new_id
from tests.conftest import png_bytes
from tests.support.servers import ImageHost


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_bucket_boundary(store: Store, org: str) -> None:
    """10 images a minute: ten pass, the eleventh waits 6 s (one image's refill); a cost over
    the quota passes only on a full bucket and leaves it in debt."""
    await store.limits.configure(org, {LimitKind.IMAGES: 10})
    key_id = new_id("key")
    verdicts = [await store.limits.charge(key_id, org, LimitKind.IMAGES) for _ in range(11)]
    assert [v.allowed for v in verdicts] == [True] * 10 + [False]
    assert [round(v.remaining) for v in verdicts[:10]] == list(range(9, -1, -1))
    refused = verdicts[-1]
    assert refused.headers()["Retry-After"] == "6" and 5.9 < refused.retry_after_s <= 6.0
    assert refused.headers()["RateLimit-Policy"] == '"images";q=10;w=60'
    assert refused.headers()["RateLimit"].startswith('"images";r=0;t=')

    big = new_id("key")
    assert (await store.limits.charge(big, org, LimitKind.IMAGES, 25)).allowed  # full bucket: allowed
    after = await store.limits.charge(big, org, LimitKind.IMAGES)
    assert not after.allowed and after.retry_after_s > 60  # 15 in debt, then one more

    await store.limits.configure(org, {LimitKind.IMAGES: 0})  # 0: unlimited, no headers
    unlimited = await store.limits.charge(key_id, org, LimitKind.IMAGES, 1000)
    assert unlimited.allowed and unlimited.headers() == {}
    await store.limits.configure(org, {LimitKind.IMAGES: None})  # the default (unlimited in tests)
    assert (await store.limits.charge(key_id, org, LimitKind.IMAGES)).allowed


@pytest.mark.integration
async def test_429s_on_the_stack(
    api: httpx.AsyncClient, api_key: str, stack_store: Store, org: str, image_host: ImageHost
) -> None:
    url = image_host.put("/limited.png", png_bytes(seed=31))
    await stack_store.limits.configure(org, {LimitKind.IMAGES: 5})
    group = await api.post("/v1/groups", json={"images": [{"url": url}] * 3, "models": ["object_detection"]},
                           headers=auth(api_key))
    assert group.status_code == 202 and group.headers["ratelimit"].startswith('"images";r=2;')
    for _ in range(2):
        assert (await api.post("/v1/images", json={"url": url, "models": ["object_detection"]},
                               headers=auth(api_key))).status_code == 202
    refused = await api.post("/v1/images", json={"url": url, "models": ["object_detection"]}, headers=auth(api_key))
    assert refused.status_code == 429 and refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"].endswith("/rate-limited")
    assert refused.headers["retry-after"] == "12"  # one image at 5 a minute
    assert refused.headers["ratelimit-policy"] == '"images";q=5;w=60'
    assert refused.headers["ratelimit"].startswith('"images";r=0;')
    assert await stack_store.redis.zcard(stack_store.keys.org_images(org)) == 5

    # Requests per second, per key: one a second lets one of three at once through.
    await stack_store.limits.configure(org, {LimitKind.IMAGES: None, LimitKind.REQUESTS: 1})
    answers = await asyncio.gather(*(api.get("/v1/images", headers=auth(api_key)) for _ in range(3)))
    assert sorted(r.status_code for r in answers) == [200, 429, 429]
    limited = next(r for r in answers if r.status_code == 429)
    assert limited.headers["retry-after"] == "1" and limited.headers["ratelimit-policy"] == '"requests";q=1;w=1'
    second_key = await stack_store.accounts.create_api_key(org)  # each key has its own bucket
    assert (await api.get("/v1/images", headers=auth(second_key))).status_code == 200
    await stack_store.limits.configure(org, {LimitKind.REQUESTS: None})
