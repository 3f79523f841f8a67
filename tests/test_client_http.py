"""``Client`` and ``AsyncClient`` over real HTTP against a scripted loopback server: the same
requests, the same retries, the same typed errors from both (each test runs on each client)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

import sightwire_client as sw
from serve_app.problems import Problem, invalid
from sightwire_client._protocol import Retries
from tests.support.servers import Route, WebhookReceiver

IMAGE = {"id": "img_1", "object": "image", "url": "http://x/a.png", "models": {}, "sequence": 1, "status": "queued",
         "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z"}
FAST = Retries(attempts=3, backoff_s=0.01, max_backoff_s=0.02)


def answer(body: Any, status: int = 200, **headers: str) -> Route:
    return Route(json.dumps(body).encode(), status, "application/json", headers)


class Either:
    """Calls a method on a sync client (in a thread) or an async one, the same way."""

    def __init__(self, client: sw.Client | sw.AsyncClient) -> None:
        self.client = client

    async def __call__(self, name: str, *args: Any, **kwargs: Any) -> Any:
        method = getattr(self.client, name)
        if isinstance(self.client, sw.AsyncClient):
            return await method(*args, **kwargs)
        return await asyncio.to_thread(method, *args, **kwargs)

    async def items(self, name: str, *args: Any, **kwargs: Any) -> list[Any]:
        if isinstance(self.client, sw.AsyncClient):
            return [item async for item in getattr(self.client, name)(*args, **kwargs)]
        return await asyncio.to_thread(lambda: list(getattr(self.client, name)(*args, **kwargs)))


@pytest.fixture
def server() -> Iterator[WebhookReceiver]:
    scripted = WebhookReceiver().start()
    yield scripted
    scripted.stop()


@pytest.fixture(params=["sync", "async"])
async def api(request: pytest.FixtureRequest, server: WebhookReceiver) -> AsyncIterator[Either]:
    options = {"base_url": server.url(""), "retries": FAST, "polling": sw.Polling(first_s=0.01, max_s=0.02)}
    if request.param == "sync":
        with sw.Client("sw_key", **options) as client:
            yield Either(client)
    else:
        async with sw.AsyncClient("sw_key", **options) as client:
            yield Either(client)


def problem(raised: Problem) -> Route:
    """An error exactly as the server renders it."""
    rendered = raised.response("/v1/x")
    return Route(rendered.body, raised.status, rendered.media_type or "", raised.headers or {})


async def test_a_post_sends_key_body_and_one_idempotency_key_across_retries(api: Either,
                                                                             server: WebhookReceiver) -> None:
    server.script = [problem(Problem(503, "store-unavailable", "busy", headers={"Retry-After": "0"})),
                     answer(IMAGE, 202)]
    image = await api("submit_image", "http://x/a.png", ["object_detection"], webhook_url="http://h/",
                      metadata={"k": 1}, webhook_events=[sw.EventType.IMAGE_COMPLETED])
    assert isinstance(image, sw.Image) and image.id == "img_1" and image.status is sw.Status.QUEUED
    first, retry = server.received
    assert first.path == retry.path == "/v1/images"
    assert first.headers["authorization"] == "Bearer sw_key" and "sightwire-client/" in first.headers["user-agent"]
    assert first.headers["idempotency-key"] == retry.headers["idempotency-key"] and first.headers["idempotency-key"]
    assert json.loads(first.body) == {"url": "http://x/a.png", "models": ["object_detection"],
                                      "webhookUrl": "http://h/", "webhookEvents": ["image.completed"],
                                      "metadata": {"k": 1}}

    server.script = [answer(IMAGE, 202), answer(IMAGE, 202)]
    await api("submit_image", "http://x/a.png", ["m"])
    await api("submit_image", "http://x/a.png", ["m"], idempotency_key="mine")
    generated, given = server.received[2:]
    assert generated.headers["idempotency-key"] not in (first.headers["idempotency-key"], "mine")
    assert given.headers["idempotency-key"] == "mine"


async def test_errors_arrive_typed_with_the_problem_fields(api: Either, server: WebhookReceiver) -> None:
    server.script = [problem(invalid("models", "unknown model(s) ['nope']"))]
    with pytest.raises(sw.InvalidRequest) as caught:
        await api("submit_image", "http://x/a.png", ["nope"])
    assert caught.value.status == 422 and caught.value.errors[0]["field"] == "models"
    assert len(server.received) == 1  # a 422 is not retried

    server.script = [problem(Problem(429, "rate-limited", "Slow down", headers={"Retry-After": "0"}))] * 3
    with pytest.raises(sw.RateLimited) as limited:
        await api("get_image", "img_1")
    assert limited.value.retry_after == 0.0 and len(server.received) == 4  # three attempts in all


async def test_a_success_that_is_not_a_record_is_an_invalid_response(api: Either, server: WebhookReceiver) -> None:
    server.script = [Route(b"<html>captive portal</html>", 200, "text/html")]
    with pytest.raises(sw.InvalidResponse, match="GET /v1/images/img_1 answered 200 with a body that is not a"):
        await api("get_image", "img_1")


async def test_an_unreachable_server_is_a_transport_error(api: Either, server: WebhookReceiver) -> None:
    server.stop()
    with pytest.raises(sw.TransportError):
        await api("get_image", "img_1")


async def test_wait_uses_prefer_wait_and_stops_when_finished(api: Either, server: WebhookReceiver) -> None:
    server.script = [answer({**IMAGE, "status": "processing"}), answer({**IMAGE, "status": "processing"},
                     **{"Preference-Applied": "wait=5"}), answer({**IMAGE, "status": "complete", "sequence": 3})]
    image = await api("wait", "img_1", timeout=5)
    assert image.status is sw.Status.COMPLETE and image.sequence == 3
    assert [r.path for r in server.received] == ["/v1/images/img_1"] * 3
    assert all(r.headers["prefer"].startswith("wait=") for r in server.received)


async def test_wait_on_a_group_polls_the_group(api: Either, server: WebhookReceiver) -> None:
    group = {**IMAGE, "id": "grp_1", "object": "group", "models": ["m"], "counts": {"total": 2, "pending": 1},
             "status": "processing"}
    server.script = [answer(group), answer({**group, "status": "complete", "counts": {"total": 2, "complete": 2}})]
    done = await api("wait", "grp_1", timeout=5)
    assert isinstance(done, sw.Group) and done.counts.complete == 2
    assert {r.path for r in server.received} == {"/v1/groups/grp_1"}


async def test_list_images_follows_cursors_page_by_page(api: Either, server: WebhookReceiver) -> None:
    server.script = [answer({"data": [{**IMAGE, "id": "img_a"}, {**IMAGE, "id": "img_b"}], "nextCursor": "c2"}),
                     answer({"data": [{**IMAGE, "id": "img_c"}], "nextCursor": None})]
    images = await api.items("iter_group_images", "grp_9", page_size=2)
    assert [i.id for i in images] == ["img_a", "img_b", "img_c"]
    first, second = (r.path for r in server.received)
    assert first == "/v1/images?groupId=grp_9&limit=2" and second == "/v1/images?groupId=grp_9&limit=2&cursor=c2"


async def test_cancel_and_webhook_calls_use_their_paths(api: Either, server: WebhookReceiver) -> None:
    delivery = {"id": "dlv_1", "webhookId": "msg_1", "url": "http://h/", "eventType": "image.completed",
                "resourceId": "img_1", "sequence": 1, "status": "pending", "attempts": 0,
                "createdAt": "2026-01-01T00:00:00Z"}
    server.script = [answer({**IMAGE, "status": "canceled"}), answer({"data": [delivery]}), answer(delivery, 202),
                     answer({"url": "http://h/", "state": "closed", "released": 2}),
                     answer({"secret": "whsec_a", "previous": [{"secret": "whsec_b"}]})]
    assert (await api("cancel_image", "img_1")).status is sw.Status.CANCELED
    assert (await api("deliveries", "img_1"))[0].event_type is sw.EventType.IMAGE_COMPLETED
    assert (await api("retry_delivery", "dlv_1")).id == "dlv_1"
    assert (await api("enable_endpoint", "http://h/")).released == 2
    assert (await api("rotate_webhook_secret", grace_seconds=60)).all == ["whsec_a", "whsec_b"]
    paths = [(r.path, r.body) for r in server.received]
    assert paths == [("/v1/images/img_1/cancel", b""), ("/v1/images/img_1/deliveries?limit=100", b""),
                     ("/v1/deliveries/dlv_1/retry", b""), ("/v1/endpoints/enable", b'{"url":"http://h/"}'),
                     ("/v1/webhook-secret/rotate", b'{"graceSeconds":60}')]
    assert all("idempotency-key" in r.headers for i, r in enumerate(server.received) if i != 1)


async def test_group_cancel_and_retry_use_their_paths(api: Either, server: WebhookReceiver) -> None:
    group = {**IMAGE, "id": "grp_1", "object": "group", "models": ["m"], "counts": {"total": 2, "canceled": 2},
             "status": "canceled"}
    server.script = [answer(group), answer({**group, "status": "processing"}, 202),
                     answer({"type": "https://sightwire.dev/problems/nothing-to-retry", "title": "Nothing to retry",
                             "status": 409}, 409)]
    assert (await api("cancel_group", "grp_1")).status is sw.Status.CANCELED
    assert (await api("retry_group", "grp_1")).status is sw.Status.PROCESSING
    with pytest.raises(sw.NothingToRetry) as refused:
        await api("retry_group", "grp_1")
    assert refused.value.status == 409
    assert [r.path for r in server.received] == ["/v1/groups/grp_1/cancel"] + ["/v1/groups/grp_1/retry"] * 2


async def test_deadline_is_sent_as_seconds_or_rfc3339(api: Either, server: WebhookReceiver) -> None:
    server.script = [answer(IMAGE, 202), answer(IMAGE, 202)]
    await api("submit_image", "http://x/a.png", ["m"], deadline=30)
    await api("submit_image", "http://x/a.png", ["m"], deadline=datetime(2026, 12, 2, 5, 0, tzinfo=UTC))
    sent = [json.loads(r.body)["deadline"] for r in server.received]
    assert sent == [30, "2026-12-02T05:00:00+00:00"]


def test_a_missing_api_key_is_refused_early(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIGHTWIRE_API_KEY", raising=False)
    with pytest.raises(ValueError, match="SIGHTWIRE_API_KEY"):
        sw.Client()
    monkeypatch.setenv("SIGHTWIRE_API_KEY", "sw_env")
    monkeypatch.setenv("SIGHTWIRE_API_URL", "http://127.0.0.1:9/")
    assert sw.Client().base_url == "http://127.0.0.1:9"
