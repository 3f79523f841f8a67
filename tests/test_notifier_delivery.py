"""The notifier actor end to end: real local Ray, real Redis, real loopback receivers.

Each test gets its own key prefix (so it sees only its own outbox) and its own notifier actor
under a unique name, killed at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import ray
from ray.actor import ActorHandle
from standardwebhooks import Webhook

import notifier
from core.events import Events
from core.schemas import Delivery, DeliveryStatus, EventType
from core.settings import Settings
from core.store import Store
from core.tokens import new_id
from notifier import NAMESPACE
from serve_app.local import RedisServer, free_port
from tests.support.servers import Route, WebhookReceiver

StartNotifier = Callable[[Settings], Awaitable[ActorHandle]]


def wait_until_gone(name: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"actor {name} still alive after {timeout_s}s")
        time.sleep(0.05)


@pytest.fixture
def iso_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"key_prefix": new_id("t")})


@pytest.fixture
async def iso_store(iso_settings: Settings) -> AsyncIterator[Store]:
    store = Store.from_settings(iso_settings)
    yield store
    await store.close()


@pytest.fixture
def start_notifier(ray_session: None) -> Iterator[StartNotifier]:
    """A notifier of this test's own, under a unique name: the application's notifier (the
    session ``stack`` fixture) may hold ``NOTIFIER_NAME`` meanwhile."""
    names: list[str] = []

    async def start(settings: Settings) -> ActorHandle:
        names.append(new_id("notifier-test"))
        handle = notifier.start_notifier(settings, name=names[-1])
        assert await handle.ping.remote() is True
        return handle

    yield start
    for name in names:
        ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
        wait_until_gone(name)


async def queue(store: Store, org: str, url: str, **data: Any) -> Delivery:
    """Put a delivery in the outbox the way the product does: inside a transaction."""
    async with store.redis.pipeline(transaction=True) as pipe:
        delivery = store.outbox.add(pipe, Events().announcement(
            org, url, EventType.IMAGE_COMPLETED, new_id("img"), 1, {"id": "img_x", "status": "complete", **data},
        ))
        await pipe.execute()
    return delivery


async def wait_until(check: Callable[[], Awaitable[bool]], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout_s}s")
        await asyncio.sleep(0.05)


async def wait_received(receiver: WebhookReceiver, count: int, timeout_s: float = 15.0) -> list[Any]:
    return await asyncio.to_thread(receiver.wait_for, lambda got: len(got) >= count, timeout_s)


async def ended(store: Store, delivery_id: str) -> Delivery:
    async def done() -> bool:
        d = await store.outbox.get(delivery_id)
        return d is not None and d.status is not DeliveryStatus.PENDING

    await wait_until(done)
    final = await store.outbox.get(delivery_id)
    assert final is not None
    return final


async def test_delivery_is_signed_and_verifies(
    iso_settings: Settings, iso_store: Store, org: str, receiver: WebhookReceiver, start_notifier: StartNotifier
) -> None:
    handle = await start_notifier(iso_settings)
    delivery = await queue(iso_store, org, receiver.url("/hook"), detail="x")
    await handle.wake.remote()
    (got,) = await wait_received(receiver, 1)
    secret = (await iso_store.accounts.webhook_secrets(org))[0]
    payload = Webhook(secret).verify(got.body, got.headers)
    assert payload["type"] == "image.completed"
    assert payload["data"] == {"id": "img_x", "status": "complete", "detail": "x"}
    assert got.headers["webhook-id"] == delivery.webhook_id
    final = await ended(iso_store, delivery.id)
    assert final.status is DeliveryStatus.DELIVERED and final.attempts == 1
    assert final.delivered_at is not None and final.last_status_code == 200
    assert await iso_store.outbox.next_due_at() is None


async def test_retries_server_errors_with_stable_id(
    iso_settings: Settings, iso_store: Store, org: str, receiver: WebhookReceiver, start_notifier: StartNotifier
) -> None:
    receiver.script.extend([Route(status=500), Route(status=500)])
    handle = await start_notifier(iso_settings)
    delivery = await queue(iso_store, org, receiver.url("/hook"))
    await handle.wake.remote()
    got = await wait_received(receiver, 3)
    assert {r.headers["webhook-id"] for r in got} == {delivery.webhook_id}
    secret = (await iso_store.accounts.webhook_secrets(org))[0]
    for r in got:
        Webhook(secret).verify(r.body, r.headers)
    # the schedule (0, 0.3, 0.6, ...) spaces the retries
    assert got[1].at - got[0].at >= 0.25 and got[2].at - got[1].at >= 0.55
    final = await ended(iso_store, delivery.id)
    attempts = await iso_store.outbox.attempts(delivery.id)
    assert [a.status_code for a in attempts] == [500, 500, 200]
    assert [a.succeeded for a in attempts] == [False, False, True]
    assert attempts[0].error == "HTTP 500"
    assert final.status is DeliveryStatus.DELIVERED and final.attempts == 3
    health = await iso_store.endpoints.health(org, receiver.url("/hook"))
    assert health.consecutive_failures == 0 and health.last_success_at is not None


async def actor_pid(handle: ActorHandle) -> int:
    return await handle.__ray_call__.remote(lambda _self: os.getpid())


async def test_actor_killed_while_waiting_for_retry_still_delivers(
    iso_settings: Settings, iso_store: Store, org: str, receiver: WebhookReceiver, start_notifier: StartNotifier
) -> None:
    settings = iso_settings.model_copy(update={"retry_schedule_s": (0.0, 2.0, 0.5)})
    receiver.script.append(Route(status=500))
    handle = await start_notifier(settings)
    pid = await actor_pid(handle)
    delivery = await queue(iso_store, org, receiver.url("/hook"))
    await handle.wake.remote()

    async def first_recorded() -> bool:
        return len(await iso_store.outbox.attempts(delivery.id)) == 1

    await wait_until(first_recorded)
    ray.kill(handle, no_restart=False)
    final = await ended(iso_store, delivery.id)
    assert final.status is DeliveryStatus.DELIVERED
    assert await actor_pid(handle) != pid  # it really was a new process that delivered
    assert [a.status_code for a in await iso_store.outbox.attempts(delivery.id)] == [500, 200]
    assert [r.headers["webhook-id"] for r in receiver.received] == [delivery.webhook_id] * 2


async def test_actor_killed_mid_send_resends_after_lease(
    iso_settings: Settings, iso_store: Store, org: str, receiver: WebhookReceiver, start_notifier: StartNotifier
) -> None:
    settings = iso_settings.model_copy(update={"delivery_lease_s": 1.5, "webhook_timeout_s": 1.0})
    receiver.script.append(Route(status=200, delay_s=2.0))  # the first answer never arrives
    handle = await start_notifier(settings)
    delivery = await queue(iso_store, org, receiver.url("/hook"))
    await handle.wake.remote()
    await wait_received(receiver, 1)
    ray.kill(handle, no_restart=False)
    final = await ended(iso_store, delivery.id)
    assert final.status is DeliveryStatus.DELIVERED
    # the interrupted attempt was never recorded; the receiver saw the same message twice
    assert [a.status_code for a in await iso_store.outbox.attempts(delivery.id)] == [200]
    assert [r.headers["webhook-id"] for r in receiver.received] == [delivery.webhook_id] * 2


async def test_redirect_is_a_failure_and_not_followed(
    iso_settings: Settings, iso_store: Store, org: str, receiver: WebhookReceiver, start_notifier: StartNotifier
) -> None:
    elsewhere = receiver.url("/elsewhere")
    receiver.script.append(Route(status=302, headers={"location": elsewhere}))
    handle = await start_notifier(iso_settings)
    delivery = await queue(iso_store, org, receiver.url("/hook"))
    await handle.wake.remote()
    final = await ended(iso_store, delivery.id)
    attempts = await iso_store.outbox.attempts(delivery.id)
    assert [a.status_code for a in attempts] == [302, 200]
    assert attempts[0].error == f"redirect to {elsewhere} not followed" and not attempts[0].succeeded
    assert [r.path for r in receiver.received] == ["/hook", "/hook"]
    assert final.status is DeliveryStatus.DELIVERED


async def test_refused_endpoint_retries_then_fails(
    iso_settings: Settings, iso_store: Store, org: str, start_notifier: StartNotifier
) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    # a breaker that never opens here: the schedule alone decides (an open breaker would hold it)
    handle = await start_notifier(iso_settings.model_copy(update={"breaker_failure_threshold": 100}))
    delivery = await queue(iso_store, org, url)
    await handle.wake.remote()
    final = await ended(iso_store, delivery.id)
    schedule = iso_settings.retry_schedule_s
    attempts = await iso_store.outbox.attempts(delivery.id)
    assert len(attempts) == len(schedule) == final.attempts
    assert all(a.error == "connection refused" and a.status_code is None for a in attempts)
    assert (attempts[-1].at - attempts[0].at).total_seconds() >= sum(schedule[1:]) * 0.9  # the schedule, not a burst
    assert final.status is DeliveryStatus.FAILED
    assert final.next_attempt_at is None and final.last_error == "connection refused"
    assert await iso_store.outbox.next_due_at() is None
    assert (await iso_store.endpoints.health(org, url)).consecutive_failures == len(schedule)


async def test_slow_endpoint_does_not_delay_others(
    iso_settings: Settings, iso_store: Store, org: str, receiver: WebhookReceiver, start_notifier: StartNotifier
) -> None:
    slow = WebhookReceiver().start()
    try:
        slow.default = Route(b"ok", 200, "text/plain", delay_s=1.5)
        handle = await start_notifier(iso_settings)
        slow_ones = [await queue(iso_store, org, slow.url(f"/slow{i}")) for i in range(5)]
        fast = await queue(iso_store, org, receiver.url("/fast"))
        started = time.time()
        await handle.wake.remote()
        (got,) = await wait_received(receiver, 1, timeout_s=5)
        assert got.at - started < 1.0  # sent one after another, it would wait 7.5 s
        assert (await ended(iso_store, fast.id)).status is DeliveryStatus.DELIVERED
        for d in slow_ones:
            assert (await ended(iso_store, d.id)).status is DeliveryStatus.DELIVERED
    finally:
        slow.stop()


async def test_poll_finds_deliveries_without_wake(
    iso_settings: Settings, iso_store: Store, org: str, receiver: WebhookReceiver, start_notifier: StartNotifier
) -> None:
    await start_notifier(iso_settings)
    delivery = await queue(iso_store, org, receiver.url("/hook"))
    assert (await ended(iso_store, delivery.id)).status is DeliveryStatus.DELIVERED
    assert json.loads(receiver.received[0].body)["type"] == "image.completed"


async def test_each_key_prefix_gets_its_own_application_notifier(
    settings: Settings, org: str, receiver: WebhookReceiver, ray_session: None
) -> None:
    """Two applications on one cluster (different key prefixes) each start their notifier the
    way the app builder does; the second one's deliveries are sent too."""
    first, second = (settings.model_copy(update={"key_prefix": new_id("app")}) for _ in range(2))
    handles = [notifier.start_notifier(first), notifier.start_notifier(second)]
    store = Store.from_settings(second)
    try:
        assert notifier.start_notifier(second)._actor_id == handles[1]._actor_id  # a rebuild finds it
        delivery = await queue(store, org, receiver.url("/second"))
        assert (await ended(store, delivery.id)).status is DeliveryStatus.DELIVERED
    finally:
        await store.close()
        for app in (first, second):
            name = notifier.notifier_name(app)
            ray.kill(notifier.notifier_handle(app), no_restart=True)
            wait_until_gone(name)


async def test_survives_redis_restart(
    iso_settings: Settings, iso_store: Store, org: str, receiver: WebhookReceiver,
    start_notifier: StartNotifier, redis_server: RedisServer,
) -> None:
    await start_notifier(iso_settings)
    await asyncio.to_thread(redis_server.restart)
    await asyncio.sleep(3 * iso_settings.notifier_poll_s)  # the loop meets the outage and carries on
    delivery = await queue(iso_store, org, receiver.url("/hook"))
    assert (await ended(iso_store, delivery.id)).status is DeliveryStatus.DELIVERED
