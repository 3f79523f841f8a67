"""End to end on the real stack: Serve + tiny DETR + Redis + notifier + loopback servers."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from ray import serve
from standardwebhooks import Webhook

from core.schemas import ImageCreate, ImageStatus
from core.store import Store
from core.store.fair_queue import new_token
from core.tokens import new_id
from deployments.processor import Processor
from serve_app.gateway import APP_NAME
from serve_app.stack import LocalStack
from tests.conftest import png_bytes
from tests.support.servers import ImageHost, WebhookReceiver

pytestmark = pytest.mark.integration


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def submit(api: httpx.AsyncClient, key: str, **body: object) -> dict:
    response = await api.post("/v1/images", json={"models": ["object_detection"], **body}, headers=auth(key))
    assert response.status_code == 202, response.text
    return response.json()


async def test_image_to_verified_webhook(
    api: httpx.AsyncClient, api_key: str, stack_store: Store, org: str,
    image_host: ImageHost, receiver: WebhookReceiver,
) -> None:
    url = image_host.put("/room.png", png_bytes(320, 240, seed=1))
    created = await submit(api, api_key, url=url, webhookUrl=receiver.url("/hook"),
                           metadata={"listing": "L-1"}, externalId="ext-42")
    assert created["status"] == "queued"
    assert created["models"]["object_detection"]["status"] == "queued"

    [hit] = receiver.wait_for(lambda got: len(got) >= 1)
    secret = (await stack_store.accounts.webhook_secrets(org))[0]
    payload = Webhook(secret).verify(hit.body, hit.headers)
    assert payload["type"] == "image.completed"
    data = payload["data"]
    assert data["id"] == created["id"] and data["status"] == "complete"
    assert data["metadata"] == {"listing": "L-1"} and data["externalId"] == "ext-42"
    assert (data["width"], data["height"]) == (320, 240)
    result = data["models"]["object_detection"]
    assert result["status"] == "complete"
    assert result["version"].startswith("object_detection@")
    detections = result["result"]["detections"]
    assert detections and {"label", "score", "box", "boxNormalized"} <= detections[0].keys()
    assert 0 <= detections[0]["box"]["xmax"] <= 320

    polled = (await api.get(f"/v1/images/{created['id']}", headers=auth(api_key))).json()
    assert polled["status"] == "complete"
    assert polled["sequence"] == data["sequence"]
    assert polled["models"] == data["models"]


async def test_auth_and_org_scoping(
    api: httpx.AsyncClient, api_key: str, stack_store: Store, image_host: ImageHost
) -> None:
    created = await submit(api, api_key, url=image_host.put("/scoped.png", png_bytes(seed=2)))
    path = f"/v1/images/{created['id']}"
    assert (await api.get(path, headers=auth(api_key))).status_code == 200

    other_key = await stack_store.accounts.create_api_key("org_someone_else")
    other = await api.get(path, headers=auth(other_key))
    assert other.status_code == 404
    assert other.headers["content-type"] == "application/problem+json"

    for headers in ({}, auth("sw_not_a_key"), {"Authorization": "Basic abc"}):
        response = await api.get(path, headers=headers)
        assert response.status_code == 401
        assert response.json()["type"].endswith("/unauthorized")
    response = await api.post("/v1/images", json={"url": "http://example.com/a.png", "models": ["x"]})
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"models": ["object_detection"]}, "url"),
        ({"url": "http://example.com/a.png"}, "models"),
        ({"url": "http://example.com/a.png", "models": []}, "models"),
        ({"url": "http://example.com/a.png", "models": ["no_such_model"]}, "models"),
        ({"url": "file:///etc/passwd", "models": ["object_detection"]}, "url"),
        ({"url": "ftp://example.com/a.png", "models": ["object_detection"]}, "url"),
        ({"url": "http://169.254.169.254/latest/meta-data/", "models": ["object_detection"]}, "url"),
        ({"url": "http://167772161/a.png", "models": ["object_detection"]}, "url"),  # decimal 10.0.0.1
        ({"url": "http://[::ffff:192.168.0.1]/a.png", "models": ["object_detection"]}, "url"),
        ({"url": "http://example.com/a.png", "models": ["object_detection"],
          "webhookUrl": "http://169.254.169.254/hook"}, "webhookUrl"),
        ({"url": "http://example.com/a.png", "models": ["object_detection"],
          "webhookEvents": ["image.exploded"]}, "webhookEvents.0"),
        ({"url": "http://example.com/a.png", "models": ["object_detection"], "colour": "red"}, "colour"),
        ({"url": "http://example.com/a.png", "models": ["object_detection"],
          "metadata": {"blob": "x" * 20_000}}, "metadata"),
    ],
)
async def test_bad_requests_name_the_field(
    api: httpx.AsyncClient, api_key: str, stack_store: Store, org: str, body: dict, field: str
) -> None:
    response = await api.post("/v1/images", json=body, headers=auth(api_key))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"].endswith("/validation-error")
    assert field in [error["field"] for error in problem["errors"]]
    # Nothing was queued: a job is only ever written with its record, and the org has none.
    assert await stack_store.redis.zcard(stack_store.keys.org_images(org)) == 0


async def test_malformed_json_is_400(api: httpx.AsyncClient, api_key: str) -> None:
    response = await api.post(
        "/v1/images", content=b'{"url": "http://example.com/a.png", "models": [',
        headers={**auth(api_key), "content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["type"].endswith("/malformed-json")


async def test_oversized_body_is_413(api: httpx.AsyncClient, api_key: str, stack: LocalStack) -> None:
    body = json.dumps({"url": "http://example.com/a.png", "models": ["object_detection"],
                       "metadata": {"x": "y" * stack.settings.max_body_bytes}})
    response = await api.post("/v1/images", content=body,
                              headers={**auth(api_key), "content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["type"].endswith("/payload-too-large")


@pytest.mark.parametrize(
    ("route", "code"),
    [("/missing.png", "http_error"), ("/text.png", "not_an_image"), ("/truncated.png", "decode_failed")],
)
async def test_bad_images_fail_alone(
    api: httpx.AsyncClient, api_key: str, image_host: ImageHost, receiver: WebhookReceiver,
    route: str, code: str,
) -> None:
    image_host.put("/text.png", b"this is not an image at all", content_type="image/png")
    image_host.put("/truncated.png", png_bytes(200, 200, seed=3)[:400])
    good_url = image_host.put(f"/good-beside{route}", png_bytes(seed=4))
    bad = await submit(api, api_key, url=image_host.url(route), webhookUrl=receiver.url("/bad"))
    good = await submit(api, api_key, url=good_url, webhookUrl=receiver.url("/good"))

    received = receiver.wait_for(lambda got: {r.path for r in got} >= {"/bad", "/good"})
    by_path = {r.path: json.loads(r.body) for r in received}
    assert by_path["/bad"]["type"] == "image.failed"
    failed = by_path["/bad"]["data"]
    assert failed["id"] == bad["id"] and failed["status"] == "failed"
    assert failed["error"]["code"] == code
    assert by_path["/good"]["data"]["id"] == good["id"]
    assert by_path["/good"]["data"]["status"] == "complete"


async def test_models_listing_and_operations(api: httpx.AsyncClient, api_key: str) -> None:
    models = (await api.get("/v1/models", headers=auth(api_key))).json()["data"]
    by_name = {m["name"]: m for m in models}
    assert list(by_name) == ["object_detection", "room_classification", "condition_score", "quality_score"]
    assert by_name["object_detection"]["task"] == "object-detection" and by_name["object_detection"]["labels"]
    assert by_name["room_classification"]["task"] == "zero-shot-image-classification"
    assert "kitchen" in by_name["room_classification"]["labels"]
    assert by_name["condition_score"]["labels"] == ["C1", "C2", "C3", "C4", "C5", "C6"]
    assert by_name["quality_score"]["task"] == "scoring"
    assert all(m["version"].startswith(f"{m['name']}@") for m in models)
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    ready = await api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["redis"] is True
    spec = (await api.get("/openapi.json")).json()
    assert "/v1/images" in spec["paths"] and "/v1/images/{image_id}" in spec["paths"]
    assert "/v1/images/{image_id}/models" in spec["paths"]


async def test_job_of_a_dead_worker_is_taken_up(
    stack: LocalStack, org: str, image_host: ImageHost, ray_session: None
) -> None:
    """A worker claimed a job and died without acknowledging it: once its lease ends a
    processor reclaims it and the image completes. Runs on its own key prefix, so only the
    processor started here (with the stack's real model deployment) can take the job."""
    settings = stack.settings.model_copy(update={"key_prefix": new_id("swdead"), "job_lease_s": 1.0,
                                                 "job_reclaim_interval_s": 0.2})
    store = Store.from_settings(settings)
    record = await store.images.create(
        org, ImageCreate(url=image_host.put("/orphan.png", png_bytes(seed=5)), models=["object_detection"])
    )
    [job] = await store.jobs.online.claim(new_token(), 10, {}, 10)  # the worker that died
    assert job.payload["image"] == record.id

    models = {"object_detection": serve.get_deployment_handle("model-object_detection", app_name=APP_NAME)}
    processor = Processor(settings, models)
    processor.start()
    try:
        for _ in range(100):
            current = await store.images.get(record.id)
            if current.status is ImageStatus.COMPLETE:
                break
            await asyncio.sleep(0.2)
        assert current.status is ImageStatus.COMPLETE
        depth = await store.jobs.online.depth()
        assert depth.total == 0 and depth.leased == 0  # acknowledged
    finally:
        await processor.stop()
        await store.close()
