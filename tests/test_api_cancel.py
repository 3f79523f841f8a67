"""Cancel, deadlines and group retry end to end on the real stack (issue 12)."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import pytest
import ray

from core.schemas import ErrorCode, GroupCreate, GroupImage, ImageCreate, ImageStatus, ModelResult, ModelStatus
from core.settings import Settings
from core.store import Store
from core.store.jobs import QueueName
from core.tokens import new_id
from deployments.processor import Processor
from serve_app.stack import LocalStack
from tests.conftest import png_bytes
from tests.support.engine import CountingHost, model_handles
from tests.support.servers import WebhookReceiver

pytestmark = pytest.mark.integration
DONE = ModelResult(status=ModelStatus.COMPLETE, version="m@1", result={"ok": True})

MODELS = ["object_detection"]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def payloads(receiver: WebhookReceiver) -> list[dict]:
    return [json.loads(r.body) for r in receiver.received]


async def until(check: Callable[[], object], timeout_s: float = 60.0, every_s: float = 0.1) -> None:
    """Poll ``check`` (a function, or a coroutine function) until it answers something truthy."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        await asyncio.sleep(every_s)
    raise AssertionError(f"not reached in {timeout_s}s")


async def test_cancel_running_image_stops_before_its_model(
    api: httpx.AsyncClient, api_key: str, counting_host: CountingHost, receiver: WebhookReceiver
) -> None:
    """Canceled while its download is in flight: no model runs, one webhook, cancel again a no-op."""
    url = counting_host.put("/slow.png", png_bytes(seed=70), delay_s=2.0)
    created = (await api.post("/v1/images", json={"url": url, "models": MODELS, "webhookUrl": receiver.url("/c")},
                              headers=auth(api_key))).json()
    await until(lambda: counting_host.requests["/slow.png"])  # the engine is fetching it
    response = await api.post(f"/v1/images/{created['id']}/cancel", headers=auth(api_key))
    assert response.status_code == 200, response.text
    canceled = response.json()
    assert canceled["status"] == "canceled" and canceled["error"] is None

    [hit] = receiver.wait_for(lambda got: len(got) >= 1)
    assert json.loads(hit.body)["data"]["status"] == "canceled"
    await asyncio.sleep(2.5)  # the download finishes meanwhile: nothing may follow it
    polled = (await api.get(f"/v1/images/{created['id']}", headers=auth(api_key))).json()
    assert polled["models"]["object_detection"]["status"] == "queued" and polled["width"] is None
    assert polled["sequence"] == canceled["sequence"] and len(receiver.received) == 1
    again = await api.post(f"/v1/images/{created['id']}/cancel", headers=auth(api_key))
    assert again.status_code == 200 and again.json() == polled
    missing = await api.post("/v1/images/img_missing/cancel", headers=auth(api_key))
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"


async def test_cancel_queued_and_finished_images(
    api: httpx.AsyncClient, api_key: str, counting_host: CountingHost
) -> None:
    url = counting_host.put("/q.png", png_bytes(seed=71), delay_s=1.0)
    queued = (await api.post("/v1/images", json={"url": url, "models": MODELS}, headers=auth(api_key))).json()
    keyed = {**auth(api_key), "Idempotency-Key": f"cancel-{queued['id']}"}
    first = await api.post(f"/v1/images/{queued['id']}/cancel", headers=keyed)
    canceled = first.json()
    assert first.status_code == 200 and canceled["status"] == "canceled"
    assert canceled["models"]["object_detection"]["status"] == "queued"
    replayed = await api.post(f"/v1/images/{queued['id']}/cancel", headers=keyed)
    assert replayed.headers.get("idempotent-replayed") == "true" and replayed.json() == canceled

    ok_url = counting_host.put("/ok.png", png_bytes(seed=72))
    done = await api.post("/v1/images", json={"url": ok_url, "models": MODELS},
                          headers={**auth(api_key), "Prefer": "wait=30"})
    assert done.status_code == 200 and done.json()["status"] == "complete"
    after = await api.post(f"/v1/images/{done.json()['id']}/cancel", headers=auth(api_key))
    assert after.status_code == 200 and after.json() == done.json()


async def test_cancel_group_counts_partial(
    api: httpx.AsyncClient, api_key: str, counting_host: CountingHost, receiver: WebhookReceiver
) -> None:
    images = [{"url": counting_host.put("/g/fast.png", png_bytes(seed=73))}]
    images += [{"url": counting_host.put(f"/g/slow{i}.png", png_bytes(seed=74 + i), delay_s=3.0)} for i in range(2)]
    group = (await api.post("/v1/groups", json={"images": images, "models": MODELS,
                                                "webhookUrl": receiver.url("/g")}, headers=auth(api_key))).json()
    path = f"/v1/groups/{group['id']}"

    async def one_done() -> bool:
        return (await api.get(path, headers=auth(api_key))).json()["counts"]["complete"] == 1

    await until(one_done)
    response = await api.post(f"{path}/cancel", headers=auth(api_key))
    assert response.status_code == 200
    canceled = response.json()
    assert canceled["status"] == "partial"
    assert canceled["counts"] == {"total": 3, "complete": 1, "partial": 0, "failed": 0, "canceled": 2, "pending": 0}
    receiver.wait_for(lambda got: any(json.loads(r.body)["type"] == "group.completed" for r in got))
    await asyncio.sleep(3.5)  # the slow downloads end: nothing more is announced
    final = [p for p in payloads(receiver) if p["type"] != "group.progress"]
    assert [(p["type"], p["data"]["status"]) for p in final] == [("group.completed", "partial")]
    again = (await api.post(f"{path}/cancel", headers=auth(api_key))).json()
    assert again["sequence"] == canceled["sequence"] and again["counts"] == canceled["counts"]


