"""One attempt against a real loopback receiver: every endpoint problem is an Attempt, not a raise."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpcore
import pytest
from standardwebhooks import Webhook

from core.safe_http import policy_pool
from core.schemas import Delivery, EventType, utcnow
from core.settings import Settings
from core.tokens import new_id, new_webhook_secret
from core.urlpolicy import UrlPolicy
from notifier.sender import send_attempt
from serve_app.local import free_port
from tests.support.servers import Route, WebhookReceiver

SECRET = new_webhook_secret()


def delivery(url: str) -> Delivery:
    now = utcnow()
    return Delivery(
        id=new_id("dlv"), webhook_id=new_id("msg"), org_id="org_1", url=url,
        event_type=EventType.IMAGE_COMPLETED, resource_id="img_1", sequence=1,
        body='{"type":"image.completed","data":{"id":"img_1"}}', created_at=now, next_attempt_at=now,
    )


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpcore.AsyncConnectionPool]:
    async with policy_pool(UrlPolicy.from_settings(settings)) as pool:
        yield pool


async def test_success_is_signed(client: httpcore.AsyncConnectionPool, receiver: WebhookReceiver) -> None:
    d = delivery(receiver.url("/hook"))
    attempt = await send_attempt(client, d, [SECRET], 2.0)
    assert attempt.succeeded and attempt.status_code == 200 and attempt.error is None
    assert attempt.latency_ms > 0
    (got,) = receiver.received
    assert got.headers["webhook-id"] == d.webhook_id
    assert got.headers["user-agent"].startswith("Sightwire")
    Webhook(SECRET).verify(got.body, got.headers)


async def test_server_error(client: httpcore.AsyncConnectionPool, receiver: WebhookReceiver) -> None:
    receiver.script.append(Route(status=500))
    attempt = await send_attempt(client, delivery(receiver.url("/hook")), [SECRET], 2.0)
    assert not attempt.succeeded
    assert (attempt.status_code, attempt.error) == (500, "HTTP 500")


async def test_redirect_is_not_followed(client: httpcore.AsyncConnectionPool, receiver: WebhookReceiver) -> None:
    target = receiver.url("/elsewhere")
    receiver.script.append(Route(status=302, headers={"location": target}))
    attempt = await send_attempt(client, delivery(receiver.url("/hook")), [SECRET], 2.0)
    assert not attempt.succeeded and attempt.status_code == 302
    assert attempt.error == f"redirect to {target} not followed"
    assert [r.path for r in receiver.received] == ["/hook"]


async def test_connection_refused(client: httpcore.AsyncConnectionPool) -> None:
    attempt = await send_attempt(client, delivery(f"http://127.0.0.1:{free_port()}/hook"), [SECRET], 2.0)
    assert not attempt.succeeded
    assert (attempt.status_code, attempt.error) == (None, "connection refused")


async def test_timeout_bounds_the_whole_exchange(
    client: httpcore.AsyncConnectionPool, receiver: WebhookReceiver
) -> None:
    receiver.script.append(Route(status=200, delay_s=0.8))
    attempt = await send_attempt(client, delivery(receiver.url("/hook")), [SECRET], 0.3)
    assert not attempt.succeeded
    assert (attempt.status_code, attempt.error) == (None, "timeout after 0.3s")
    assert attempt.latency_ms < 700
    await asyncio.sleep(0.6)  # let the receiver's late answer fail inside this test, not after it


async def test_forbidden_address_is_an_attempt_error(receiver: WebhookReceiver) -> None:
    async with policy_pool(UrlPolicy()) as strict:
        attempt = await send_attempt(strict, delivery(receiver.url("/hook")), [SECRET], 2.0)
    assert not attempt.succeeded and attempt.status_code is None
    assert "non-public address" in (attempt.error or "")
    assert receiver.received == []


async def test_small_replies_reuse_the_connection_large_ones_are_cut(
    client: httpcore.AsyncConnectionPool, receiver: WebhookReceiver
) -> None:
    """The reply body is read (up to the limit), so the connection goes back to the pool; a reply
    longer than the limit is not read to its end and its connection is closed instead."""
    pool = client
    for _ in range(3):
        assert (await send_attempt(client, delivery(receiver.url("/small")), [SECRET], 2.0)).succeeded
    assert len(pool.connections) == 1  # one keep-alive connection served all three
    receiver.script.append(Route(b"x" * 2_000_000, 200, "text/plain"))
    attempt = await send_attempt(client, delivery(receiver.url("/big")), [SECRET], 2.0, read_limit=65_536)
    assert attempt.succeeded and attempt.status_code == 200
    assert len(pool.connections) == 0  # cut, not kept with two megabytes unread
    assert (await send_attempt(client, delivery(receiver.url("/again")), [SECRET], 2.0)).succeeded


async def test_retry_after_is_reported(client: httpcore.AsyncConnectionPool, receiver: WebhookReceiver) -> None:
    receiver.script.append(Route(b"", 429, "text/plain", headers={"Retry-After": "7"}))
    attempt = await send_attempt(client, delivery(receiver.url("/hook")), [SECRET], 2.0)
    assert (attempt.status_code, attempt.error, attempt.retry_after_s) == (429, "HTTP 429", 7.0)
