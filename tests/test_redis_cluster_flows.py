"""The main flows on a real three-master Redis Cluster (``REDIS_URL=redis+cluster://…``): an
image and a group through the real API app to their webhooks, ``Prefer: wait``, a webhook
retried until accepted, and the whole engine killed with images in flight and restarted.

The store is spread over six shards, and the orgs are chosen so that their shards sit on
different masters: every script and transaction must keep to one slot, or the cluster refuses
it (CROSSSLOT) and the flow fails. The API app runs under uvicorn in this process; processors
run in this process or as Ray actors (when killed); the notifier is a Ray actor; the models
are the session stack's deployments.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import httpx
import pytest
import ray

from core.keys import org_hash
from core.schemas import ImageCreate, ImageStatus
from core.settings import Settings
from core.store import Store
from core.tokens import new_id
from deployments.processor import Processor
from serve_app.stack import LocalStack
from tests.conftest import png_bytes
from tests.support.asgi import LocalApi, local_api
from tests.support.engine import CountingHost, model_handles, notifier_for, start_replicas, until
from tests.support.redis_cluster import LocalRedisCluster
from tests.support.servers import Route, WebhookReceiver

MODEL = "quality_score"
SHARDS = 6
pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.fixture
def cluster_settings(stack: LocalStack, redis_cluster: LocalRedisCluster) -> Settings:
    return stack.settings.model_copy(update={
        "redis_url": redis_cluster.url, "key_prefix": new_id("swcl"), "store_shards": SHARDS,
        "job_lease_s": 1.5, "job_reclaim_interval_s": 0.2,
    })


@pytest.fixture
async def cluster_store(cluster_settings: Settings) -> AsyncIterator[Store]:
    store = Store.from_settings(cluster_settings)
    yield store
    await store.close()


def orgs_on_two_masters(store: Store, cluster: LocalRedisCluster) -> list[str]:
    """Two org names whose shards' hash tags live on different masters."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < 2:
        org = f"org-{n}"
        master = cluster.master_of(store.keys.image(new_id("img", org_hash(org))))
        found.setdefault(master, org)
        n += 1
    return list(found.values())


def image_at(url: str, i: int, hook: str) -> ImageCreate:
    return ImageCreate(url=f"{url}?i={i}", models=[MODEL], webhook_url=hook)


@contextlib.asynccontextmanager
async def running_on(settings: Settings) -> AsyncIterator[tuple[LocalApi, httpx.AsyncClient]]:
    """The API app, a processor and a notifier on ``settings``, and a client of the API."""
    processor = Processor(settings, model_handles(MODEL))
    processor.start()
    try:
        async with local_api(settings) as api, notifier_for(settings), httpx.AsyncClient(
            base_url=api.url, timeout=30
        ) as http:
            yield api, http
    finally:
        await processor.stop()


def payloads(receiver: WebhookReceiver, path: str) -> list[dict]:
    return [json.loads(r.body) for r in list(receiver.received) if r.path == path]


async def test_images_groups_and_waits_through_the_api_on_a_cluster(
    cluster_settings: Settings, cluster_store: Store, redis_cluster: LocalRedisCluster,
    counting_host: CountingHost, receiver: WebhookReceiver,
) -> None:
    orgs = orgs_on_two_masters(cluster_store, redis_cluster)
    url = counting_host.put("/cluster.png", png_bytes(seed=21))
    async with running_on(cluster_settings) as (api, http):
        for org in orgs:
            key = await api.ctx.store.accounts.create_api_key(org)
            auth = {"Authorization": f"Bearer {key}"}
            waited = await http.post("/v1/images", headers={**auth, "Prefer": "wait=20"}, json={
                "url": f"{url}?org={org}", "models": [MODEL], "webhookUrl": receiver.url(f"/img/{org}")})
            assert waited.status_code == 200, waited.text  # finished within the wait
            assert waited.json()["status"] == "complete"
            image_id = waited.json()["id"]
            created = await http.post("/v1/groups", headers=auth, json={
                "images": [{"url": f"{url}?g={i}&org={org}"} for i in range(3)], "models": [MODEL],
                "webhookUrl": receiver.url(f"/grp/{org}")})
            assert created.status_code == 202, created.text
            group_id = created.json()["id"]

            async def group_done(group_id: str = group_id, path: str = f"/grp/{org}") -> bool:
                return any(p["type"] == "group.completed" and p["data"]["id"] == group_id
                           for p in payloads(receiver, path))

            await until(group_done, 60, f"{org}'s group.completed webhook")
            assert any(p["type"] == "image.completed" and p["data"]["id"] == image_id
                       for p in payloads(receiver, f"/img/{org}"))
            listed = (await http.get("/v1/images", headers=auth)).json()
            assert {image_id} <= {item["id"] for item in listed["data"]}
            assert (await http.get(f"/v1/groups/{group_id}", headers=auth)).json()["status"] == "complete"
    shards = {cluster_store.keys.shard_of_org(org) for org in orgs}
    assert len(shards) == 2


