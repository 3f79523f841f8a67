"""``sightwire listen``: watch your organisation's webhooks arrive while you develop.

A real HTTP receiver on loopback (stdlib ``http.server``). It reads the org's signing secret
through the API with your key, verifies every message, prints one line per event, and either
answers like a receiver would (``--status``, to rehearse the notifier's retries) or forwards
the message untouched — body and original headers, nothing re-signed — to your own endpoint
and answers with its status. It registers nothing on the server; ``--test`` sends one
``webhook.test`` event to it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TextIO

import httpx

from sightwire_client._api import Client
from sightwire_client.errors import (
    InvalidRequest,
    SightwireError,
    VerificationFailure,
    WebhookVerificationError,
)
from sightwire_client.models import WebhookEvent
from sightwire_client.webhooks import DEFAULT_TOLERANCE_S, verify_webhook

ALLOWLIST_HINT = (
    "the server refuses webhook URLs on private addresses such as {host}; start it with "
    "SIGHTWIRE_ALLOW_PRIVATE_CIDRS=127.0.0.0/8 (or listen on an address it may reach, with --host)"
)
# Not passed on when forwarding: they describe this hop, not the message.
HOP_HEADERS = frozenset({"host", "content-length", "connection", "keep-alive", "transfer-encoding", "te",
                         "upgrade", "proxy-connection", "expect"})
PASSED_BACK = ("content-type", "retry-after")  # what the target's answer keeps on its way to the notifier
FORWARD_BODY_LIMIT = 64 * 1024
SECRET_REFRESH_S = 5.0  # at most this often, a message no secret verifies re-reads the secrets (rotation)


@dataclass(frozen=True)
class ListenOptions:
    api_key: str | None = None  # default: SIGHTWIRE_API_KEY
    api_url: str | None = None  # default: SIGHTWIRE_API_URL, else http://127.0.0.1:8000
    host: str = "127.0.0.1"
    port: int = 4242
    path: str = "/webhooks"
    forward_to: str | None = None
    status: int = 200
    print_body: bool = False
    test: bool = False
    tolerance_s: float = DEFAULT_TOLERANCE_S


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


def latency(event: WebhookEvent, now: datetime) -> str:
    """Time since the resource was created (thin payloads and test events carry no ``createdAt``)."""
    created = event.data.get("createdAt")
    try:
        seconds = (now - datetime.fromisoformat(str(created))).total_seconds()
    except (TypeError, ValueError):
        return "-"
    return f"{seconds:.2f}s"


def summary(event: WebhookEvent, attempt: int, answered: int, now: datetime) -> str:
    """One line: time, type, resource id, status, sequence, latency since creation, our answer."""
    status = event.data.get("status", "-")
    again = f"  (attempt {attempt})" if attempt > 1 else ""
    return (f"{now:%H:%M:%S}  {event.type}  {event.resource_id or '-'}  {status}  seq {event.sequence}  "
            f"{latency(event, now)} since created  -> {answered}  [{event.id}]{again}")


class Listener:
    """Verifies, prints and answers (or forwards) each message; the HTTP server calls ``receive``."""

    def __init__(self, options: ListenOptions, client: Client, out: TextIO) -> None:
        self.options = options
        self._client = client
        self._out = out
        self._print_lock = threading.Lock()
        self._attempts: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self._secrets = client.webhook_secret().all
        self._secrets_read_at = time.monotonic()
        self._forward = httpx.Client(timeout=30.0, follow_redirects=False)

    def say(self, line: str) -> None:
        with self._print_lock:
            print(line, file=self._out, flush=True)

    def _count(self, key: str, counter: Counter[str] | None = None) -> int:
        """Handlers run in threads: count under the lock; the new count."""
        counter = self.counts if counter is None else counter
        with self._print_lock:
            counter[key] += 1
            return counter[key]

    def close(self) -> None:
        self._forward.close()
        self._client.close()

    def _verify(self, body: bytes, headers: list[tuple[str, str]]) -> WebhookEvent:
        try:
            return verify_webhook(body, headers, self._secrets, tolerance_s=self.options.tolerance_s)
        except WebhookVerificationError as exc:
            stale = time.monotonic() - self._secrets_read_at > SECRET_REFRESH_S
            if exc.reason is not VerificationFailure.NO_MATCHING_SIGNATURE or not stale:
                raise
            self._secrets_read_at = time.monotonic()
            try:
                self._secrets = self._client.webhook_secret().all  # rotated since we started?
            except SightwireError as unread:
                self.say(f"  could not read the signing secret again: {unread}")
                raise exc from None
        return verify_webhook(body, headers, self._secrets, tolerance_s=self.options.tolerance_s)

    def receive(self, body: bytes, headers: list[tuple[str, str]]) -> Answer:
        now = datetime.now(UTC)
        try:
            event = self._verify(body, headers)
        except WebhookVerificationError as exc:
            self._count("rejected")
            self.say(f"{now:%H:%M:%S}  REJECTED ({exc.reason}): {exc}  -> 400")
            return Answer(400, f"{exc}\n".encode(), (("content-type", "text/plain"),))
        attempt = self._count(event.id, self._attempts)
        target = self.options.forward_to
        answer = self._pass_on(target, body, headers) if target else Answer(self.options.status)
        self._count("verified")
        line = summary(event, attempt, answer.status, now)
        # One write, so that the body stays under its line when events arrive together.
        self.say(f"{line}\n{json.dumps(json.loads(body), indent=2)}" if self.options.print_body else line)
        return answer

    def _pass_on(self, target: str, body: bytes, headers: list[tuple[str, str]]) -> Answer:
        """POST the message as it came to ``target``; its answer is the notifier's answer."""
        passed = [(name, value) for name, value in headers if name.lower() not in HOP_HEADERS]
        try:
            response = self._forward.post(target, content=body, headers=passed)
        except httpx.HTTPError as exc:
            self.say(f"  forward to {target} failed: {exc!r}  -> 502")
            return Answer(502, f"forward failed: {exc}\n".encode(), (("content-type", "text/plain"),))
        kept = tuple((name, response.headers[name]) for name in PASSED_BACK if name in response.headers)
        return Answer(response.status_code, response.content[:FORWARD_BODY_LIMIT], kept)


