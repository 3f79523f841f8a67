"""Endpoint health, isolation and ordering: the delivery loop against real Redis and real
loopback receivers that refuse, fail, hang, slow down, or go away.

These run the same ``DeliveryLoop`` the notifier actor runs, in the test's own event loop (no
actor start per test); the actor-specific behaviour (kill, restart) is in
``test_notifier_delivery.py`` and ``test_notifier_durability.py``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime

import pytest

from core.delivery import AttemptRecord, BreakerPolicy
from core.events import Events
from core.schemas import (
    Attempt,
    Delivery,
    DeliveryStatus,
    EndpointState,
    EventType,
    ImageCreate,
    ModelResult,
    ModelStatus,
    utcnow,
)
from core.settings import Settings
from core.store import Store
from core.tokens import new_id
from notifier.loop import DeliveryLoop
from notifier.sender import retry_after_seconds
from serve_app.local import free_port
from tests import test_notifier_delivery as base
from tests.support.servers import LoopbackServer, Route, WebhookReceiver
from tests.test_notifier_delivery import ended, queue, wait_until

StartLoop = Callable[..., Awaitable[DeliveryLoop]]

# The same per-test prefix and store fixtures as test_notifier_delivery.
iso_settings = base.iso_settings
iso_store = base.iso_store


@pytest.fixture
async def start_loop() -> AsyncIterator[StartLoop]:
    loops: list[DeliveryLoop] = []

    async def start(settings: Settings, **update: object) -> DeliveryLoop:
        loop = DeliveryLoop(Settings(**{**settings.model_dump(), **update}))  # validated
        loop.start()
        loops.append(loop)
        return loop

    yield start
    for loop in loops:
        await loop.stop()


def rebind(server: LoopbackServer, port: int) -> None:
    """Move a not yet started loopback server to ``port`` (to bring a dead endpoint back)."""
    srv = server._server
    srv.socket.close()
    srv.socket = socket.socket(srv.address_family, srv.socket_type)
    srv.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.server_address = ("127.0.0.1", port)
    srv.server_bind()
    srv.server_activate()


class HangingServer:
    """Accepts connections and never answers (on ``host``: another loopback address is another
    destination host)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._sock = socket.socket()
        self._sock.bind((host, 0))
        self._sock.listen(512)
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def url(self, path: str = "/") -> str:
        host, port = self._sock.getsockname()
        return f"http://{host}:{port}{path}"

    @property
    def connections(self) -> int:
        return len(self._held)

    def _accept(self) -> None:
        self._sock.settimeout(0.05)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
                self._held.append(conn)
            except TimeoutError:
                continue
            except OSError:
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self._held:
            conn.close()
        self._sock.close()


