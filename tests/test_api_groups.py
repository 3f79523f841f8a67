"""Groups end to end on the real stack: accept, process, aggregate, announce, grow, list."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import png_bytes
from tests.support.servers import ImageHost, WebhookReceiver

pytestmark = pytest.mark.integration


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def events(receiver: WebhookReceiver, kind: str) -> list[dict]:
    return [p for p in (json.loads(r.body) for r in receiver.received) if p["type"] == kind]


async def test_group_lifecycle(
    api: httpx.AsyncClient, api_key: str, image_host: ImageHost, receiver: WebhookReceiver
) -> None:
    urls = [image_host.put(f"/listing/{i}.png", png_bytes(96, 64, seed=10 + i)) for i in range(3)]
    urls.append(image_host.url("/listing/missing.png"))
    body = {
        "images": [{"url": url, "externalId": f"photo-{i}"} for i, url in enumerate(urls)],
        "models": ["object_detection"],
        "webhookUrl": receiver.url("/group"),
        "metadata": {"listing": "L-9"},
    }
    response = await api.post("/v1/groups", json=body, headers=auth(api_key))
    assert response.status_code == 202, response.text
    group = response.json()
    assert group["counts"]["total"] == 4 and group["status"] == "queued"

    receiver.wait_for(lambda got: any(json.loads(r.body)["type"] == "group.completed" for r in got))
    [completed] = events(receiver, "group.completed")
    data = completed["data"]
    assert data["id"] == group["id"] and data["status"] == "partial"
    assert data["counts"] == {"total": 4, "complete": 3, "partial": 0, "failed": 1, "canceled": 0, "pending": 0}
    assert data["aggregates"]["overall"]["count"] == 3 and data["aggregates"]["failedExcluded"] == 1
    failed = [s for s in data["images"] if s["status"] == "failed"]
    assert [(s["externalId"], s["error"]) for s in failed] == [("photo-3", "http_error")]
    assert {r.path for r in receiver.received} == {"/group"}  # group images send no image webhooks

    polled = (await api.get(f"/v1/groups/{group['id']}", headers=auth(api_key))).json()
    assert polled["status"] == "partial" and len(polled["imageIds"]) == 4

    seen, cursor = [], None
    while True:
        params = {"groupId": group["id"], "limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await api.get("/v1/images", params=params, headers=auth(api_key))).json()
        seen += [image["id"] for image in page["data"]]
        cursor = page["nextCursor"]
        if not cursor:
            break
    assert seen == polled["imageIds"]
    failed_only = await api.get("/v1/images", params={"groupId": group["id"], "status": "failed"},
                                headers=auth(api_key))
    assert [i["externalId"] for i in failed_only.json()["data"]] == ["photo-3"]

    extra = image_host.put("/listing/extra.png", png_bytes(seed=20))
    grown = await api.post(f"/v1/groups/{group['id']}/images", json={"images": [{"url": extra}]},
                           headers=auth(api_key))
    assert grown.status_code == 202 and grown.json()["counts"]["total"] == 5
    receiver.wait_for(lambda got: any(json.loads(r.body)["type"] == "group.updated" for r in got))
    [updated] = events(receiver, "group.updated")
    assert updated["data"]["counts"]["complete"] == 4
    assert updated["data"]["sequence"] > data["sequence"]


async def test_large_group_runs_as_a_bulk_pipeline(
    api: httpx.AsyncClient, api_key: str, image_host: ImageHost, receiver: WebhookReceiver, stack
) -> None:
    """At or above the bulk threshold (8 in the test stack) a group is one Ray Data run."""
    size = stack.settings.bulk_threshold + 2
    urls = [image_host.put(f"/bulk/{i}.png", png_bytes(80, 60, seed=50 + i)) for i in range(size - 1)]
    urls.append(image_host.put("/bulk/broken.png", b"not an image"))
    body = {"images": [{"url": url} for url in urls], "models": ["object_detection"],
            "webhookUrl": receiver.url("/bulk"), "webhookEvents": ["group.completed"]}
    response = await api.post("/v1/groups", json=body, headers=auth(api_key))
    assert response.status_code == 202 and response.json()["bulk"] is True

    receiver.wait_for(lambda got: len(got) >= 1, timeout_s=180)
    [completed] = events(receiver, "group.completed")
    assert completed["data"]["counts"]["complete"] == size - 1 and completed["data"]["counts"]["failed"] == 1
    assert [s["error"] for s in completed["data"]["images"] if s["status"] == "failed"] == ["not_an_image"]
    assert [json.loads(r.body)["type"] for r in receiver.received] == ["group.completed"]  # filter honoured
    first_id = completed["data"]["images"][0]["id"]
    first = (await api.get(f"/v1/images/{first_id}", headers=auth(api_key))).json()
    assert first["models"]["object_detection"]["status"] == "complete"


async def test_group_size_limit_creates_nothing(api: httpx.AsyncClient, api_key: str) -> None:
    images = [{"url": f"http://example.com/{i}.jpg"} for i in range(10_001)]
    response = await api.post("/v1/groups", json={"images": images, "models": ["object_detection"]},
                              headers=auth(api_key))
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "images"
    listing = (await api.get("/v1/images", headers=auth(api_key))).json()
    assert listing["data"] == []


@pytest.mark.parametrize(
    ("images", "field"),
    [
        ([{"url": "http://example.com/a.jpg"}, {"url": "ftp://example.com/b.jpg"}], "images.1.url"),
        ([{"url": "http://example.com/a.jpg", "metadata": {"x": "y" * 20_000}}], "images.0.metadata"),
        ([], "images"),
    ],
)
async def test_bad_group_requests(api: httpx.AsyncClient, api_key: str, images: list, field: str) -> None:
    response = await api.post("/v1/groups", json={"images": images, "models": ["object_detection"]},
                              headers=auth(api_key))
    assert response.status_code == 422
    assert field in [e["field"] for e in response.json()["errors"]]


async def test_groups_are_org_scoped(api: httpx.AsyncClient, api_key: str, stack_store, image_host) -> None:
    body = {"images": [{"url": image_host.put("/scoped-group.png", png_bytes(seed=30))}],
            "models": ["object_detection"]}
    group = (await api.post("/v1/groups", json=body, headers=auth(api_key))).json()
    other = await stack_store.accounts.create_api_key("org_other_groups")
    for method, path, payload in (
        ("GET", f"/v1/groups/{group['id']}", None),
        ("POST", f"/v1/groups/{group['id']}/images", {"images": [{"url": "http://example.com/x.jpg"}]}),
        ("POST", f"/v1/groups/{group['id']}/models", {"models": ["object_detection"]}),
    ):
        response = await api.request(method, path, json=payload, headers=auth(other))
        assert response.status_code == 404, (method, path)
    listing = await api.get("/v1/images", params={"groupId": group["id"]}, headers=auth(other))
    assert listing.status_code == 404


async def test_listing_newest_first_with_cursor(api: httpx.AsyncClient, api_key: str, image_host) -> None:
    url = image_host.put("/listed.png", png_bytes(seed=40))
    ids = [(await api.post("/v1/images", json={"url": url, "models": ["object_detection"]},
                           headers=auth(api_key))).json()["id"] for _ in range(5)]
    first = (await api.get("/v1/images", params={"limit": 3}, headers=auth(api_key))).json()
    second = (await api.get("/v1/images", params={"limit": 3, "cursor": first["nextCursor"]},
                            headers=auth(api_key))).json()
    assert [i["id"] for i in first["data"] + second["data"]] == list(reversed(ids))
    bad = await api.get("/v1/images", params={"cursor": "%%%"}, headers=auth(api_key))
    assert bad.status_code == 400  # issue 15: a malformed cursor is the client's error, not a validation 422
    assert bad.json()["type"].endswith("/invalid-cursor")