def serve(listener: Listener) -> ThreadingHTTPServer:
    """The receiver on ``host:port`` (a free port for 0), answering in its own threads."""
    options = listener.options

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            if self.path.split("?")[0] != options.path:
                return self._answer(Answer(404, f"POST to {options.path}\n".encode()))
            self._answer(listener.receive(body, list(self.headers.items())))

        def do_GET(self) -> None:
            self._answer(Answer(200, b"sightwire listen: POST webhooks here\n", (("content-type", "text/plain"),)))

        def _answer(self, answer: Answer) -> None:
            self.send_response(answer.status)
            for name, value in answer.headers:
                self.send_header(name, value)
            self.send_header("content-length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        def log_message(self, *args: object) -> None:
            pass  # the listener prints its own line per event

    server = ThreadingHTTPServer((options.host, options.port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.2,), daemon=True, name="sightwire-listen").start()
    return server


def webhook_url(options: ListenOptions, port: int) -> str:
    host = "127.0.0.1" if options.host in ("", "0.0.0.0") else options.host
    return f"http://{host}:{port}{options.path}"


def send_test(client: Client, url: str, say: Callable[[str], None]) -> bool:
    """``--test``: one ``webhook.test`` event to the receiver; explain a refused loopback URL."""
    try:
        delivery = client.send_test_event(url)
    except InvalidRequest as exc:
        refused_url = any(e.get("field") == "url" for e in exc.errors)
        say(f"error: {exc.detail}" + (f"\n  {ALLOWLIST_HINT.format(host=httpx.URL(url).host)}" if refused_url else ""))
        return False
    except SightwireError as exc:
        say(f"error: could not send the test event: {exc}")
        return False
    say(f"sent a webhook.test event (delivery {delivery.id})")
    return True


def run(options: ListenOptions, out: TextIO = sys.stdout, stop: threading.Event | None = None) -> int:
    """Receive until ``stop`` is set (or SIGINT/SIGTERM, from the main thread); 0, or 2 on an error."""
    try:
        client = Client(options.api_key, base_url=options.api_url)
        listener = Listener(options, client, out)
    except (ValueError, SightwireError) as exc:
        print(f"error: {exc}", file=out, flush=True)
        return 2
    try:
        server = serve(listener)
    except OSError as exc:
        listener.close()
        print(f"error: cannot listen on {options.host}:{options.port} ({exc.strerror}); choose another --port",
              file=out, flush=True)
        return 2
    url = webhook_url(options, server.server_address[1])
    listener.say(f"Ready: verifying webhooks signed for your organisation at {client.base_url}")
    listener.say(f"webhookUrl: {url}")
    listener.say(f"forwarding to {options.forward_to}" if options.forward_to
                 else f"answering {options.status} to every verified webhook")
    listener.say("(a server refusing it as a webhookUrl needs SIGHTWIRE_ALLOW_PRIVATE_CIDRS=127.0.0.0/8)")
    stop = stop or _stop_on_signals()
    try:
        if options.test and not send_test(client, url, listener.say):
            return 2
        stop.wait()
    finally:
        server.shutdown()
        server.server_close()
        listener.close()
        listener.say(f"stopped: {listener.counts['verified']} verified, {listener.counts['rejected']} rejected")
    return 0


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``sightwire listen`` (and of ``sightwire-listen``, from this package alone)."""
    parser.add_argument("--api-url", help="the Sightwire API (default: $SIGHTWIRE_API_URL or http://127.0.0.1:8000)")
    parser.add_argument("--api-key", help="your API key (default: $SIGHTWIRE_API_KEY)")
    parser.add_argument("--host", default=ListenOptions.host, help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=ListenOptions.port,
                        help="port (0: any free one; default: %(default)s)")
    parser.add_argument("--path", default=ListenOptions.path, help="path of the webhookUrl (default: %(default)s)")
    answer = parser.add_mutually_exclusive_group()
    answer.add_argument("--forward-to", metavar="URL", help="pass each verified webhook on, headers and all")
    answer.add_argument("--status", type=int, default=ListenOptions.status,
                        help="answer this status (500 rehearses the notifier's retries; default: %(default)s)")
    parser.add_argument("--print-body", action="store_true", help="print each webhook's JSON body")
    parser.add_argument("--test", action="store_true", help="send one webhook.test event here once listening")


def options_from(args: argparse.Namespace) -> ListenOptions:
    return ListenOptions(api_key=args.api_key, api_url=args.api_url, host=args.host, port=args.port, path=args.path,
                         forward_to=args.forward_to, status=args.status, print_body=args.print_body, test=args.test)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sightwire-listen", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(options_from(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