async def test_outage_is_bounded_by_the_breaker_then_everything_arrives(
    iso_settings: Settings, iso_store: Store, org: str, start_loop: StartLoop
) -> None:
    """Refused for a while, then 500s, then healthy: the breaker keeps attempts during the
    outage to its bound, holds the rest, and every delivery arrives after the recovery."""
    threshold, cap, cooldown = 3, 4, 0.3
    loop = await start_loop(
        iso_settings, breaker_failure_threshold=threshold, endpoint_concurrency=cap, breaker_cooldown_s=cooldown,
        breaker_max_cooldown_s=0.6, retry_schedule_s=(0, 0.2, 0.4, 0.8, 1.6, 3.2),
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    n = 60
    deliveries = [await queue(iso_store, org, url, n=i) for i in range(n)]
    outage_started = time.monotonic()

    async def opened() -> bool:
        return (await iso_store.endpoints.health(org, url)).state is EndpointState.OPEN

    await wait_until(opened, timeout_s=5)
    health = await iso_store.endpoints.health(org, url)
    assert health.held >= n - threshold - cap and health.consecutive_failures >= threshold
    assert health.last_error == "connection refused" and health.failing_since is not None
    await asyncio.sleep(1.0)

    failing = WebhookReceiver()  # back, but answering 500
    failing.default = Route(b"down", 500, "text/plain")
    rebind(failing, port)
    failing.start()
    try:
        await asyncio.sleep(1.2)
        failing.default = Route(b"ok", 200, "text/plain")  # healthy from here on
        outage = time.monotonic() - outage_started
        for d in deliveries:
            assert (await ended(iso_store, d.id)).status is DeliveryStatus.DELIVERED
        attempts = [a for d in deliveries for a in await iso_store.outbox.attempts(d.id)]
        refused = sum(a.error == "connection refused" for a in attempts)
        got_500 = sum(a.status_code == 500 for a in attempts)
        # threshold failures open it; sends already in flight (cap - 1) finish; then one probe per cool-down
        bound = threshold + cap - 1 + int(outage / cooldown) + 1
        print(f"outage {outage:.1f}s: {refused} refused + {got_500} answered 500 = {refused + got_500} "
              f"attempts for {n} deliveries (bound {bound})")
        assert refused > 0 and got_500 > 0
        assert refused + got_500 <= bound < n

        received = [r.headers["webhook-id"] for r in failing.received]
        assert {d.webhook_id for d in deliveries} <= set(received)
        delivered_twice = len(received) - got_500 - n
        print(f"received all {n} distinct webhook-ids; {delivered_twice} duplicate deliveries")
        health = await iso_store.endpoints.health(org, url)
        assert health.state is EndpointState.CLOSED and health.held == 0 and health.consecutive_failures == 0
        assert health.last_success_at is not None and health.delivered == n
        assert loop.metrics.counts["delivered"] == n and loop.metrics.counts["held"] > 0
    finally:
        failing.stop()


async def test_hanging_endpoint_does_not_delay_a_healthy_one(
    iso_settings: Settings, iso_store: Store, org: str, receiver: WebhookReceiver, start_loop: StartLoop
) -> None:
    """Far more deliveries to a hanging endpoint than there are send slots in all: the healthy
    endpoint's enqueue→receipt latency stays what it is with no hanging endpoint at all."""
    await start_loop(iso_settings, notifier_max_in_flight=8, endpoint_concurrency=4, webhook_timeout_s=1.5)

    async def latencies(path: str, count: int) -> list[float]:
        out = []
        for i in range(count):
            sent = time.time()
            await queue(iso_store, org, receiver.url(path), n=i)
            got = await asyncio.to_thread(
                receiver.wait_for, lambda rs, i=i: sum(r.path == path for r in rs) > i, 5.0
            )
            out.append([r.at for r in got if r.path == path][i] - sent)
            await asyncio.sleep(0.02)
        return out

    baseline = await latencies("/alone", 15)
    hanging = HangingServer()
    try:
        stuck = [await queue(iso_store, org, hanging.url("/hang"), n=i) for i in range(100)]
        await wait_until(lambda: asyncio.sleep(0, hanging.connections >= 4), timeout_s=5)
        beside = await latencies("/beside", 15)
        assert hanging.connections <= 4 + 4  # its cap, and at most one more round before the breaker opens
    finally:
        hanging.stop()
    p50 = sorted(baseline)[len(baseline) // 2]
    print(f"healthy endpoint latency alone: p50 {p50 * 1000:.1f} ms, max {max(baseline) * 1000:.1f} ms; "
          f"beside a hanging one: p50 {sorted(beside)[7] * 1000:.1f} ms, max {max(beside) * 1000:.1f} ms")
    assert max(beside) < max(0.25, 3 * max(baseline))
    assert sorted(beside)[7] < max(0.05, 3 * p50)
    statuses = {(await iso_store.outbox.get(d.id)).status for d in stuck}  # type: ignore[union-attr]
    assert statuses == {DeliveryStatus.PENDING}  # held, not dropped


async def test_gone_disables_and_enable_releases_in_order(
    iso_settings: Settings, iso_store: Store, org: str, receiver: WebhookReceiver, start_loop: StartLoop
) -> None:
    loop = await start_loop(iso_settings)
    url = receiver.url("/gone")
    receiver.script.append(Route(b"gone", 410, "text/plain"))
    first = await queue(iso_store, org, url)
    await wait_until(lambda: asyncio.sleep(0, len(receiver.received) == 1))

    async def disabled() -> bool:
        return (await iso_store.endpoints.health(org, url)).state is EndpointState.DISABLED

    await wait_until(disabled)
    resource = new_id("img")
    later = [await queue_update(iso_store, org, url, resource, seq) for seq in (1, 2, 3)]
    others = [await queue(iso_store, org, url, n=i) for i in range(3)]
    await asyncio.sleep(0.5)  # several polls: nothing is attempted while disabled
    assert len(receiver.received) == 1
    health = await iso_store.endpoints.health(org, url)
    assert health.disabled_reason == "gone" and health.last_status_code == 410
    assert health.held == 1 + 1 + 3  # the first, the newest update (coalesced), three others
    assert [(await iso_store.outbox.get(d.id)).status for d in later] == [  # type: ignore[union-attr]
        DeliveryStatus.SUPERSEDED, DeliveryStatus.SUPERSEDED, DeliveryStatus.PENDING,
    ]

    released = await iso_store.endpoints.enable(org, url, utcnow())
    assert released == 5
    for d in (first, later[-1], *others):
        assert (await ended(iso_store, d.id)).status is DeliveryStatus.DELIVERED
    sequences = [json.loads(r.body)["data"].get("sequence") for r in receiver.received
                 if json.loads(r.body)["data"].get("id") == resource]
    assert sequences == [3]
    assert (await iso_store.endpoints.health(org, url)).state is EndpointState.CLOSED
    assert loop.metrics.counts["superseded"] == 0  # coalesced when queued, not at the claim


async def queue_update(store: Store, org: str, url: str, resource: str, sequence: int) -> Delivery:
    async with store.redis.pipeline(transaction=True) as pipe:
        delivery = store.outbox.add(pipe, Events().announcement(
            org, url, EventType.IMAGE_UPDATED, resource, sequence, {"id": resource, "sequence": sequence},
        ))
        await pipe.execute()
    return delivery


async def test_retry_after_is_honoured_and_clamped(
    iso_settings: Settings, iso_store: Store, org: str, receiver: WebhookReceiver, start_loop: StartLoop
) -> None:
    """429 with Retry-After pauses the whole endpoint that long; an absurd value is clamped."""
    await start_loop(iso_settings, endpoint_concurrency=1, retry_after_min_s=0.2, retry_after_max_s=1.5)
    receiver.script.extend([
        Route(b"slow down", 429, "text/plain", headers={"Retry-After": "1"}),
        Route(b"busy", 503, "text/plain", headers={"Retry-After": "86400"}),
    ])
    url = receiver.url("/hook")
    a, b = await queue(iso_store, org, url, n=1), await queue(iso_store, org, url, n=2)
    for d in (a, b):
        assert (await ended(iso_store, d.id)).status is DeliveryStatus.DELIVERED
    times = [r.at for r in receiver.received]
    assert len(times) == 4
    assert times[1] - times[0] >= 0.95  # Retry-After: 1, for the endpoint (the next send waited)
    assert 1.4 <= times[2] - times[1] < 3.0  # Retry-After: 86400 clamped to 1.5 s
    attempts = await iso_store.outbox.attempts(a.id) + await iso_store.outbox.attempts(b.id)
    assert sorted(x.retry_after_s or 0 for x in attempts)[-2:] == [1.0, 86400.0]
    health = await iso_store.endpoints.health(org, url)
    assert health.state is EndpointState.CLOSED and health.slowed_until is not None


def test_retry_after_forms() -> None:
    assert retry_after_seconds("120") == 120.0
    assert retry_after_seconds(" 0 ") == 0.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412450.0) == 30.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412500.0) == 0.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


