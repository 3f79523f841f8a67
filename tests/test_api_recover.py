"""``POST /v1/endpoints/recover`` and ``endpoint.disabled`` (issue 12).

On the session's real stack with a loopback receiver that fails chosen messages: one delivery
uses up its retries while others succeed (so the breaker stays closed and it ends ``failed``),
then five failures in a row open the breaker and hold the next. Recover sends both, once each.
An endpoint answering 410 is disabled: the org's operations webhook hears of it, once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler

import httpx
import pytest
from standardwebhooks import Webhook

from core.store import Store
from tests.support.servers import Received, Route, WebhookReceiver
from tests.test_webhooks_api import auth, delivered, received, send_test

pytestmark = pytest.mark.integration
DOWN = Route(b"down", 500, "text/plain")


class FlakyReceiver(WebhookReceiver):
    """Answers 500 to the messages in ``failing`` (by ``webhook-id``), or to all while ``fail_all``.
    While ``fail_next``, the next message it sees joins ``failing`` (its id is not known before it
    is sent, and the notifier may send it before the test could name it)."""

    def __init__(self) -> None:
        super().__init__()
        self.failing: set[str] = set()
        self.fail_all = False
        self.fail_next = False

    def handle(self, request: BaseHTTPRequestHandler, body: bytes) -> None:
        message = request.headers.get("webhook-id")
        with self._lock:
            if self.fail_next:
                self.failing.add(message)
                self.fail_next = False
        fail = self.fail_all or message in self.failing
        with self._lock:
            self.received.append(
                Received(request.path, {k.lower(): v for k, v in request.headers.items()}, body, time.time()))
            self._arrived.notify_all()
        self.respond(request, DOWN if fail else self.default)


@pytest.fixture
def flaky() -> Iterator[FlakyReceiver]:
    server = FlakyReceiver()
    server.start()
    yield server
    server.stop()


async def test_recover_resends_failed_and_held_deliveries(
    api: httpx.AsyncClient, api_key: str, flaky: FlakyReceiver
) -> None:
    url = flaky.url("/flaky")
    before = datetime.now(UTC) - timedelta(seconds=1)

    async def health() -> dict:
        return (await api.get("/v1/endpoints", params={"url": url}, headers=auth(api_key))).json()

    async def recover(since: datetime, target: str = url) -> httpx.Response:
        return await api.post("/v1/endpoints/recover", json={"url": target, "since": since.isoformat()},
                              headers=auth(api_key))

    flaky.fail_next = True
    failed = await send_test(api, api_key, url)
    while (await api.get(f"/v1/deliveries/{failed['id']}", headers=auth(api_key))).json()["status"] == "pending":
        await send_test(api, api_key, url)  # successes in between keep the breaker closed
        await asyncio.sleep(0.4)
    assert flaky.failing == {failed["webhookId"]}  # the first message sent is the one failing
    assert (await delivered(api, api_key, failed["id"]))["status"] == "failed"
    for _ in range(200):  # the successes in between are all sent before everything fails
        if (await health())["pending"] == 0:
            break
        await asyncio.sleep(0.05)

    flaky.fail_all = True
    held = await send_test(api, api_key, url)
    for _ in range(200):
        if (await health())["state"] == "open":
            break
        await asyncio.sleep(0.05)
    assert (await health())["held"] >= 1
    flaky.fail_all = False
    flaky.failing.clear()

    assert (await recover(datetime.now(UTC) + timedelta(seconds=5))).json()["recovered"] == 0  # nothing since
    response = await recover(before)
    assert response.status_code == 200 and response.json() == {"url": url, "recovered": 2}
    for d in (failed, held):
        assert (await delivered(api, api_key, d["id"]))["status"] == "delivered"
    assert (await recover(before)).json()["recovered"] == 0  # delivered ones are not sent again
    assert (await recover(before, flaky.url("/never"))).status_code == 404


async def test_disabled_endpoint_tells_the_operations_webhook_and_refuses_recover(
    api: httpx.AsyncClient, api_key: str, stack_store: Store, org: str, receiver: WebhookReceiver
) -> None:
    ops = receiver.url("/ops")
    configured = await api.patch("/v1/settings", json={"operationsWebhookUrl": ops}, headers=auth(api_key))
    assert configured.status_code == 200 and configured.json()["operationsWebhookUrl"] == ops
    refused_url = await api.patch("/v1/settings", json={"operationsWebhookUrl": "http://169.254.169.254/"},
                                  headers=auth(api_key))
    assert refused_url.status_code == 422  # the URL policy applies

    gone = receiver.url("/gone")
    receiver.script.append(Route(b"gone", 410, "text/plain"))
    await send_test(api, api_key, gone)
    [notice] = await received(receiver, 1, "/ops")
    secret = (await stack_store.accounts.webhook_secrets(org))[0]
    event = Webhook(secret).verify(notice.body, notice.headers)
    assert event["type"] == "endpoint.disabled"
    assert event["data"]["url"] == gone and event["data"]["state"] == "disabled"
    assert event["data"]["disabledReason"] == "gone" and event["data"]["lastStatusCode"] == 410
    health = (await api.get("/v1/endpoints", params={"url": gone}, headers=auth(api_key))).json()
    assert health["state"] == "disabled" and health["disabledReason"] == "gone" and health["lastStatusCode"] == 410

    refused = await api.post("/v1/endpoints/recover", json={"url": gone, "since": "2020-01-01T00:00:00Z"},
                             headers=auth(api_key))
    assert refused.status_code == 409 and refused.json()["type"].endswith("/endpoint-disabled")
    await asyncio.sleep(0.3)
    assert sum(r.path == "/ops" for r in receiver.received) == 1  # once per disabling
