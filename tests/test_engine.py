"""The online engine on the real stack: fairness, per-host caps, leases and crash recovery, dead letters.

Each test runs processors of its own key prefix (in this process, or as Ray actors when one
must be killed) against the session stack's real model deployment, a loopback image host and,
where webhooks matter, a notifier of that prefix. No Serve app of its own.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import pytest
import ray

from core.schemas import ErrorCode, ImageCreate, ImageStatus
from core.settings import Settings
from core.store import Store
from core.store.fair_queue import new_token
from core.store.jobs import QueueName
from core.tokens import new_id
from deployments.processor import Processor
from serve_app.dead_letters import list_letters, requeue_letters
from serve_app.stack import LocalStack
from tests.conftest import png_bytes
from tests.support.engine import CountingHost, model_handles, notifier_for, start_replicas, terminal, until
from tests.support.servers import WebhookReceiver

MODEL = "quality_score"  # the quickest tiny model
pytestmark = pytest.mark.timeout(180)


def engine_settings(stack: LocalStack, **update: object) -> Settings:
    return stack.settings.model_copy(update={"key_prefix": new_id("sweng"), "job_lease_s": 1.5,
                                             "job_reclaim_interval_s": 0.2, **update})


async def create(store: Store, org: str, url: str, **extra: object) -> str:
    return (await store.images.create(org, ImageCreate(url=url, models=[MODEL], **extra))).id


def completed_once(receiver: WebhookReceiver, path: str, ids: list[str]) -> bool:
    """Every image's ``image.completed`` arrived, and no state was announced twice."""
    seen = Counter((json.loads(r.body)["data"]["id"], json.loads(r.body)["type"])
                   for r in list(receiver.received) if r.path == path)
    assert all(n == 1 for n in seen.values()), [k for k, n in seen.items() if n > 1]
    return all((image_id, "image.completed") in seen for image_id in ids)


async def test_an_org_behind_another_orgs_backlog_is_served_at_once_and_hosts_are_capped(
    stack: LocalStack, counting_host: CountingHost
) -> None:
    """Org A queues 40 images on a host answering in 0.4 s; org B's one image, queued after all
    of them, still completes while most of A's wait (one FIFO would serve it last). Meanwhile no
    more than ``engine_host_fetches`` downloads ever reach one host at once."""
    settings = engine_settings(stack, engine_max_in_flight=8, engine_org_max_in_flight=4, engine_host_fetches=3)
    store = Store.from_settings(settings)
    slow = counting_host.put("/slow.png", png_bytes(seed=1), delay_s=0.4)
    a_ids = [await create(store, "org_a_" + settings.key_prefix, f"{slow}?i={i}") for i in range(40)]
    b_id = await create(store, "org_b_" + settings.key_prefix, counting_host.put("/b.png", png_bytes(seed=2)))
    processor = Processor(settings, model_handles(MODEL))
    started = time.monotonic()
    processor.start()
    try:
        async def b_done() -> bool:
            return (await store.images.get(b_id)).status is ImageStatus.COMPLETE

        b_at = await until(b_done, 30, "org B's image completes")
        a_left = 40 - await terminal(store, a_ids)
        await until(lambda: _all_terminal(store, a_ids), 60, "org A's images complete")
    finally:
        await processor.stop()
        await store.close()
    assert a_left >= 25, f"B finished after {b_at - started:.2f}s with only {a_left} of A's left"
    assert counting_host.peak == 3  # the per-host cap, reached and never passed (A had 4 slots)


async def _all_terminal(store: Store, ids: list[str]) -> bool:
    return await terminal(store, ids) == len(ids)


async def test_an_org_of_weight_2_gets_twice_the_share_and_a_change_needs_no_restart(
    stack: LocalStack, counting_host: CountingHost
) -> None:
    """Orgs A (weight 2, set by an operator) and B (weight 1) each queue 60 images on a slow
    host; a replica holds 3 at once. Of the first 30 downloads A has ~20, B ~10. The operator
    then sets A back to 1: once the replica's refresh has seen it, with no restart, the next
    24 downloads split ~12/12. Counts of the host's request log, not timings."""
    settings = engine_settings(stack, engine_max_in_flight=3, engine_org_max_in_flight=3)
    store = Store.from_settings(settings)
    orgs = {"a": "org_a_" + settings.key_prefix, "b": "org_b_" + settings.key_prefix}
    for name, org in orgs.items():
        await store.accounts.create_api_key(org)
        url = counting_host.put(f"/w{name}.png", png_bytes(seed=5), delay_s=0.4)
        for i in range(60):
            await create(store, org, f"{url}?i={i}")
    await store.weights.set(orgs["a"], 2)
    processor = Processor(settings, model_handles(MODEL))
    await processor.weights.refresh(store.weights)  # what its metrics loop does first thing
    processor.start()

    def shares(start: int, count: int) -> dict[str, int]:
        window = [path[2] for path in counting_host.order[start:start + count]]  # "/wa.png?i=3" -> "a"
        return {name: window.count(name) for name in orgs}

    try:
        await until(lambda: _async(len(counting_host.order) >= 30), 60, "30 downloads")
        weighted = shares(0, 30)
        await store.weights.set(orgs["a"], 1)
        await until(lambda: _async(processor.weights(orgs["a"]) == 1.0), 15, "the replica refreshes the weights")
        start = len(counting_host.order) + 3  # the jobs already held were claimed at weight 2
        await until(lambda: _async(len(counting_host.order) >= start + 24), 60, "24 more downloads")
        even = shares(start, 24)
    finally:
        await processor.stop()
        await store.close()
    assert weighted["a"] == pytest.approx(2 * weighted["b"], abs=3), weighted
    assert even["a"] == pytest.approx(even["b"], abs=3), even


