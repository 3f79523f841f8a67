"""``sightwire demo``: the whole flow on one machine, offline, with the tiny models.

Starts Redis, Ray and the Serve app; serves the bundled sample images and runs a webhook
receiver, both on loopback; creates an API key; submits an image through the light client
(``sightwire_client``); waits for the signed webhook, verifies it with the reference
``standardwebhooks`` library and prints it; stops everything.
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

from standardwebhooks import Webhook

from core.settings import Settings
from core.store import Store
from serve_app.local import free_port
from serve_app.stack import LocalStack
from sightwire_client import Client

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
    """Create a key (on the store: no HTTP route makes keys), then do what an integrator does,
    through the light client: read the signing secret, submit, receive and verify the webhook."""
    async def create_key() -> str:
        store = Store.from_settings(stack.settings)
        try:
            return await store.accounts.create_api_key("demo")
        finally:
            await store.close()

    key = asyncio.run(create_key())
    print(f"API ready at {stack.url}; created an API key for org 'demo'", flush=True)
    with Client(key, base_url=stack.url) as sightwire:
        secret = sightwire.webhook_secret().secret
        image = sightwire.submit_image(
            f"http://127.0.0.1:{image_port}/kitchen.jpg",
            ["object_detection", "room_classification", "condition_score", "quality_score"],
            webhook_url=f"http://127.0.0.1:{receiver_port}/hooks/sightwire",
            metadata={"listing": "demo-1"},
        )
    print(f"submitted {image.id} ({image.status}) with sightwire_client.Client.submit_image", flush=True)
    try:
        headers, body = inbox.get(timeout=WEBHOOK_WAIT_S)
    except queue.Empty:
        print(f"FAILED: no webhook within {WEBHOOK_WAIT_S}s")
        return 1
    Webhook(secret).verify(body, headers)
    print(f"webhook received: id={headers['webhook-id']}  signature verified (standardwebhooks)")
    print(json.dumps(json.loads(body), indent=2))
    return 0
