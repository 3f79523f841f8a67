"""``sightwire images …`` and ``groups …`` against the session stack, in-process, ``--json`` parsed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from serve_app.cli import main
from serve_app.stack import LocalStack
from tests.conftest import png_bytes
from tests.support.servers import ImageHost

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
    assert run_json(capsys, "deliveries", "list", submitted["id"]) == []  # no webhookUrl: nothing sent
    assert main(["endpoints", "show", "http://127.0.0.1:9/never"]) == 1
    assert "never" in capsys.readouterr().err
    assert main(["images", "get", "img_missing"]) == 1
    assert "img_missing" in capsys.readouterr().err
