"""Every notifier loop is supervised (SPEC §4): an unexpected exception is logged with what it
was working on, and the loop goes on. A failure is injected into each loop of a real delivery
loop (real redis, a loopback receiver): the claim loop, the waker, and one delivery's send."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from core.settings import Settings
from core.store import Store
from tests import test_notifier_delivery as base
from tests.support.servers import WebhookReceiver
from tests.test_notifier_breaker import StartLoop, start_loop
from tests.test_notifier_delivery import queue, wait_received

iso_settings, iso_store, start_loop = base.iso_settings, base.iso_store, start_loop


def inject(owner: object, name: str, failures: int = 1) -> list[int]:
    """Make the next ``failures`` calls of ``owner.name`` raise an error nothing expects; returns
    a one-item list counting the failures raised so far."""
    real: Callable[..., Awaitable[Any]] = getattr(owner, name)
    raised = [0]

    async def failing(*args: Any, **kwargs: Any) -> Any:
        if raised[0] < failures:
            raised[0] += 1
            raise RuntimeError(f"injected failure in {name}")
        return await real(*args, **kwargs)

    setattr(owner, name, failing)
    return raised


@pytest.fixture
def notifier_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="sightwire.notifier")
    return caplog


async def test_claim_loop_goes_on_after_a_failure(
    iso_settings: Settings, iso_store: Store, org: str, receiver: WebhookReceiver, start_loop: StartLoop,
    notifier_log: pytest.LogCaptureFixture,
) -> None:
    loop = await start_loop(iso_settings)
    raised = inject(loop.store.outbox, "claim", failures=2)
    await queue(iso_store, org, receiver.url("/after-claim-failures"))
    await wait_received(receiver, 1, timeout_s=5)
    assert raised == [2] and "notifier loop failed" in notifier_log.text
    assert "injected failure in claim" in notifier_log.text


async def test_waker_goes_on_after_a_failure(
    iso_settings: Settings, iso_store: Store, org: str, receiver: WebhookReceiver, start_loop: StartLoop,
    notifier_log: pytest.LogCaptureFixture,
) -> None:
    """With a 3 s poll only the waker can pick a delivery up at once: after its failure it must
    still be listening."""
    loop = await start_loop(iso_settings, notifier_poll_s=3.0)
    await asyncio.sleep(0.3)  # the loop's first claim found nothing: it now waits for a wake-up
    raised = inject(loop.store.redis, "blpop")
    await queue(iso_store, org, receiver.url("/first"))  # ends the waker's wait; its next one fails
    await wait_received(receiver, 1, timeout_s=5)
    await asyncio.sleep(0.3)
    assert raised == [1]
    sent = time.time()
    await queue(iso_store, org, receiver.url("/second"))
    [_, second] = await wait_received(receiver, 2, timeout_s=5)
    assert second.at - sent < 0.5, f"picked up after {second.at - sent:.2f}s: no waker"
    assert "notifier waker failed" in notifier_log.text and "injected failure in blpop" in notifier_log.text


async def test_a_failing_send_is_logged_with_its_delivery_and_others_go_on(
    iso_settings: Settings, iso_store: Store, org: str, receiver: WebhookReceiver, start_loop: StartLoop,
    notifier_log: pytest.LogCaptureFixture,
) -> None:
    loop = await start_loop(iso_settings)
    inject(loop, "_secrets_for")
    poisoned = await queue(iso_store, org, receiver.url("/poisoned"))
    await asyncio.sleep(0.3)
    await queue(iso_store, org, receiver.url("/next"))
    [got] = await wait_received(receiver, 1, timeout_s=5)
    assert got.path == "/next"
    assert poisoned.id in notifier_log.text and "injected failure in _secrets_for" in notifier_log.text
