"""The demo's flow (``serve_app.demo``) on the session stack: key, secret and submit through the
light client, the signed webhook verified with the reference library."""

from __future__ import annotations

import json
import queue

import pytest

from serve_app.demo import image_server, submit_and_verify, webhook_receiver
from serve_app.stack import LocalStack

pytestmark = pytest.mark.integration


def test_demo_submits_through_the_client_and_verifies_the_webhook(
    stack: LocalStack, capsys: pytest.CaptureFixture[str]
) -> None:
    inbox: queue.Queue[tuple[dict[str, str], bytes]] = queue.Queue()
    images, receiver = image_server(), webhook_receiver(inbox)
    try:
        assert submit_and_verify(stack, images.server_address[1], receiver.server_address[1], inbox) == 0
    finally:
        images.shutdown()
        receiver.shutdown()
    out = capsys.readouterr().out
    assert "with sightwire_client.Client.submit_image" in out and "signature verified" in out
    event = json.loads(out[out.index("\n{") :])
    assert event["data"]["metadata"] == {"listing": "demo-1"} and event["data"]["id"].startswith("img_")
