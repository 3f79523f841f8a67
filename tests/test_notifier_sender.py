"""One attempt against a real loopback receiver: every endpoint problem is an Attempt, not a raise."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from standardwebhooks import Webhook

from core.safe_http import safe_client
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
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with safe_client(UrlPolicy.from_settings(settings), timeout=2.0, follow_redirects=False) as c:
        yield c


async def test_success_is_signed(client: httpx.AsyncClient, receiver: WebhookReceiver) -> None:
    d = delivery(receiver.url("/hook"))
    attempt = await send_attempt(client, d, [SECRET], 2.0)
    assert attempt.succeeded and attempt.status_code == 200 and attempt.error is None
    assert attempt.latency_ms > 0
    (got,) = receiver.received
    assert got.headers["webhook-id"] == d.webhook_id
    assert got.headers["user-agent"].startswith("Sightwire")
    Webhook(SECRET).verify(got.body, got.headers)


async def test_server_error(client: httpx.AsyncClient, receiver: WebhookReceiver) -> None:
    receiver.script.append(Route(status=500))
    attempt = await send_attempt(client, delivery(receiver.url("/hook")), [SECRET], 2.0)
    assert not attempt.succeeded
    assert (attempt.status_code, attempt.error) == (500, "HTTP 500")


async def test_redirect_is_not_followed(client: httpx.AsyncClient, receiver: WebhookReceiver) -> None:
    target = receiver.url("/elsewhere")
    receiver.script.append(Route(status=302, headers={"location": target}))
    attempt = await send_attempt(client, delivery(receiver.url("/hook")), [SECRET], 2.0)
    assert not attempt.succeeded and attempt.status_code == 302
    assert attempt.error == f"redirect to {target} not followed"
    assert [r.path for r in receiver.received] == ["/hook"]


async def test_connection_refused(client: httpx.AsyncClient) -> None:
    attempt = await send_attempt(client, delivery(f"http://127.0.0.1:{free_port()}/hook"), [SECRET], 2.0)
    assert not attempt.succeeded
    assert (attempt.status_code, attempt.error) == (None, "connection refused")


async def test_timeout_bounds_the_whole_exchange(client: httpx.AsyncClient, receiver: WebhookReceiver) -> None:
    receiver.script.append(Route(status=200, delay_s=0.8))
    attempt = await send_attempt(client, delivery(receiver.url("/hook")), [SECRET], 0.3)
    assert not attempt.succeeded
    assert (attempt.status_code, attempt.error) == (None, "timeout after 0.3s")
    assert attempt.latency_ms < 700
    await asyncio.sleep(0.6)  # let the receiver's late answer fail inside this test, not after it


async def test_forbidden_address_is_an_attempt_error(receiver: WebhookReceiver) -> None:
    async with safe_client(UrlPolicy(), timeout=2.0, follow_redirects=False) as strict:
        attempt = await send_attempt(strict, delivery(receiver.url("/hook")), [SECRET], 2.0)
    assert not attempt.succeeded and attempt.status_code is None
    assert "non-public address" in (attempt.error or "")
    assert receiver.received == []
