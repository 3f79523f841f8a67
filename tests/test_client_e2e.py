"""The light client against the real stack (Serve, tiny models, Redis, the notifier): submit,
wait, read, list, deliveries and redelivery, webhooks verified with ``verify_webhook``,
groups, secrets, test events and typed errors — sync and async."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import pytest

import sightwire_client as sw
from serve_app.stack import LocalStack
from tests.conftest import png_bytes
from tests.support.servers import ImageHost, Received, WebhookReceiver

pytestmark = pytest.mark.integration


def until(check: Callable[[], object], timeout_s: float = 30.0, what: str = "condition") -> object:
    """Poll ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        assert time.monotonic() < deadline, f"{what} not met in {timeout_s}s"
        time.sleep(0.05)
    return result


def arrivals(receiver: WebhookReceiver, path: str, count: int = 1, kind: str | None = None) -> list[Received]:
    """The webhooks at ``path`` (of type ``kind``), once ``count`` of them have arrived."""
    def wanted(received: Received) -> bool:
        return received.path == path and (kind is None or json.loads(received.body)["type"] == kind)

    got = receiver.wait_for(lambda rs: sum(map(wanted, rs)) >= count, 60)
    return [r for r in got if wanted(r)]


def test_submit_wait_get_deliveries_and_a_verified_webhook(
    stack: LocalStack, api_key: str, image_host: ImageHost, receiver: WebhookReceiver
) -> None:
    url = image_host.put("/client/one.png", png_bytes(80, 60, seed=41))
    hook = receiver.url("/client-one")
    with sw.Client(api_key, base_url=stack.url) as client:
        secret = client.webhook_secret()
        # ``wait=`` asks the server to hold the POST (Prefer: wait); one that does not answers 202 at once.
        image = client.submit_image(url, ["object_detection", "room_classification"], webhook_url=hook,
                                    metadata={"listing": "L-1"}, external_id="photo-1", wait=20)
        assert image.id.startswith("img_") and image.external_id == "photo-1" and image.metadata == {"listing": "L-1"}
        done = client.wait(image, timeout=120)
        assert done.status is sw.Status.COMPLETE and done.width == 80 and done.height == 60
        assert done.models["object_detection"].status is sw.ModelStatus.COMPLETE
        assert "detections" in (done.models["object_detection"].result or {})
        assert client.get_image(image.id).sequence == done.sequence
        assert image.id in [i.id for _, i in zip(range(20), client.list_images(page_size=5), strict=False)]

        [hit] = arrivals(receiver, "/client-one")
        event = sw.verify_webhook(hit.body, hit.headers, secret.all)
        assert event.type is sw.EventType.IMAGE_COMPLETED and event.id == hit.headers["webhook-id"]
        assert event.image().id == image.id and event.sequence == done.sequence

        [delivery] = client.deliveries(image)
        assert delivery.webhook_id == event.id and delivery.url == hook
        delivered = until(lambda: (d := client.get_delivery(delivery.id)).status is sw.DeliveryStatus.DELIVERED and d,
                          what="delivery logged")
        assert delivered.attempt_log[0].status_code == 200 and delivered.attempt_log[0].succeeded

        again = client.retry_delivery(delivery.id)
        assert again.id == delivery.id and again.webhook_id == event.id
        _, repeat = arrivals(receiver, "/client-one", 2)
        assert sw.verify_webhook(repeat.body, repeat.headers, secret.secret).id == event.id  # same webhook-id

        health = client.endpoint_health(hook)
        assert health.state is sw.EndpointState.CLOSED and health.delivered >= 1
        assert hook in [e.url for e in client.list_endpoints()]
        assert {m.name for m in client.list_models()} >= {"object_detection", "room_classification"}


