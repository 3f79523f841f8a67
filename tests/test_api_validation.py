"""Small validation holes (issue 15, item 8): forged cursors and ``webhookEvents``.

The real app under uvicorn on loopback with a real Redis; no models are needed.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from core.settings import Settings
from core.tokens import new_id
from tests.support.asgi import local_api

IMAGE = {"url": "http://example.com/a.png", "models": ["object_detection"]}


@pytest.fixture
async def client(settings: Settings, org: str) -> AsyncIterator[httpx.AsyncClient]:
    api_settings = settings.model_copy(update={"key_prefix": new_id("swval")})
    async with local_api(api_settings) as api:
        key = await api.ctx.store.accounts.create_api_key(org)
        async with httpx.AsyncClient(base_url=api.url, timeout=30,
                                     headers={"Authorization": f"Bearer {key}"}) as http:
            yield http


def forged(position: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode()


FORGED_CURSORS = [
    "%%%",  # not base64
    base64.urlsafe_b64encode(b"\xff\xfe").decode(),  # not JSON
    forged([1, 2]),  # not an object
    forged({"before": "abc"}),  # went to ZREVRANGEBYSCORE: a Redis error answered 503 + Retry-After
    forged({"before": float("nan")}),
    forged({"before": 1e400}),  # infinity
    forged({"before": None, "after": 3}),  # a field we never write
    forged({"offset": "x"}),  # int("x"): a plain-text 500
    forged({"offset": -5}),
    forged({"offset": 10**30}),  # past what LRANGE takes
    forged({"offset": 1.5}),
]


@pytest.mark.parametrize("cursor", FORGED_CURSORS)
async def test_a_forged_cursor_is_400_problem(client: httpx.AsyncClient, cursor: str) -> None:
    group = await client.post("/v1/groups", json={"images": [{"url": IMAGE["url"]}], "models": IMAGE["models"]})
    assert group.status_code == 202, group.text
    for params in ({"cursor": cursor}, {"cursor": cursor, "groupId": group.json()["id"]}):
        response = await client.get("/v1/images", params=params)
        assert response.status_code == 400, (params, response.status_code, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert "retry-after" not in response.headers
        problem = response.json()
        assert problem["type"].endswith("/invalid-cursor")
        assert problem["errors"][0]["field"] == "cursor"


async def test_cursors_the_api_returns_still_page(client: httpx.AsyncClient) -> None:
    ids = [(await client.post("/v1/images", json=IMAGE)).json()["id"] for _ in range(3)]
    first = (await client.get("/v1/images", params={"limit": 2})).json()
    second = (await client.get("/v1/images", params={"limit": 2, "cursor": first["nextCursor"]})).json()
    assert [i["id"] for i in first["data"] + second["data"]] == list(reversed(ids))
    assert second["nextCursor"] is None


@pytest.mark.parametrize(
    ("path", "body", "events", "message"),
    [
        ("/v1/images", IMAGE, ["webhook.test"], "not sent for an image"),
        ("/v1/images", IMAGE, ["group.completed"], "not sent for an image"),
        ("/v1/images", IMAGE, ["image.completed", "image.completed"], "listed more than once"),
        ("/v1/images", IMAGE, ["image.completed"] * 5000, "at most 3"),
        ("/v1/groups", {"images": [{"url": IMAGE["url"]}], "models": IMAGE["models"]},
         ["image.completed"], "not sent for a group"),
        ("/v1/groups", {"images": [{"url": IMAGE["url"]}], "models": IMAGE["models"]},
         ["webhook.test"], "not sent for a group"),
        ("/v1/groups", {"images": [{"url": IMAGE["url"]}], "models": IMAGE["models"]},
         ["group.progress", "group.updated", "group.progress"], "listed more than once"),
    ],
)
async def test_webhook_events_must_apply_to_the_resource_once(
    client: httpx.AsyncClient, path: str, body: dict, events: list[str], message: str
) -> None:
    response = await client.post(path, json={**body, "webhookUrl": "http://example.com/hook", "webhookEvents": events})
    assert response.status_code == 422, response.text[:300]
    problem = response.json()
    assert problem["type"].endswith("/validation-error")
    [error] = problem["errors"]
    assert error["field"] == "webhookEvents" and message in error["message"]


async def test_webhook_events_of_the_resource_are_accepted(client: httpx.AsyncClient) -> None:
    image = await client.post("/v1/images", json={**IMAGE, "webhookEvents": ["image.failed", "image.updated"]})
    assert image.status_code == 202 and image.json()["webhookEvents"] == ["image.failed", "image.updated"]
    group = await client.post("/v1/groups", json={"images": [{"url": IMAGE["url"]}], "models": IMAGE["models"],
                                                  "webhookEvents": ["group.completed"]})
    assert group.status_code == 202 and group.json()["webhookEvents"] == ["group.completed"]
    spec = (await client.get("/openapi.json")).json()["components"]["schemas"]
    image_events = spec["ImageCreate"]["properties"]["webhookEvents"]["anyOf"][0]
    assert image_events["items"]["enum"] == ["image.completed", "image.failed", "image.updated"]