async def test_ten_quick_updates_to_a_slow_receiver_end_with_the_newest(
    iso_settings: Settings, iso_store: Store, org: str, receiver: WebhookReceiver, start_loop: StartLoop
) -> None:
    """Ten updates of one image, through the real store path (finalize after each new model),
    faster than the receiver answers: it never sees an older sequence after a newer one, the
    last it sees is the newest, and the waiting ones were coalesced."""
    receiver.default = Route(b"ok", 200, "text/plain", delay_s=0.3)
    await start_loop(iso_settings)
    store = iso_store
    done = ModelResult(status=ModelStatus.COMPLETE, version="m@1", result={"ok": True})
    record = await store.images.create(
        org, ImageCreate(url="http://example.com/a.png", models=["m0"], webhook_url=receiver.url("/hook"))
    )
    await store.images.write_model_result(record.id, "m0", done)
    final, _ = await store.images.finalize(record.id)
    for i in range(1, 10):
        await store.images.add_models(record.id, org, [f"m{i}"])
        await store.images.write_model_result(record.id, f"m{i}", done)
        final, [delivery] = await store.images.finalize(record.id)
        await asyncio.sleep(0.03)
    assert (await ended(store, delivery.id)).status is DeliveryStatus.DELIVERED
    seen = [json.loads(r.body)["data"]["sequence"] for r in receiver.received]
    print(f"receiver saw sequences {seen} of 10 updates (newest {final.sequence})")
    assert seen == sorted(set(seen)) and seen[-1] == final.sequence
    statuses = [d.status for d in await store.outbox.for_resource(record.id)]
    assert len(statuses) == 10 and statuses.count(DeliveryStatus.SUPERSEDED) == 10 - len(seen)
    assert len(seen) < 10