async def test_async_client_runs_a_group_and_iterates_its_images(
    stack: LocalStack, api_key: str, image_host: ImageHost, receiver: WebhookReceiver
) -> None:
    urls = [image_host.put(f"/client/group-{i}.png", png_bytes(64, 48, seed=50 + i)) for i in range(2)]
    hook = receiver.url("/client-group")
    async with sw.AsyncClient(api_key, base_url=stack.url) as client:
        secret = await client.webhook_secret()
        group = await client.submit_group(
            [urls[0], sw.NewImage(url=urls[1], external_id="second"), {"url": image_host.url("/client/gone.png")}],
            ["object_detection"], webhook_url=hook, metadata={"listing": "L-2"},
        )
        assert group.counts.total == 3 and group.metadata == {"listing": "L-2"}
        finished = await client.wait(group, timeout=120)
        assert finished.status is sw.Status.PARTIAL and (finished.counts.complete, finished.counts.failed) == (2, 1)

        images = [image async for image in client.iter_group_images(group.id, page_size=2)]
        assert [i.url for i in images][:2] == urls and images[1].external_id == "second"
        assert images[2].status is sw.Status.FAILED and images[2].error and images[2].error.code == "http_error"
        with pytest.raises(sw.ImageNotRunnable) as refused:
            await client.add_models(images[2].id, ["room_classification"])
        assert refused.value.status == 409 and "failed to load" in (refused.value.detail or "")

        [hit] = await asyncio.to_thread(arrivals, receiver, "/client-group", 1, "group.completed")
        event = sw.verify_webhook(hit.body, hit.headers, secret.all)
        assert event.type is sw.EventType.GROUP_COMPLETED and event.group().counts.failed == 1

        grown = await client.add_group_images(group.id, [image_host.put("/client/group-3.png", png_bytes(seed=53))])
        assert grown.counts.total == 4
        regrown = await client.wait(grown.id, timeout=120)
        assert isinstance(regrown, sw.Group) and regrown.counts.complete == 3
        logged = await client.deliveries(group)
        assert {d.event_type for d in logged} >= {sw.EventType.GROUP_COMPLETED}


async def test_errors_from_the_real_server_are_typed(stack: LocalStack, api_key: str, image_host: ImageHost) -> None:
    async with sw.AsyncClient(api_key, base_url=stack.url) as client:
        with pytest.raises(sw.NotFound) as missing:
            await client.get_image("img_0000")
        assert missing.value.status == 404 and missing.value.type.endswith("/not-found")
        assert "img_0000" in (missing.value.detail or "") and missing.value.instance == "/v1/images/img_0000"
        with pytest.raises(sw.InvalidRequest) as invalid:
            await client.submit_image(image_host.url("/x.png"), ["no_such_model"])
        assert invalid.value.errors[0]["field"] == "models" and "no_such_model" in invalid.value.errors[0]["message"]
        with pytest.raises(sw.InvalidRequest) as refused:
            await client.send_test_event("http://169.254.169.254/hook")
        assert refused.value.errors[0]["field"] == "url"
        with pytest.raises(sw.NotFound):
            await client.deliveries("grp_0000")
    async with sw.AsyncClient("sw_not_a_key", base_url=stack.url) as stranger:
        with pytest.raises(sw.Unauthorized) as unknown:
            await stranger.list_models()
        assert unknown.value.title == "Invalid API key"


async def test_rotation_and_test_events_verify_with_old_and_new_secrets(
    stack: LocalStack, api_key: str, receiver: WebhookReceiver
) -> None:
    hook = receiver.url("/client-test")
    async with sw.AsyncClient(api_key, base_url=stack.url) as client:
        old = (await client.webhook_secret()).secret
        rotated = await client.rotate_webhook_secret(grace_seconds=60)
        assert rotated.secret != old and [p.secret for p in rotated.previous] == [old]
        sent = await client.send_test_event(hook)
        assert sent.event_type is sw.EventType.TEST and sent.status is sw.DeliveryStatus.PENDING
        [hit] = await asyncio.to_thread(arrivals, receiver, "/client-test")
        for secret in (old, rotated.secret):  # two signatures during the grace period
            assert sw.verify_webhook(hit.body, hit.headers, secret).type is sw.EventType.TEST
        enabled = await client.enable_endpoint(hook)
        assert enabled.released == 0 and enabled.state is sw.EndpointState.CLOSED


async def test_cancel(stack: LocalStack, api_key: str, image_host: ImageHost) -> None:
    """``POST /v1/images/{id}/cancel`` through the client: the record comes back canceled (or
    finished, when the image was faster than the cancel) and is final."""
    async with sw.AsyncClient(api_key, base_url=stack.url) as client:
        url = image_host.put("/client/cancel.png", png_bytes(seed=60))
        image = await client.submit_image(url, ["object_detection"])
        canceled = await client.cancel_image(image.id)
        assert canceled.id == image.id and (canceled.status is sw.Status.CANCELED or canceled.is_finished)
        assert (await client.wait(canceled, timeout=60)).is_finished
        again = await client.cancel_image(image.id)  # a no-op answering the final record
        assert again.status is canceled.status and again.sequence == canceled.sequence
        group = await client.submit_group([url, url], ["object_detection"])
        stopped = await client.cancel_group(group.id)
        assert stopped.is_finished and stopped.counts.pending == 0