async def test_a_replica_killed_mid_load_loses_nothing_and_announces_each_state_once(
    stack: LocalStack, counting_host: CountingHost, receiver: WebhookReceiver, org: str
) -> None:
    """Two processor replicas (Ray actors); one is killed (``ray.kill``) while it holds jobs.
    Its leases expire, the live replica reclaims them: every image completes and its
    ``image.completed`` webhook arrives exactly once."""
    settings = engine_settings(stack, engine_max_in_flight=8, engine_org_max_in_flight=8)  # both get work
    store = Store.from_settings(settings)
    url = counting_host.put("/load.png", png_bytes(seed=3), delay_s=0.3)
    ids = [await create(store, org, f"{url}?i={i}", webhook_url=receiver.url("/kill-one")) for i in range(24)]
    victim, survivor = await start_replicas(settings, model_handles(MODEL), 2)
    try:
        async with notifier_for(settings):
            await until(lambda: _holds(victim), 30, "the victim holds jobs", poll_s=0.01)
            ray.kill(victim, no_restart=True)
            await until(lambda: _all_terminal(store, ids), 60, "every image completes")
            await until(lambda: _async(completed_once(receiver, "/kill-one", ids)), 60, "every webhook arrives")
            assert [r.status for r in await store.images.get_many(ids)] == [ImageStatus.COMPLETE] * len(ids)
            await asyncio.sleep(1.0)  # a late duplicate would show now
            completed_once(receiver, "/kill-one", ids)
    finally:
        ray.kill(survivor, no_restart=True)
        await store.close()


async def _holds(replica: ray.actor.ActorHandle) -> bool:
    return await replica.held.remote() >= 2


async def _async(value: bool) -> bool:
    return value


async def test_a_job_slower_than_its_lease_is_not_run_twice(
    stack: LocalStack, counting_host: CountingHost, org: str
) -> None:
    """The fetch takes 2.5 s against a 1 s lease; two processors watch the queue. The heartbeat
    renews the lease, so the image is fetched once, in one attempt."""
    settings = engine_settings(stack, job_lease_s=1.0)
    store = Store.from_settings(settings)
    image_id = await create(store, org, counting_host.put("/slow-job.png", png_bytes(seed=4), delay_s=2.5))
    processors = [Processor(settings, model_handles(MODEL)) for _ in range(2)]
    for processor in processors:
        processor.start()
    try:
        async def done() -> bool:
            return (await store.images.get(image_id)).status is ImageStatus.COMPLETE

        await until(done, 30, "the slow image completes")
        await asyncio.sleep(1.5)  # longer than a lease: a second run would have started by now
    finally:
        await asyncio.gather(*(p.stop() for p in processors))
        await store.close()
    assert counting_host.requests["/slow-job.png"] == 1


async def test_whole_app_killed_with_images_in_flight_the_last_is_delivered_within_30s_of_restart(
    stack: LocalStack, counting_host: CountingHost, receiver: WebhookReceiver, org: str
) -> None:
    """At the default lease (15 s) and reclaim interval: both replicas are killed with images
    in flight; a replica started afterwards (the restart) delivers the last within 30 s."""
    settings = engine_settings(stack, job_lease_s=Settings.model_fields["job_lease_s"].default,
                               job_reclaim_interval_s=Settings.model_fields["job_reclaim_interval_s"].default,
                               engine_max_in_flight=8, engine_org_max_in_flight=8)
    store = Store.from_settings(settings)
    url = counting_host.put("/crash.png", png_bytes(seed=5), delay_s=0.5)
    ids = [await create(store, org, f"{url}?i={i}", webhook_url=receiver.url("/crash")) for i in range(40)]
    models = model_handles(MODEL)
    try:
        async with notifier_for(settings):
            replicas = await start_replicas(settings, models, 2)
            await until(lambda: _holds(replicas[0]), 30, "jobs in flight", poll_s=0.01)
            for replica in replicas:
                ray.kill(replica, no_restart=True)
            in_flight = len(ids) - await terminal(store, ids)
            restarted_at = time.monotonic()
            [replica] = await start_replicas(settings, models, 1)
            done_at = await until(lambda: _async(completed_once(receiver, "/crash", ids)), 60, "every webhook")
            ray.kill(replica, no_restart=True)
    finally:
        await store.close()
    assert in_flight > 0
    assert done_at - restarted_at < 30, f"last delivered {done_at - restarted_at:.1f}s after the restart"


