"""``POST /v1/endpoints/recover`` (issue 12): re-send what failed or is held, since a time.

On the session's real stack with a loopback receiver that fails chosen messages: one delivery
uses up its retries while others succeed (so the breaker stays closed and it ends ``failed``),
then five failures in a row open the breaker and hold the next. Recover sends both, once each.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler

import httpx
import pytest

from tests.support.servers import Received, Route, WebhookReceiver
from tests.test_webhooks_api import auth, delivered, send_test

pytestmark = pytest.mark.integration
DOWN = Route(b"down", 500, "text/plain")


class FlakyReceiver(WebhookReceiver):
    """Answers 500 to the messages in ``failing`` (by ``webhook-id``), or to all while ``fail_all``."""

    def __init__(self) -> None:
        super().__init__()
        self.failing: set[str] = set()
        self.fail_all = False

    def handle(self, request: BaseHTTPRequestHandler, body: bytes) -> None:
        fail = self.fail_all or request.headers.get("webhook-id") in self.failing
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

    failed = await send_test(api, api_key, url)
    flaky.failing.add(failed["webhookId"])
    while (await api.get(f"/v1/deliveries/{failed['id']}", headers=auth(api_key))).json()["status"] == "pending":
        await send_test(api, api_key, url)  # successes in between keep the breaker closed
        await asyncio.sleep(0.4)
    assert (await delivered(api, api_key, failed["id"]))["status"] == "failed"

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


async def test_recover_on_a_disabled_endpoint_is_409(
    api: httpx.AsyncClient, api_key: str, receiver: WebhookReceiver
) -> None:
    gone = receiver.url("/gone")
    receiver.script.append(Route(b"gone", 410, "text/plain"))
    await send_test(api, api_key, gone)
    for _ in range(200):
        state = (await api.get("/v1/endpoints", params={"url": gone}, headers=auth(api_key))).json().get("state")
        if state == "disabled":
            break
        await asyncio.sleep(0.05)
    refused = await api.post("/v1/endpoints/recover", json={"url": gone, "since": "2020-01-01T00:00:00Z"},
                             headers=auth(api_key))
    assert refused.status_code == 409 and refused.json()["type"].endswith("/endpoint-disabled")
