"""``sightwire images|groups|deliveries|endpoints|secret …`` against the session stack, in-process,
``--json`` parsed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from serve_app.cli import main
from serve_app.stack import LocalStack
from sightwire_client import AsyncClient
from tests.conftest import png_bytes
from tests.support.servers import ImageHost, WebhookReceiver

pytestmark = pytest.mark.integration


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


async def test_images_and_groups_commands(stack: LocalStack, api_key: str, image_host: ImageHost,
                                          capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGHTWIRE_API_KEY", api_key)
    monkeypatch.setenv("SIGHTWIRE_API_URL", stack.url)
    url = image_host.put("/cli.png", png_bytes(seed=7))
    submitted = run_json(capsys, "images", "submit", url, "--models", "object_detection")
    assert submitted["status"] == "queued" and submitted["id"].startswith("img_")
    finished = run_json(capsys, "images", "wait", submitted["id"], "--timeout", "60")
    assert finished["status"] == "complete" and finished["id"] == submitted["id"]
    assert run_json(capsys, "images", "get", submitted["id"])["sequence"] == finished["sequence"]
    group = run_json(capsys, "groups", "submit", url, url, "--models", "object_detection")
    assert group["counts"]["total"] == 2
    assert run_json(capsys, "groups", "status", group["id"])["id"] == group["id"]
    assert run_json(capsys, "groups", "cancel", group["id"])["counts"]["pending"] == 0
    assert main(["groups", "retry", group["id"]]) == 1  # nothing failed: 409
    assert "nothing" in capsys.readouterr().err.lower()
    assert run_json(capsys, "images", "cancel", submitted["id"])["sequence"] == finished["sequence"]  # a no-op
    assert run_json(capsys, "deliveries", "list", submitted["id"]) == []  # no webhookUrl: nothing sent
    assert main(["endpoints", "show", "http://127.0.0.1:9/never"]) == 1
    assert "never" in capsys.readouterr().err
    assert main(["images", "get", "img_missing"]) == 1
    assert "img_missing" in capsys.readouterr().err


async def test_delivery_endpoint_and_secret_commands(stack: LocalStack, api_key: str, image_host: ImageHost,
                                                     receiver: WebhookReceiver, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGHTWIRE_API_KEY", api_key)
    monkeypatch.setenv("SIGHTWIRE_API_URL", stack.url)
    hook = receiver.url("/cli-hooks")
    url = image_host.put("/cli-retry.png", png_bytes(seed=8))
    image = run_json(capsys, "images", "submit", url, "--models", "object_detection", "--webhook-url", hook)
    first = receiver.wait_for(lambda rs: len(rs) >= 1)[0]
    [delivery] = run_json(capsys, "deliveries", "list", image["id"])
    assert delivery["webhookId"] == first.headers["webhook-id"]

    retried = run_json(capsys, "deliveries", "retry", delivery["id"])
    assert retried["id"] == delivery["id"]
    again = receiver.wait_for(lambda rs: len(rs) >= 2)[1]
    assert again.headers["webhook-id"] == first.headers["webhook-id"]  # a redelivery, not a new message

    shown = run_json(capsys, "endpoints", "show", hook)
    assert (shown["url"], shown["state"]) == (hook, "closed")
    enabled = run_json(capsys, "endpoints", "enable", hook)
    assert (enabled["url"], enabled["state"], enabled["released"]) == (hook, "closed", 0)
    assert main(["endpoints", "enable", receiver.url("/never-sent")]) == 1
    assert "never" in capsys.readouterr().err

    async with AsyncClient(api_key, base_url=stack.url) as client:
        old = (await client.webhook_secret()).secret
    rotated = run_json(capsys, "secret", "rotate", "--grace-seconds", "60")
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != old
    assert [p["secret"] for p in rotated["previous"]] == [old] and rotated["previous"][0]["expiresAt"]
    assert main(["secret", "rotate", "--grace-seconds", "0"]) == 0
    assert capsys.readouterr().out.startswith("whsec_")
