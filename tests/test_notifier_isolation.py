"""One org cannot slow another's webhooks (SPEC §5): many URLs of one org on one tarpit host
hold at most the per-org and per-destination-host in-flight caps, never the whole budget.

The real delivery loop, real redis, a loopback tarpit (accepts, never answers) on 127.0.0.2 and
a healthy receiver on 127.0.0.1 (two destination hosts)."""

from __future__ import annotations

import asyncio
import time

import pytest

from core.schemas import DeliveryStatus
from core.settings import Settings
from core.store import Store
from core.tokens import new_id
from tests import test_notifier_delivery as base
from tests.support.servers import WebhookReceiver
from tests.test_notifier_breaker import HangingServer, StartLoop, start_loop
from tests.test_notifier_delivery import queue, wait_until

iso_settings, iso_store, start_loop = base.iso_settings, base.iso_store, start_loop
TARPIT_URLS = 64
CAPS = {"notifier_max_in_flight": 16, "endpoint_concurrency": 4, "webhook_timeout_s": 2.0,
        "notifier_org_max_in_flight": 8, "notifier_host_max_in_flight": 6}


async def latencies(store: Store, org: str, receiver: WebhookReceiver, path: str, count: int) -> list[float]:
    """Enqueue→receipt seconds of ``count`` deliveries, one after another."""
    out = []
    for i in range(count):
        sent = time.time()
        await queue(store, org, receiver.url(path), n=i)
        got = await asyncio.to_thread(receiver.wait_for, lambda rs, i=i: sum(r.path == path for r in rs) > i, 5.0)
        out.append([r.at for r in got if r.path == path][i] - sent)
        await asyncio.sleep(0.02)
    return out


@pytest.mark.parametrize(
    ("attacker_orgs", "tarpit_hosts", "cap"),
    [(1, 2, CAPS["notifier_org_max_in_flight"]), (2, 1, CAPS["notifier_host_max_in_flight"])],
    ids=["one-org-two-hosts", "two-orgs-one-host"],
)
async def test_tarpit_urls_of_one_org_leave_another_orgs_latency_alone(
    iso_settings: Settings, iso_store: Store, org: str, receiver: WebhookReceiver, start_loop: StartLoop,
    attacker_orgs: int, tarpit_hosts: int, cap: int,
) -> None:
    """64 hanging URLs (differing by path and query) would take the whole budget of 16 without
    the caps: one org on two tarpit hosts is held by its org cap (8), two orgs on one host by
    the host cap (6)."""
    loop = await start_loop(iso_settings, **CAPS)
    baseline = await latencies(iso_store, org, receiver, "/alone", 12)
    tarpits = [HangingServer(f"127.0.0.{2 + i}") for i in range(tarpit_hosts)]
    attackers = [new_id("org") for _ in range(attacker_orgs)]
    try:
        stuck = [
            await queue(iso_store, attackers[i % attacker_orgs], tarpits[i % tarpit_hosts].url(f"/hook/{i}?v={i}"), n=i)
            for i in range(TARPIT_URLS)
        ]
        hanging = lambda: sum(t.connections for t in tarpits)  # noqa: E731
        await wait_until(lambda: asyncio.sleep(0, hanging() >= cap), timeout_s=5)
        await asyncio.sleep(0.1)
        assert loop.in_flight == cap  # all the tarpit holds, and not one send more
        beside = await latencies(iso_store, org, receiver, "/beside", 12)
        assert hanging() <= cap
        statuses = {(await iso_store.outbox.get(d.id)).status for d in stuck}  # type: ignore[union-attr]
    finally:
        for tarpit in tarpits:
            tarpit.stop()
    alone, near = sorted(baseline), sorted(beside)
    print(f"other org's latency alone: p50 {alone[6] * 1000:.1f} ms, p90 {alone[-2] * 1000:.1f} ms; "
          f"beside {TARPIT_URLS} tarpit URLs: p50 {near[6] * 1000:.1f} ms, p90 {near[-2] * 1000:.1f} ms")
    assert near[6] <= alone[6] + 0.1 and near[-2] <= alone[-2] + 0.1
    assert statuses == {DeliveryStatus.PENDING}  # held, not dropped