async def test_a_poison_job_becomes_a_dead_letter_and_other_orgs_go_on(
    stack: LocalStack, counting_host: CountingHost, receiver: WebhookReceiver, org: str
) -> None:
    """A record that cannot be read (its models field corrupt, as a bad migration would leave
    it): its job fails every attempt, is buried after ``max_job_attempts`` (the record cannot
    even be failed), and the processor keeps serving another org, before and after. Once an
    operator has fixed the record, ``dead-letters requeue`` runs it again and its webhook arrives."""
    settings = engine_settings(stack)
    store = Store.from_settings(settings)
    url = counting_host.put("/poison.png", png_bytes(seed=6))
    poison = await create(store, org, url, webhook_url=receiver.url("/poison"))
    models = await store.redis.hget(store.keys.image(poison), "models")
    await store.redis.hset(store.keys.image(poison), "models", "{not json")
    processor = Processor(settings, model_handles(MODEL))
    processor.start()
    other = "org_other_" + settings.key_prefix
    try:
        async with notifier_for(settings):
            before = await create(store, other, url, webhook_url=receiver.url("/poison"))
            await until(lambda: _async(completed_once(receiver, "/poison", [before])), 30, "the other org's image")

            async def buried() -> bool:
                return await store.jobs.dead[QueueName.ONLINE].count() == 1

            await until(buried, 30, "the poison job is a dead letter")
            after = await create(store, other, url, webhook_url=receiver.url("/poison"))
            await until(lambda: _async(completed_once(receiver, "/poison", [after])), 30, "the other org, after")
            [letter] = await store.jobs.dead[QueueName.ONLINE].list()
            assert letter.attempts == settings.max_job_attempts and letter.payload["image"] == poison
            assert (await store.jobs.counts())["deadLetters"] == 1
            assert letter.entry in await list_letters(store, list(QueueName), 10)

            await store.redis.hset(store.keys.image(poison), "models", models)
            assert "requeued online" in await requeue_letters(store, [QueueName.ONLINE], [letter.entry], False)
            await until(lambda: _async(completed_once(receiver, "/poison", [poison])), 30, "the requeued image")
            assert await store.jobs.dead[QueueName.ONLINE].count() == 0
    finally:
        await processor.stop()
        await store.close()


async def test_a_job_whose_workers_keep_dying_fails_its_image_with_its_own_code(
    stack: LocalStack, counting_host: CountingHost, receiver: WebhookReceiver, org: str
) -> None:
    """Three claims whose workers died (leases left to expire): the reclaimer fails the image
    with ``attempts_exhausted``, announces ``image.failed`` and buries the job."""
    settings = engine_settings(stack, job_lease_s=0.3, job_reclaim_interval_s=0.1)
    store = Store.from_settings(settings)
    url = counting_host.put("/dies.png", png_bytes(seed=7))
    image_id = await create(store, org, url, webhook_url=receiver.url("/dies"))
    queue = store.jobs.online
    for attempt in range(1, settings.max_job_attempts + 1):
        [job] = await queue.claim(new_token(), 1, {}, 1)  # a worker that dies at once
        assert job.attempts == attempt
        await asyncio.sleep(0.35)
        if attempt < settings.max_job_attempts:
            assert (await queue.reclaim(new_token())).requeued == 1
    processor = Processor(settings, model_handles(MODEL))
    processor.start()
    try:
        async with notifier_for(settings):
            [hit] = await asyncio.to_thread(receiver.wait_for, lambda got: any(r.path == "/dies" for r in got), 30)
    finally:
        await processor.stop()
    try:
        payload = json.loads(hit.body)
        assert payload["type"] == "image.failed" and payload["data"]["id"] == image_id
        record = await store.images.get(image_id)
        assert record.status is ImageStatus.FAILED and record.error.code is ErrorCode.ATTEMPTS_EXHAUSTED
        assert await store.jobs.dead[QueueName.ONLINE].count() == 1
    finally:
        await store.close()
