"""Nothing accepted is lost: the notifier actor killed, or Redis restarted, mid-load.

Real local Ray (the notifier as the detached actor Ray restarts), real Redis (AOF on), a real
loopback receiver. Duplicates are allowed (at-least-once, same ``webhook-id``) and reported.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter

import httpx
import pytest
import ray

from core.events import Events
from core.schemas import DeliveryStatus, EventType
from core.settings import Settings
from core.store import Store
from core.tokens import new_id
from serve_app.local import RedisServer
from tests import test_notifier_delivery as base
from tests.support.servers import Route, WebhookReceiver
from tests.test_notifier_delivery import StartNotifier, actor_pid, wait_until

# The same per-test prefix, store and actor fixtures as test_notifier_delivery.
iso_settings = base.iso_settings
iso_store = base.iso_store
start_notifier = base.start_notifier

METRICS = (
    "ray_sightwire_webhook_deliveries_total",
    "ray_sightwire_webhook_attempt_latency_ms_bucket",
    "ray_sightwire_webhook_breaker_state",
    "ray_sightwire_webhook_held_deliveries",
)


async def queue_many(store: Store, org: str, url: str, n: int, batch: int = 100) -> dict[str, str]:
    """``n`` deliveries of distinct resources (no coalescing), ``batch`` per transaction;
    returns webhook-id → delivery id."""
    ids: dict[str, str] = {}
    for start in range(0, n, batch):
        async with store.redis.pipeline(transaction=True) as pipe:
            for i in range(start, min(n, start + batch)):
                resource = new_id("img")
                d = store.outbox.add(pipe, Events().announcement(
                    org, url, EventType.IMAGE_COMPLETED, resource, 1, {"id": resource, "n": i, "sequence": 1}))
                ids[d.webhook_id] = d.id
            await pipe.execute()
    return ids


def report(received: list[str], expected: set[str]) -> int:
    counts = Counter(received)
    duplicates = {msg: c for msg, c in counts.items() if c > 1}
    missing = expected - set(counts)
    print(f"{len(expected)} deliveries: {len(set(counts) & expected)} distinct webhook-ids received, "
          f"{sum(c - 1 for c in duplicates.values())} duplicates {sorted(duplicates.items())[:20]}"
          f"{' …' if len(duplicates) > 20 else ''}, {len(missing)} missing")
    return len(missing)


async def pending(store: Store, ids: dict[str, str]) -> int:
    """How many of ``ids`` are still to be sent (what a kill or restart can lose)."""
    found = await store.outbox.get_many(list(ids.values()))
    return sum(d is not None and d.status is DeliveryStatus.PENDING for d in found)


async def all_delivered(store: Store, ids: dict[str, str]) -> bool:
    found = await store.outbox.get_many(list(ids.values()))
    return all(d is not None and d.status is DeliveryStatus.DELIVERED for d in found)


async def test_kill_notifier_with_1000_pending(
    iso_settings: Settings, iso_store: Store, org: str, receiver: WebhookReceiver, start_notifier: StartNotifier
) -> None:
    settings = iso_settings.model_copy(
        update={"delivery_lease_s": 2.0, "webhook_timeout_s": 1.0, "endpoint_concurrency": 16}
    )
    receiver.default = Route(b"ok", 200, "text/plain", delay_s=0.002)  # a steady, not instant, receiver
    handle = await start_notifier(settings)
    pid = await actor_pid(handle)
    ids = await queue_many(iso_store, org, receiver.url("/hook"), 1000)
    await asyncio.to_thread(receiver.wait_for, lambda got: len(got) >= 250, 30)
    ray.kill(handle, no_restart=False)
    killed_at = len(receiver.received)
    pending_at_kill = await pending(iso_store, ids)
    assert pending_at_kill >= 100, f"only {pending_at_kill} pending at the kill: it proves nothing"
    await asyncio.to_thread(receiver.wait_for, lambda got: set(ids) <= {r.headers["webhook-id"] for r in got}, 60)
    assert await actor_pid(handle) != pid  # a new process finished the job
    received = [r.headers["webhook-id"] for r in receiver.received]
    print(f"killed after {killed_at} receipts, {pending_at_kill} pending")
    assert report(received, set(ids)) == 0
    await wait_until(lambda: all_delivered(iso_store, ids), timeout_s=10)
    assert await iso_store.outbox.next_due_at() is None  # nothing left queued

    # The restarted actor's metrics reach Prometheus through Ray's metrics agent.
    port = ray.nodes()[0]["MetricsExportPort"]
    deadline = time.monotonic() + 25
    async with httpx.AsyncClient() as client:
        while True:
            text = (await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)).text
            if all(name in text for name in METRICS):
                break
            assert time.monotonic() < deadline, f"metrics not exported: {[m for m in METRICS if m not in text]}"
            await asyncio.sleep(1)
    assert re.search(r'ray_sightwire_webhook_deliveries_total\{[^}]*outcome="delivered"[^}]*\} [1-9]', text)


@pytest.mark.parametrize("crash", [False, True], ids=["sigterm", "sigkill"])
async def test_redis_restart_mid_load_loses_nothing(
    iso_settings: Settings, iso_store: Store, org: str, receiver: WebhookReceiver,
    start_notifier: StartNotifier, redis_server: RedisServer, crash: bool,
) -> None:
    """Deliveries queued before the restart are all sent (the outbox is on disk, AOF), the
    notifier carries on with no manual step, and deliveries queued after it go out too. A
    SIGKILL gives Redis no chance to write anything out: what it acknowledged must come back."""
    receiver.default = Route(b"ok", 200, "text/plain", delay_s=0.01)
    handle = await start_notifier(iso_settings.model_copy(update={"endpoint_concurrency": 4}))
    before = await queue_many(iso_store, org, receiver.url("/hook"), 300)
    await asyncio.to_thread(receiver.wait_for, lambda got: len(got) >= 50, 30)
    pending_at_restart = await pending(iso_store, before)
    await asyncio.to_thread(redis_server.restart, crash=crash)
    assert pending_at_restart >= 100, f"only {pending_at_restart} pending at the restart: it proves nothing"
    kept = await iso_store.outbox.get_many(list(before.values()))
    assert all(d is not None for d in kept), "an acknowledged delivery did not come back"
    after = await queue_many(iso_store, org, receiver.url("/hook"), 50)
    expected = set(before) | set(after)
    await asyncio.to_thread(receiver.wait_for, lambda got: expected <= {r.headers["webhook-id"] for r in got}, 60)
    assert report([r.headers["webhook-id"] for r in receiver.received], expected) == 0
    await wait_until(lambda: all_delivered(iso_store, {**before, **after}), timeout_s=15)
    assert await handle.ping.remote() is True
