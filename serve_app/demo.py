"""``sightwire demo``: the whole flow on one machine, offline, with the tiny models.

Starts Redis, Ray and the Serve app; serves the bundled sample images and runs a webhook
receiver, both on loopback; creates an API key; submits an image; waits for the signed webhook,
verifies it with the reference ``standardwebhooks`` library and prints it; stops everything.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import queue
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from standardwebhooks import Webhook

from core.settings import Settings
from core.store import Store
from serve_app.local import free_port
from serve_app.stack import LocalStack

SAMPLES = Path(__file__).parent / "samples"
WEBHOOK_WAIT_S = 180.0
BANNER = """\
Sightwire demo: models profile 'tiny' (real architectures with RANDOM WEIGHTS, built offline).
Their detections are meaningless; they prove the pipeline, not the model. For real models run:
    sightwire serve --models pretrained      (downloads public checkpoints once)
"""


class Quiet:
    def log_message(self, *args: object) -> None:
        pass


def serve_in_thread(server: ThreadingHTTPServer) -> ThreadingHTTPServer:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def webhook_receiver(inbox: queue.Queue[tuple[dict[str, str], bytes]]) -> ThreadingHTTPServer:
    class Receiver(Quiet, BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            inbox.put(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()

    return serve_in_thread(ThreadingHTTPServer(("127.0.0.1", 0), Receiver))


def image_server() -> ThreadingHTTPServer:
    class Images(Quiet, SimpleHTTPRequestHandler):
        pass

    handler = functools.partial(Images, directory=str(SAMPLES))
    return serve_in_thread(ThreadingHTTPServer(("127.0.0.1", 0), handler))


def run_demo(port: int = 0) -> int:
    print(BANNER, flush=True)
    inbox: queue.Queue[tuple[dict[str, str], bytes]] = queue.Queue()
    images, receiver = image_server(), webhook_receiver(inbox)
    with tempfile.TemporaryDirectory(prefix="sightwire-demo-") as data_dir:
        settings = Settings.from_env(
            models="tiny",
            data_dir=Path(data_dir),
            allow_private_cidrs=(ipaddress.ip_network("127.0.0.0/8"),),
        )
        stack = LocalStack(settings, port=port or free_port(), embedded_redis=True, num_cpus=2)
        try:
            print("starting Redis, Ray and the Serve app ...", flush=True)
            stack.start()
            return submit_and_verify(stack, images.server_address[1], receiver.server_address[1], inbox)
        finally:
            print("stopping everything ...", flush=True)
            stack.stop()
            images.shutdown()
            receiver.shutdown()


def submit_and_verify(
    stack: LocalStack, image_port: int, receiver_port: int, inbox: queue.Queue[tuple[dict[str, str], bytes]]
) -> int:
    async def credentials() -> tuple[str, str]:
        store = Store.from_settings(stack.settings)
        try:
            key = await store.accounts.create_api_key("demo")
            return key, (await store.accounts.webhook_secrets("demo"))[0]
        finally:
            await store.close()

    key, secret = asyncio.run(credentials())
    print(f"API ready at {stack.url}; created an API key for org 'demo'", flush=True)
    request = {
        "url": f"http://127.0.0.1:{image_port}/kitchen.jpg",
        "models": ["object_detection", "room_classification", "condition_score", "quality_score"],
        "webhookUrl": f"http://127.0.0.1:{receiver_port}/hooks/sightwire",
        "metadata": {"listing": "demo-1"},
    }
    response = httpx.post(f"{stack.url}/v1/images", json=request,
                          headers={"Authorization": f"Bearer {key}"}, timeout=30)
    print(f"POST /v1/images -> {response.status_code} {response.json()['id']} ({response.json()['status']})")
    response.raise_for_status()
    try:
        headers, body = inbox.get(timeout=WEBHOOK_WAIT_S)
    except queue.Empty:
        print(f"FAILED: no webhook within {WEBHOOK_WAIT_S}s")
        return 1
    Webhook(secret).verify(body, headers)
    print(f"webhook received: id={headers['webhook-id']}  signature verified (standardwebhooks)")
    print(json.dumps(json.loads(body), indent=2))
    return 0
