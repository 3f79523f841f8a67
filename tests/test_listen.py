"""``sightwire listen`` end to end: the real CLI in its own process, the real stack's notifier
delivering to it, a second loopback receiver behind ``--forward-to``."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

import sightwire_client as sw
from notifier.signing import signature_headers
from serve_app.problems import invalid
from serve_app.stack import LocalStack
from sightwire_client.listen import SECRET_REFRESH_S, Listener, ListenOptions, run, serve
from tests.conftest import png_bytes
from tests.support.servers import ImageHost, Route, WebhookReceiver

ROOT = Path(__file__).resolve().parent.parent
CLIENT_ROOT = Path(sw.__file__).resolve().parent.parent


@dataclass
class Listening:
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    url: str = ""

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()

    def wait_for(self, predicate: Callable[[list[str]], object], timeout_s: float = 60.0) -> list[str]:
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while not predicate(self.lines):
                remaining = deadline - time.monotonic()
                assert remaining > 0 and self.process.poll() is None, "\n".join(self.lines)
                self.changed.wait(min(remaining, 0.5))
            return list(self.lines)


@contextmanager
def listen(stack: LocalStack, key: str, *options: str) -> Iterator[Listening]:
    """``sightwire listen`` on a free port; stopped with SIGINT, as a user would."""
    path = os.pathsep.join(p for p in (str(ROOT), str(CLIENT_ROOT), os.environ.get("PYTHONPATH")) if p)
    process = subprocess.Popen(
        [sys.executable, "-m", "serve_app.cli", "listen", "--api-url", stack.url, "--api-key", key, "--port", "0",
         *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": path},
    )
    listening = Listening(process)
    threading.Thread(target=listening.read, daemon=True).start()
    try:
        banner = listening.wait_for(lambda lines: any(line.startswith("webhookUrl: ") for line in lines), 60)
        listening.url = next(line for line in banner if line.startswith("webhookUrl: ")).split(" ", 1)[1]
        yield listening
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0, "\n".join(listening.lines)


def events(lines: list[str], kind: str) -> list[str]:
    return [line for line in lines if f"  {kind}  " in line]


def body_under(lines: list[str], kind: str) -> dict | None:
    """The JSON printed under the first ``kind`` line, once all of it has been read."""
    found = events(lines, kind)
    if not found:
        return None
    start = lines.index(found[0]) + 1
    end = next((i for i in range(start, len(lines)) if lines[i] == "}"), None)
    return None if end is None or lines[start] != "{" else json.loads("\n".join(lines[start:end + 1]))


@pytest.mark.integration
def test_listen_verifies_prints_and_forwards_with_the_original_headers(
    stack: LocalStack, api_key: str, image_host: ImageHost, receiver: WebhookReceiver
) -> None:
    receiver.default = Route(b"taken", 201, "text/plain")  # what the notifier must be told
    with sw.Client(api_key, base_url=stack.url) as client, \
            listen(stack, api_key, "--forward-to", receiver.url("/hooks"), "--print-body", "--test") as listening:
        assert listening.url.startswith("http://127.0.0.1:") and listening.url.endswith("/webhooks")
        image = client.submit_image(image_host.put("/listen/one.png", png_bytes(seed=70)), ["object_detection"],
                                    webhook_url=listening.url)
        lines = listening.wait_for(lambda got: events(got, "webhook.test") and body_under(got, "image.completed"))

        [line] = events(lines, "image.completed")
        assert f"  {image.id}  complete  seq " in line and line.endswith("]") and "-> 201" in line
        seconds = float(re.search(r"  ([0-9.]+)s since created", line).group(1))  # type: ignore[union-attr]
        assert seconds >= 0
        printed = body_under(lines, "image.completed")  # --print-body: the JSON right under its line
        assert printed is not None and printed["type"] == "image.completed" and printed["data"]["id"] == image.id
        [test_line] = events(lines, "webhook.test")  # --test: its data has no status and no createdAt
        assert re.search(r"  webhook\.test  tst_\w+  -  seq 1  - since created  -> 201  \[msg_\w+\]$", test_line)

        forwarded = receiver.wait_for(lambda got: len(got) >= 2)
        [hit] = [r for r in forwarded if json.loads(r.body)["type"] == "image.completed"]
        assert hit.path == "/hooks" and hit.headers["user-agent"].startswith("Sightwire-Webhooks/")
        assert f"[{hit.headers['webhook-id']}]" in line
        event = sw.verify_webhook(hit.body, hit.headers, client.webhook_secret().all)  # untouched, still valid
        assert event.image().id == image.id

        def logged() -> sw.Delivery | None:
            [delivery] = client.deliveries(image)
            return delivery if delivery.attempt_log else None

        delivery = wait_until(logged)
        assert delivery.attempt_log[0].status_code == 201 and delivery.status is sw.DeliveryStatus.DELIVERED


@pytest.mark.integration
def test_listen_answers_the_status_asked_for_and_the_notifier_retries(
    stack: LocalStack, api_key: str, image_host: ImageHost
) -> None:
    with sw.Client(api_key, base_url=stack.url) as client, listen(stack, api_key, "--status", "500") as listening:
        image = client.submit_image(image_host.put("/listen/retry.png", png_bytes(seed=71)), ["object_detection"],
                                    webhook_url=listening.url)
        lines = listening.wait_for(lambda got: len(events(got, "image.completed")) >= 2)
        first, second = events(lines, "image.completed")[:2]
        assert "-> 500" in first and "(attempt" not in first and second.endswith("(attempt 2)")
        assert first.split("[")[1].split("]")[0] == second.split("[")[1].split("]")[0]  # the same webhook-id

        def retried() -> sw.Delivery | None:
            [delivery] = client.deliveries(image)
            return delivery if len(delivery.attempt_log) >= 2 else None

        delivery = wait_until(retried)
        assert {a.status_code for a in delivery.attempt_log} == {500}
        assert delivery.status is not sw.DeliveryStatus.DELIVERED

        forged = httpx.post(listening.url, content=b'{"type":"image.completed"}', timeout=10,
                            headers={"webhook-id": "msg_forged", "webhook-timestamp": str(int(time.time())),
                                     "webhook-signature": "v1,AAAA"})
        assert forged.status_code == 400
        listening.wait_for(lambda got: any("REJECTED (no_matching_signature)" in text for text in got))


def wait_until(check: Callable[[], sw.Delivery | None], timeout_s: float = 30.0) -> sw.Delivery:
    deadline = time.monotonic() + timeout_s
    while (found := check()) is None:
        assert time.monotonic() < deadline, "the delivery log did not show it in time"
        time.sleep(0.1)
    return found


def test_listen_explains_how_to_allow_a_refused_loopback_url() -> None:
    """A server whose URL policy refuses loopback answers ``--test`` with a 422 on ``url``;
    listen says which setting allows it. The API here is a loopback server answering as the real one."""
    refused = invalid("url", "127.0.0.1 resolves to 127.0.0.1, a non-public address that is not allowlisted")
    api = WebhookReceiver().start()
    rendered = refused.response("/v1/webhooks/test")
    api.script = [Route(json.dumps({"secret": "whsec_" + "A" * 44}).encode(), 200, "application/json"),
                  Route(rendered.body, 422, "application/problem+json")]
    out = io.StringIO()
    try:
        code = run(ListenOptions(api_key="sw_key", api_url=api.url(""), port=0, test=True), out=out,
                   stop=threading.Event())
    finally:
        api.stop()
    assert code == 2
    assert "SIGHTWIRE_ALLOW_PRIVATE_CIDRS=127.0.0.0/8" in out.getvalue() and "not allowlisted" in out.getvalue()
    assert [r.path for r in api.received] == ["/v1/webhook-secret", "/v1/webhooks/test"]


def test_a_message_no_secret_verifies_rereads_the_secret_and_survives_a_failing_api() -> None:
    secret = "whsec_" + base64.b64encode(b"s" * 32).decode()
    rotated = "whsec_" + base64.b64encode(b"r" * 32).decode()
    api = WebhookReceiver().start()
    api.script = [Route(json.dumps({"secret": secret}).encode(), 200, "application/json"),
                  Route(json.dumps({"secret": rotated}).encode(), 200, "application/json"),
                  Route(b"down", 503, "text/plain")]
    out = io.StringIO()
    options = ListenOptions(api_key="sw_key", api_url=api.url(""), port=0)
    listener = Listener(options, sw.Client("sw_key", base_url=api.url(""), retries=sw.Retries(attempts=1)), out)
    server = serve(listener)
    url = f"http://127.0.0.1:{server.server_address[1]}{options.path}"
    body = json.dumps({"type": "webhook.test", "timestamp": "2026-01-01T00:00:00Z", "data": {"id": "tst_1"}})
    try:
        listener._secrets_read_at -= SECRET_REFRESH_S  # as if it had read the secret a while ago
        signed = signature_headers([rotated], "msg_rotated", int(time.time()), body)
        assert httpx.post(url, content=body, headers=signed).status_code == 200  # the rotated secret, read again
        listener._secrets_read_at -= SECRET_REFRESH_S
        other = signature_headers(["whsec_" + base64.b64encode(b"o" * 32).decode()], "msg_o", int(time.time()), body)
        assert httpx.post(url, content=body, headers=other).status_code == 400  # the API failed: still an answer
    finally:
        server.shutdown()
        listener.close()
        api.stop()
    assert "could not read the signing secret again" in out.getvalue()
    assert "REJECTED (no_matching_signature)" in out.getvalue() and "[msg_rotated]" in out.getvalue()


def test_listen_says_when_its_port_is_taken() -> None:
    api = WebhookReceiver().start()  # holds a port of its own: listen is asked to take that one
    api.script = [Route(json.dumps({"secret": "whsec_" + "A" * 44}).encode(), 200, "application/json")]
    out = io.StringIO()
    try:
        assert run(ListenOptions(api_key="sw_key", api_url=api.url(""), port=api.port), out=out,
                   stop=threading.Event()) == 2
    finally:
        api.stop()
    assert f"cannot listen on 127.0.0.1:{api.port}" in out.getvalue() and "--port" in out.getvalue()


def test_listen_stops_with_a_clear_error_for_a_refused_key() -> None:
    api = WebhookReceiver().start()
    api.script = [Route(json.dumps({"type": "unauthorized", "title": "Invalid API key", "status": 401}).encode(), 401,
                        "application/problem+json")]
    out = io.StringIO()
    try:
        assert run(ListenOptions(api_key="sw_bad", api_url=api.url(""), port=0), out=out, stop=threading.Event()) == 2
    finally:
        api.stop()
    assert "error: 401 Invalid API key" in out.getvalue()