async def bulk_run_held(store: Store, org: str, group_id: str) -> bool:
    """Whether a bulk job of the group is queued or leased (its Ray Data run not ended)."""
    keys = store.keys.job_queue(QueueName.BULK)
    job_ids = await store.redis.zrange(keys.leases, 0, -1) + await store.redis.lrange(keys.org_queue(org), 0, -1)
    for job_id in job_ids:
        payload = await store.redis.hget(keys.job(job_id.decode()), "payload")
        if payload and json.loads(payload).get("group") == group_id:
            return True
    return False


async def test_cancel_bulk_group_stops_its_run(
    api: httpx.AsyncClient, api_key: str, org: str, counting_host: CountingHost, stack_store: Store
) -> None:
    """Canceled while its Ray Data run downloads: the run ends long before it fetched every image."""
    total = 400
    images = [{"url": counting_host.put(f"/bulk/{i}.png", png_bytes(seed=i), delay_s=0.3)} for i in range(total)]
    group = (await api.post("/v1/groups", json={"images": images, "models": MODELS}, headers=auth(api_key))).json()
    assert group["bulk"]
    path = f"/v1/groups/{group['id']}"
    await until(lambda: sum(counting_host.requests.values()) >= 16, timeout_s=90)  # the run is under way
    canceled = (await api.post(f"{path}/cancel", headers=auth(api_key))).json()
    assert canceled["counts"]["pending"] == 0 and canceled["counts"]["canceled"] > 0
    await until(lambda: ended(stack_store, org, group["id"]), timeout_s=30)
    fetched = await quiet(counting_host)
    assert fetched < total / 2  # the run fetches nothing more: it ended early
    final = (await api.get(path, headers=auth(api_key))).json()
    assert final["counts"] == canceled["counts"] and final["status"] in ("canceled", "partial")


async def quiet(counting_host: CountingHost, still_s: float = 1.5, timeout_s: float = 20.0) -> int:
    """The number of fetches once none has arrived for ``still_s`` (what was in flight is done)."""
    deadline = time.monotonic() + timeout_s
    seen = sum(counting_host.requests.values())
    while time.monotonic() < deadline:
        await asyncio.sleep(still_s)
        if (now := sum(counting_host.requests.values())) == seen:
            return seen
        seen = now
    raise AssertionError(f"still fetching after {timeout_s}s: {seen} fetches")


async def ended(store: Store, org: str, group_id: str) -> bool:
    return not await bulk_run_held(store, org, group_id)


async def test_deadline_cancels_in_time_with_its_code(
    api: httpx.AsyncClient, api_key: str, counting_host: CountingHost, receiver: WebhookReceiver
) -> None:
    """The image is still downloading when its deadline passes: the sweep announces it on time."""
    url = counting_host.put("/late.png", png_bytes(seed=80), delay_s=4.0)
    sent = time.time()
    created = await api.post("/v1/images", json={"url": url, "models": MODELS, "deadline": 1,
                                                 "webhookUrl": receiver.url("/d")}, headers=auth(api_key))
    assert created.status_code == 202 and created.json()["deadline"]
    [hit] = receiver.wait_for(lambda got: len(got) >= 1, timeout_s=10)
    assert hit.at - sent < 3.0  # well before the download would have ended
    data = json.loads(hit.body)["data"]
    assert data["status"] == "canceled" and data["error"]["code"] == "deadline"
    assert data["models"]["object_detection"]["status"] == "queued"


async def test_engine_cancels_at_the_deadline_before_starting_or_calling_a_model(
    stack: LocalStack, org: str, counting_host: CountingHost
) -> None:
    """The engine's own check, with no sweep running (a processor of this test's key prefix,
    not started): past its deadline an image is canceled instead of fetched, or, when the
    deadline passes while it downloads, before its model is called."""
    settings = stack.settings.model_copy(update={"key_prefix": new_id("swdl")})
    store = Store.from_settings(settings)
    processor = Processor(settings, model_handles(*MODELS))
    try:
        late = await store.images.create(org, ImageCreate(url=counting_host.put("/dl/a.png", png_bytes(seed=81)),
                                                          models=MODELS, deadline=0.2))
        slow_url = counting_host.put("/dl/b.png", png_bytes(seed=82), delay_s=1.0)
        slow = await store.images.create(org, ImageCreate(url=slow_url, models=MODELS, deadline=0.5))
        await asyncio.sleep(0.3)
        await processor.process_image(org, late.id, MODELS)
        await processor.process_image(org, slow.id, MODELS)
        for record, fetches in ((late, 0), (slow, 1)):
            stored = await store.images.get(record.id)
            assert stored.status is ImageStatus.CANCELED and stored.error.code is ErrorCode.DEADLINE
            assert stored.models["object_detection"].status is ModelStatus.QUEUED
            assert counting_host.requests[urlsplit(record.url).path] == fetches
    finally:
        await processor.stop()
        await store.close()


