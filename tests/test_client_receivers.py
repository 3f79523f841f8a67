"""The receivers of docs/client.md (examples/receivers/) on real HTTP servers: a webhook from
the real stack is applied once; a retry of it, an older state and a forgery are not. The docs
show the files as they are. Flask is not in the lock: its receiver runs where Flask is installed."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

import sightwire_client as sw
from notifier.signing import signature_headers
from serve_app.local import free_port
from serve_app.stack import LocalStack
from tests.conftest import png_bytes
from tests.support.servers import ImageHost

ROOT = Path(__file__).resolve().parent.parent
RECEIVERS = ROOT / "examples" / "receivers"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, RECEIVERS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def serve_fastapi(app: Any, port: int) -> Callable[[], None]:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)

    def stop() -> None:
        server.should_exit = True
        thread.join(10)

    return stop


def serve_flask(app: Any, port: int) -> Callable[[], None]:
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", port, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop() -> None:
        server.shutdown()

    return stop


FRAMEWORKS = {"fastapi": ("fastapi_receiver", serve_fastapi), "flask": ("flask_receiver", serve_flask)}


@pytest.fixture(params=sorted(FRAMEWORKS))
def framework(request: pytest.FixtureRequest) -> str:
    pytest.importorskip(request.param, reason=f"{request.param} is not installed here (not in the lock)")
    return request.param


@pytest.fixture
def applied() -> list[sw.WebhookEvent]:
    return []


@pytest.fixture
def receiver_url(framework: str, api_key: str, stack: LocalStack, applied: list[sw.WebhookEvent]) -> Iterator[str]:
    module, serve = FRAMEWORKS[framework]
    with sw.Client(api_key, base_url=stack.url) as client:
        secrets = client.webhook_secret().all
    port = free_port()
    stop = serve(load(module).create_app(secrets, applied.append), port)
    yield f"http://127.0.0.1:{port}/hooks"
    stop()


@pytest.mark.integration
def test_a_receiver_applies_each_webhook_once_and_only_newer_states(
    stack: LocalStack, api_key: str, image_host: ImageHost, receiver_url: str, applied: list[sw.WebhookEvent]
) -> None:
    with sw.Client(api_key, base_url=stack.url) as client:
        image = client.submit_image(image_host.put("/receiver/one.png", png_bytes(seed=80)), ["object_detection"],
                                    webhook_url=receiver_url)
        deadline = time.monotonic() + 60
        while not applied:
            assert time.monotonic() < deadline, "the webhook was not applied"
            time.sleep(0.05)
        [event] = applied
        assert event.type is sw.EventType.IMAGE_COMPLETED and event.image().id == image.id

        [delivery] = client.deliveries(image)
        client.retry_delivery(delivery.id)  # the same webhook-id again: answered 2xx, not applied
        deadline = time.monotonic() + 30
        while len(client.get_delivery(delivery.id).attempt_log) < 2:
            assert time.monotonic() < deadline, "the retry was not sent"
            time.sleep(0.05)
        assert {a.status_code for a in client.get_delivery(delivery.id).attempt_log} == {204}
        secret = client.webhook_secret().secret

    older = json.dumps({"type": "image.updated", "timestamp": "2026-01-01T00:00:00Z",
                        "data": {**event.data, "sequence": event.sequence - 1}})
    headers = signature_headers([secret], "msg_older", int(time.time()), older)
    assert httpx.post(receiver_url, content=older, headers=headers).status_code == 204
    forged = {**headers, "webhook-signature": "v1,AAAA"}
    assert httpx.post(receiver_url, content=older, headers=forged).status_code == 400
    assert applied == [event]


def test_the_docs_show_the_receivers_as_they_are() -> None:
    docs = (ROOT / "docs" / "client.md").read_text()
    for module, _ in FRAMEWORKS.values():
        assert (RECEIVERS / f"{module}.py").read_text() in docs, f"docs/client.md has an old copy of {module}.py"
