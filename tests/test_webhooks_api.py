"""The webhook API end to end on the real stack: Serve + tiny models + Redis + the notifier
actor + loopback receivers. Delivery log, redelivery, endpoint health and enable, signing
secret rotation, test events, the ``webhookEvents`` filter, and Redis outages."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from core.store import Store
from core.store.jobs import QueueName
from serve_app.local import RedisServer
from tests.conftest import png_bytes
from tests.support.servers import ImageHost, Route, WebhookReceiver

pytestmark = pytest.mark.integration


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def received(receiver: WebhookReceiver, count: int, path: str | None = None, timeout_s: float = 30.0) -> list:
    got = await asyncio.to_thread(
        receiver.wait_for, lambda rs: sum(path is None or r.path == path for r in rs) >= count, timeout_s
    )
    return [r for r in got if path is None or r.path == path]


async def delivered(api: httpx.AsyncClient, key: str, delivery_id: str, timeout_s: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        log = (await api.get(f"/v1/deliveries/{delivery_id}", headers=auth(key))).json()
        if log["status"] != "pending":
            return log
        assert time.monotonic() < deadline, log
        await asyncio.sleep(0.05)


async def send_test(api: httpx.AsyncClient, key: str, url: str) -> dict:
    response = await api.post("/v1/webhooks/test", json={"url": url}, headers=auth(key))
    assert response.status_code == 202, response.text
    return response.json()


async def test_test_event_is_signed_logged_and_scoped(
    api: httpx.AsyncClient, api_key: str, stack_store: Store, receiver: WebhookReceiver
) -> None:
    sent = await send_test(api, api_key, receiver.url("/t"))
    assert sent["eventType"] == "webhook.test" and sent["status"] == "pending" and sent["sequence"] == 1
    [hit] = await received(receiver, 1)
    secret = (await api.get("/v1/webhook-secret", headers=auth(api_key))).json()["secret"]
    payload = Webhook(secret).verify(hit.body, hit.headers)
    assert payload["type"] == "webhook.test" and payload["data"]["object"] == "test"
    assert hit.headers["webhook-id"] == sent["webhookId"]
    log = await delivered(api, api_key, sent["id"])
    assert log["status"] == "delivered" and log["attempts"] == 1
    [attempt] = log["attemptLog"]
    assert attempt["statusCode"] == 200 and attempt["succeeded"] and attempt["latencyMs"] > 0 and attempt["at"]

    other = await stack_store.accounts.create_api_key("org_other_webhooks")
    assert (await api.get(f"/v1/deliveries/{sent['id']}", headers=auth(other))).status_code == 404
    assert (await api.post(f"/v1/deliveries/{sent['id']}/retry", headers=auth(other))).status_code == 404
    assert (await api.get("/v1/endpoints", params={"url": receiver.url("/t")}, headers=auth(other))).status_code == 404

    refused = await api.post("/v1/webhooks/test", json={"url": "http://169.254.169.254/hook"}, headers=auth(api_key))
    assert refused.status_code == 422 and refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["errors"][0]["field"] == "url"


async def test_image_delivery_log_retry_and_events_filter(
    api: httpx.AsyncClient, api_key: str, stack_store: Store, image_host: ImageHost, receiver: WebhookReceiver
) -> None:
    good = image_host.put("/dl-good.png", png_bytes(64, 48, seed=11))
    body = {"models": ["object_detection"], "webhookUrl": receiver.url("/img")}
    created = (await api.post("/v1/images", json={**body, "url": good}, headers=auth(api_key))).json()
    quiet = (await api.post("/v1/images", json={**body, "url": good, "webhookUrl": receiver.url("/quiet"),
                                                "webhookEvents": ["image.failed"]}, headers=auth(api_key))).json()
    failing = (await api.post("/v1/images", json={**body, "url": image_host.url("/missing.png"),
                                                  "webhookUrl": receiver.url("/failed"),
                                                  "webhookEvents": ["image.failed"]}, headers=auth(api_key))).json()
    [hit] = await received(receiver, 1, "/img")
    [fail_hit] = await received(receiver, 1, "/failed")
    assert json.loads(fail_hit.body)["type"] == "image.failed"
    assert json.loads(fail_hit.body)["data"]["id"] == failing["id"]

    page = (await api.get(f"/v1/images/{created['id']}/deliveries", headers=auth(api_key))).json()
    [entry] = page["data"]
    assert entry["webhookId"] == hit.headers["webhook-id"] and entry["eventType"] == "image.completed"
    assert entry["sequence"] == json.loads(hit.body)["data"]["sequence"] and "body" not in entry
    log = await delivered(api, api_key, entry["id"])
    assert log["attemptLog"][0]["statusCode"] == 200

    retried = await api.post(f"/v1/deliveries/{entry['id']}/retry", headers=auth(api_key))
    assert retried.status_code == 202 and retried.json()["status"] == "pending"
    again = await received(receiver, 2, "/img")
    assert again[1].headers["webhook-id"] == entry["webhookId"]  # the same message, redelivered
    log = await delivered(api, api_key, entry["id"])
    assert log["status"] == "delivered" and log["attempts"] == 2 and len(log["attemptLog"]) == 2

    # webhookEvents: the completed image wanted only image.failed, so nothing was queued for it
    for _ in range(200):
        if (await api.get(f"/v1/images/{quiet['id']}", headers=auth(api_key))).json()["status"] == "complete":
            break
        await asyncio.sleep(0.05)
    assert (await api.get(f"/v1/images/{quiet['id']}/deliveries", headers=auth(api_key))).json()["data"] == []
    assert [r for r in receiver.received if r.path == "/quiet"] == []

    other = await stack_store.accounts.create_api_key("org_other_log")
    assert (await api.get(f"/v1/images/{created['id']}/deliveries", headers=auth(other))).status_code == 404
    missing = await api.get("/v1/images/img_nope/deliveries", headers=auth(api_key))
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"


async def test_group_delivery_log(
    api: httpx.AsyncClient, api_key: str, stack_store: Store, image_host: ImageHost, receiver: WebhookReceiver
) -> None:
    images = [{"url": image_host.put(f"/grp-{i}.png", png_bytes(40, 30, seed=20 + i))} for i in range(2)]
    group = (await api.post("/v1/groups", json={
        "images": images, "models": ["object_detection"], "webhookUrl": receiver.url("/group"),
        "webhookEvents": ["group.completed"],
    }, headers=auth(api_key))).json()
    [hit] = await received(receiver, 1, "/group", timeout_s=60)
    assert json.loads(hit.body)["type"] == "group.completed"
    page = (await api.get(f"/v1/groups/{group['id']}/deliveries", headers=auth(api_key))).json()
    assert [d["eventType"] for d in page["data"]] == ["group.completed"]
    assert page["data"][0]["webhookId"] == hit.headers["webhook-id"]
    other = await stack_store.accounts.create_api_key("org_other_group")
    assert (await api.get(f"/v1/groups/{group['id']}/deliveries", headers=auth(other))).status_code == 404


async def test_gone_disables_and_enable_releases_via_api(
    api: httpx.AsyncClient, api_key: str, receiver: WebhookReceiver
) -> None:
    url = receiver.url("/gone")
    receiver.script.append(Route(b"gone", 410, "text/plain"))
    first = await send_test(api, api_key, url)
    await received(receiver, 1)
    for _ in range(100):
        health = (await api.get("/v1/endpoints", params={"url": url}, headers=auth(api_key))).json()
        if health["state"] == "disabled":
            break
        await asyncio.sleep(0.05)
    assert health["state"] == "disabled" and health["disabledReason"] == "gone"
    assert health["lastStatusCode"] == 410 and health["consecutiveFailures"] == 1 and health["lastFailureAt"]
    held = [await send_test(api, api_key, url) for _ in range(3)]
    await asyncio.sleep(0.5)
    assert len(receiver.received) == 1  # nothing attempted while disabled
    health = (await api.get("/v1/endpoints", params={"url": url}, headers=auth(api_key))).json()
    assert health["held"] == 4 and health["pending"] == 4
    conflict = await api.post(f"/v1/deliveries/{first['id']}/retry", headers=auth(api_key))
    assert conflict.status_code == 409 and conflict.json()["type"].endswith("/endpoint-disabled")

    enabled = await api.post("/v1/endpoints/enable", json={"url": url}, headers=auth(api_key))
    assert enabled.status_code == 200 and enabled.json()["released"] == 4 and enabled.json()["state"] == "closed"
    for d in (first, *held):
        assert (await delivered(api, api_key, d["id"]))["status"] == "delivered"
    listing = (await api.get("/v1/endpoints", headers=auth(api_key))).json()["data"]
    [mine] = [e for e in listing if e["url"] == url]
    assert mine["state"] == "closed" and mine["held"] == 0 and mine["delivered"] == 4 and mine["lastSuccessAt"]
    unknown = await api.post("/v1/endpoints/enable", json={"url": receiver.url("/never")}, headers=auth(api_key))
    assert unknown.status_code == 404


async def test_secret_rotation_signs_with_both_during_grace(
    api: httpx.AsyncClient, api_key: str, receiver: WebhookReceiver
) -> None:
    old = (await api.get("/v1/webhook-secret", headers=auth(api_key))).json()
    rotated = await api.post("/v1/webhook-secret/rotate", json={"graceSeconds": 1.5}, headers=auth(api_key))
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()
    assert new["secret"] != old["secret"] and new["secret"].startswith("whsec_")
    assert [p["secret"] for p in new["previous"]] == [old["secret"]] and new["previous"][0]["expiresAt"]
    assert (await api.get("/v1/webhook-secret", headers=auth(api_key))).json() == new

    await send_test(api, api_key, receiver.url("/rot"))
    [during] = await received(receiver, 1)
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    Webhook(new["secret"]).verify(during.body, during.headers)
    Webhook(old["secret"]).verify(during.body, during.headers)

    await asyncio.sleep(1.5 + 1.1)  # the grace period, and the notifier's one-second secret cache
    assert (await api.get("/v1/webhook-secret", headers=auth(api_key))).json()["previous"] == []
    await send_test(api, api_key, receiver.url("/rot"))
    after = (await received(receiver, 2))[1]
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    Webhook(new["secret"]).verify(after.body, after.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(old["secret"]).verify(after.body, after.headers)
    too_long = await api.post("/v1/webhook-secret/rotate", json={"graceSeconds": 10**9}, headers=auth(api_key))
    assert too_long.status_code == 422


async def test_redis_outage_answers_503_and_nothing_accepted_is_lost(
    api: httpx.AsyncClient, api_key: str, stack_store: Store, image_host: ImageHost,
    receiver: WebhookReceiver, redis_server: RedisServer,
) -> None:
    """Images accepted before Redis goes down, and after it is back, all end in a webhook with no
    manual step: the processor and the notifier recover by themselves. While it is down the API
    answers 503 with Retry-After. A flushed job queue does not stop the processor either."""
    url = image_host.put("/outage.png", png_bytes(48, 32, seed=30))
    body = {"url": url, "models": ["object_detection"], "webhookUrl": receiver.url("/outage")}

    async def submit() -> str:
        response = await api.post("/v1/images", json=body, headers=auth(api_key))
        assert response.status_code == 202, response.text
        return response.json()["id"]

    ids = [await submit() for _ in range(4)]
    await asyncio.to_thread(redis_server.stop)
    try:
        down = await api.post("/v1/images", json=body, headers=auth(api_key))
        assert down.status_code == 503 and down.headers["retry-after"] == "1"
        assert down.headers["content-type"] == "application/problem+json"
        assert down.json()["type"].endswith("/store-unavailable")
        assert (await api.get("/readyz")).status_code == 503
    finally:
        await asyncio.to_thread(redis_server.start)
    ids += [await submit() for _ in range(4)]

    def ids_seen(rs: list) -> set[str]:
        return {json.loads(r.body)["data"]["id"] for r in rs if r.path == "/outage"}

    await asyncio.to_thread(receiver.wait_for, lambda rs: set(ids) <= ids_seen(rs), 90)
    for image_id in ids:
        record = (await api.get(f"/v1/images/{image_id}", headers=auth(api_key))).json()
        assert record["status"] == "complete"

    # A flushed job queue (its round, leases and wake list go with it) once the queue is idle:
    # flushing loses whatever was still queued, but the processor must carry on with new work.
    base = stack_store.keys.job_queue(QueueName.ONLINE).base
    flushed = [key async for key in stack_store.redis.scan_iter(f"{base}:*")]
    if flushed:  # an idle queue may hold no key at all (an empty round leaves nothing behind)
        await stack_store.redis.delete(*flushed)
    after_flush = await submit()
    await asyncio.to_thread(receiver.wait_for, lambda rs: after_flush in ids_seen(rs), 30)