@pytest.mark.parametrize("deadline", [-5, 0, 10**9, "2020-01-01T00:00:00Z", "2030-01-01T00:00:00", "soon", True])
async def test_deadline_validation(api: httpx.AsyncClient, api_key: str, deadline: object) -> None:
    body = {"url": "http://127.0.0.1:9/x.png", "models": MODELS, "deadline": deadline}
    response = await api.post("/v1/images", json=body, headers=auth(api_key))
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == ["deadline"]
    group = {"images": [{"url": "http://127.0.0.1:9/x.png"}], "models": MODELS, "deadline": deadline}
    assert (await api.post("/v1/groups", json=group, headers=auth(api_key))).status_code == 422


async def test_group_retry_reruns_only_failures(
    api: httpx.AsyncClient, api_key: str, counting_host: CountingHost, receiver: WebhookReceiver
) -> None:
    images = [{"url": counting_host.put(f"/r/{i}.png", png_bytes(seed=90 + i))} for i in range(2)]
    images.append({"url": counting_host.url("/r/flaky.png")})  # 404 until it is put there
    group = (await api.post("/v1/groups", json={"images": images, "models": MODELS,
                                                "webhookUrl": receiver.url("/r")}, headers=auth(api_key))).json()
    path = f"/v1/groups/{group['id']}"

    def announced(kind: str) -> list[dict]:
        return [p for p in payloads(receiver) if p["type"] == kind]

    receiver.wait_for(lambda got: bool(announced("group.completed")))
    assert announced("group.completed")[0]["data"]["counts"]["failed"] == 1
    counting_host.put("/r/flaky.png", png_bytes(seed=99))
    response = await api.post(f"{path}/retry", headers=auth(api_key))
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "processing" and response.json()["counts"]["pending"] == 1
    running = await api.post(f"{path}/retry", headers=auth(api_key))
    assert running.status_code in (202, 409)  # 409 unless the retried image already finished

    receiver.wait_for(lambda got: bool(announced("group.updated")))
    [updated] = announced("group.updated")
    assert updated["data"]["status"] == "complete" and updated["data"]["counts"]["complete"] == 3
    assert counting_host.requests == {"/r/0.png": 1, "/r/1.png": 1, "/r/flaky.png": 2}  # only the failure ran again
    nothing = await api.post(f"{path}/retry", headers=auth(api_key))
    assert nothing.status_code == 409 and nothing.headers["content-type"] == "application/problem+json"


@ray.remote(num_cpus=0, max_retries=0)
def half_done_run(settings: Settings, group_id: str, image_ids: list[str], models: list[str]) -> None:
    """A bulk run killed between an image's results and its finalize: it writes the first
    image's results, then waits to be cancelled."""

    async def write() -> None:
        store = Store.from_settings(settings)
        try:
            await store.images.write_results(image_ids[0], {m: DONE for m in models})
        finally:
            await store.close()

    asyncio.run(write())
    time.sleep(600)


async def test_a_killed_bulk_run_leaves_no_image_unannounced(stack: LocalStack, org: str) -> None:
    """The cancel skips the image whose results are written (it is finished), and the forced
    cancel kills the run before its finalize: the processor finalizes what the run left, so the
    image is announced and counted and the group settles instead of staying ``processing``."""
    settings = stack.settings.model_copy(update={"key_prefix": new_id("swbk"), "bulk_threshold": 2})
    store = Store.from_settings(settings)
    processor = Processor(settings, model_handles(*MODELS), bulk=half_done_run)
    processor.start()
    try:
        images = [GroupImage(url=f"http://127.0.0.1:9/{i}.png") for i in range(3)]
        created = await store.groups.create(org, GroupCreate(images=images, models=MODELS))
        first = (await store.groups.image_ids(created.id))[0]

        async def written() -> bool:
            return (await store.images.get(first)).models[MODELS[0]].status is ModelStatus.COMPLETE

        await until(written, timeout_s=60)
        await store.groups.cancel(created.id, org)

        async def settled() -> bool:
            return (await store.groups.get(created.id, org)).status.is_terminal

        await until(settled, timeout_s=30)
        group = await store.groups.get(created.id, org)
        assert (group.counts.complete, group.counts.canceled, group.counts.pending) == (1, 2, 0)
        assert group.status is ImageStatus.PARTIAL
        assert (await store.images.get(first)).status is ImageStatus.COMPLETE  # its results kept, and counted
    finally:
        await processor.stop()
        await store.close()