def test_settings_refuse_a_lease_not_longer_than_the_timeout(settings: Settings) -> None:
    with pytest.raises(ValueError, match="delivery_lease_s"):
        Settings(delivery_lease_s=10, webhook_timeout_s=10)
    unchecked = settings.model_copy(update={"delivery_lease_s": 1.0})  # model_copy skips validation
    with pytest.raises(ValueError, match="delivery_lease_s"):
        DeliveryLoop(unchecked)


async def test_claim_drops_missing_records_and_record_applies_once(
    iso_settings: Settings, iso_store: Store, org: str
) -> None:
    """A queue entry whose record vanished is removed by the claim (not kept forever); an attempt
    recorded twice for one claim (two senders) changes the delivery once."""
    outbox = iso_store.outbox
    url = "http://127.0.0.1:9/hook"
    gone, kept = await queue(iso_store, org, url, n=1), await queue(iso_store, org, url, n=2)
    await iso_store.redis.delete(iso_store.keys.delivery(gone.id))
    claim = await outbox.claim(utcnow(), 5.0, 10, 8, {})
    assert [d.id for d in claim.deliveries] == [kept.id] and claim.missing == 1
    assert await iso_store.redis.zscore(iso_store.keys.endpoint_due(kept.endpoint_id or ""), gone.id) is None
    [claimed] = claim.deliveries
    now = utcnow()
    failure = Attempt(at=now, status_code=500, latency_ms=1.0, error="HTTP 500", succeeded=False)
    record = AttemptRecord(claimed, failure, now)
    [first] = await outbox.record([record], BreakerPolicy())
    [second] = await outbox.record([record], BreakerPolicy())
    assert (first.outcome, second.outcome) == ("retrying", "stale")
    after = await outbox.get(kept.id)
    assert after is not None and after.attempts == 1 and after.status is DeliveryStatus.PENDING
    assert len(await outbox.attempts(kept.id)) == 2  # both attempts are in the log
    assert (await iso_store.endpoints.health(org, url)).consecutive_failures == 1
    assert isinstance(await outbox.next_due_at(), datetime)


async def attempt_count(store: Store, deliveries: list[Delivery]) -> int:
    return sum([len(await store.outbox.attempts(d.id)) for d in deliveries])


async def test_breaker_state_survives_a_notifier_restart(
    iso_settings: Settings, iso_store: Store, org: str, start_loop: StartLoop
) -> None:
    """Open the breaker with one loop, stop it, start another: the new one finds the breaker
    open in Redis and holds the deliveries until the cool-down ends, then probes once."""
    url = f"http://127.0.0.1:{free_port()}/hook"
    options = {"breaker_failure_threshold": 2, "breaker_cooldown_s": 1.5, "breaker_max_cooldown_s": 3.0}
    first = await start_loop(iso_settings, **options)
    deliveries = [await queue(iso_store, org, url, n=i) for i in range(6)]

    async def opened() -> bool:
        return (await iso_store.endpoints.health(org, url)).state is EndpointState.OPEN

    await wait_until(opened, timeout_s=5)
    await first.stop()
    attempts_before = await attempt_count(iso_store, deliveries)
    await start_loop(iso_settings, **options)
    await asyncio.sleep(0.5)  # well within the cool-down: nothing is attempted
    assert await attempt_count(iso_store, deliveries) == attempts_before
    health = await iso_store.endpoints.health(org, url)
    assert health.state is EndpointState.OPEN and health.held == 6 and health.open_until is not None

    async def probed() -> bool:
        return await attempt_count(iso_store, deliveries) > attempts_before

    await wait_until(probed, timeout_s=5)
    await asyncio.sleep(0.3)
    assert await attempt_count(iso_store, deliveries) == attempts_before + 1  # one probe
    assert (await iso_store.endpoints.health(org, url)).state is EndpointState.OPEN  # it failed: open again


async def test_failing_past_the_disable_window_disables(
    iso_settings: Settings, iso_store: Store, org: str, start_loop: StartLoop
) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    await start_loop(iso_settings, breaker_failure_threshold=2, breaker_cooldown_s=0.2,
                     breaker_max_cooldown_s=0.2, endpoint_disable_after_s=1.0)
    d = await queue(iso_store, org, url)

    async def disabled() -> bool:
        return (await iso_store.endpoints.health(org, url)).state is EndpointState.DISABLED

    await wait_until(disabled, timeout_s=6)
    health = await iso_store.endpoints.health(org, url)
    assert health.disabled_reason == "failing" and health.held == 1
    assert health.failing_since is not None and health.disabled_at is not None
    assert (health.disabled_at - health.failing_since).total_seconds() >= 1.0
    assert (await iso_store.outbox.get(d.id)).status is DeliveryStatus.PENDING  # type: ignore[union-attr]