async def test_a_webhook_refused_twice_is_retried_until_accepted_on_a_cluster(
    cluster_settings: Settings, cluster_store: Store, counting_host: CountingHost, receiver: WebhookReceiver,
) -> None:
    receiver.script = [Route(b"no", 500, "text/plain"), Route(b"no", 503, "text/plain")]
    org = new_id("org")
    url = counting_host.put("/cl-retry.png", png_bytes(seed=22))
    record = await cluster_store.images.create(org, image_at(url, 0, receiver.url("/retry")))
    async with running_on(cluster_settings):
        async def accepted() -> bool:
            return len([p for p in payloads(receiver, "/retry") if p["type"] == "image.completed"]) == 3

        await until(accepted, 60, "the third attempt, accepted")
        [delivery] = await cluster_store.outbox.for_resource(record.id)

        async def recorded() -> bool:
            return len(await cluster_store.outbox.attempts(delivery.id)) == 3

        await until(recorded, 10, "three attempts recorded")
    codes = [a.status_code for a in await cluster_store.outbox.attempts(delivery.id)]
    assert codes == [500, 503, 200]


async def test_the_engine_killed_with_images_in_flight_finishes_them_after_a_restart_on_a_cluster(
    cluster_settings: Settings, cluster_store: Store, redis_cluster: LocalRedisCluster,
    counting_host: CountingHost, receiver: WebhookReceiver,
) -> None:
    settings = cluster_settings.model_copy(update={"engine_max_in_flight": 8, "engine_org_max_in_flight": 8})
    orgs = orgs_on_two_masters(cluster_store, redis_cluster)
    url = counting_host.put("/cl-crash.png", png_bytes(seed=23), delay_s=0.3)
    ids = [(await cluster_store.images.create(org, image_at(url, i, receiver.url("/crash")))).id
           for i in range(12) for org in orgs]
    models = model_handles(MODEL)
    async with notifier_for(settings):
        [replica] = await start_replicas(settings, models, 1)

        async def holds() -> bool:
            return await replica.held.remote() >= 2

        await until(holds, 30, "jobs in flight", poll_s=0.01)
        ray.kill(replica, no_restart=True)
        [restarted] = await start_replicas(settings, models, 1)
        try:
            async def all_delivered() -> bool:
                done = {p["data"]["id"] for p in payloads(receiver, "/crash") if p["type"] == "image.completed"}
                return done >= set(ids)

            await until(all_delivered, 90, "every image.completed after the restart")
        finally:
            ray.kill(restarted, no_restart=True)
    assert {r.status for r in await cluster_store.images.get_many(ids)} == {ImageStatus.COMPLETE}


async def test_a_bulk_group_runs_as_one_ray_data_pipeline_on_a_cluster(
    cluster_settings: Settings, cluster_store: Store, counting_host: CountingHost, receiver: WebhookReceiver,
) -> None:
    """At the stack's bulk threshold the group is one Ray Data run, whose workers write the
    results to the cluster; its ``group.completed`` webhook arrives once."""
    org = new_id("org")
    url = counting_host.put("/cl-bulk.png", png_bytes(seed=24))
    size = cluster_settings.bulk_threshold
    async with running_on(cluster_settings) as (api, http):
        auth = {"Authorization": f"Bearer {await api.ctx.store.accounts.create_api_key(org)}"}
        created = await http.post("/v1/groups", headers=auth, json={
            "images": [{"url": f"{url}?b={i}"} for i in range(size)], "models": [MODEL],
            "webhookUrl": receiver.url("/bulk"), "webhookEvents": ["group.completed"]})
        assert created.status_code == 202 and created.json()["bulk"] is True, created.text

        async def completed() -> bool:
            return any(p["type"] == "group.completed" for p in payloads(receiver, "/bulk"))

        await until(completed, 120, "the bulk group's group.completed")
    [payload] = payloads(receiver, "/bulk")
    assert payload["data"]["id"] == created.json()["id"] and payload["data"]["counts"]["complete"] == size
