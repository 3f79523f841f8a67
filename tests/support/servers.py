"""Real HTTP servers on loopback for tests: an image host and a webhook receiver."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    content_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 with a free port; subclasses answer requests."""

    def __init__(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                outer.handle(self, b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                outer.handle(self, self.rfile.read(length))

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                """Clients that hang up early (tests do it on purpose) are not errors."""
                if not isinstance(sys.exc_info()[1], ConnectionError):
                    super().handle_error(request, client_address)  # type: ignore[arg-type]

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def handle(self, request: BaseHTTPRequestHandler, body: bytes) -> None:
        raise NotImplementedError

    @staticmethod
    def respond(request: BaseHTTPRequestHandler, route: Route) -> None:
        if route.delay_s:
            time.sleep(route.delay_s)
        request.send_response(route.status)
        request.send_header("content-type", route.content_type)
        request.send_header("content-length", str(len(route.body)))
        for name, value in route.headers.items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(route.body)

    def start(self) -> LoopbackServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class ImageHost(LoopbackServer):
    """Serves whatever bytes a test put at a path; unknown paths answer 404."""

    def __init__(self) -> None:
        super().__init__()
        self.routes: dict[str, Route] = {}

    def put(self, path: str, body: bytes, content_type: str = "image/png", **kwargs: object) -> str:
        self.routes[path] = Route(body=body, content_type=content_type, **kwargs)  # type: ignore[arg-type]
        return self.url(path)

    def handle(self, request: BaseHTTPRequestHandler, body: bytes) -> None:
        self.respond(request, self.routes.get(request.path.split("?")[0], Route(b"not found", 404, "text/plain")))


class WebhookReceiver(LoopbackServer):
    """Records every POST; ``script`` gives the status of the next responses, then 200s."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[Received] = []
        self.script: list[Route] = []
        self.default = Route(b"ok", 200, "text/plain")
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)

    def handle(self, request: BaseHTTPRequestHandler, body: bytes) -> None:
        with self._lock:
            self.received.append(
                Received(request.path, {k.lower(): v for k, v in request.headers.items()}, body, time.time())
            )
            route = self.script.pop(0) if self.script else self.default
            self._arrived.notify_all()
        self.respond(request, route)

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout_s: float = 60.0) -> list[Received]:
        """Block until ``predicate(received)`` holds; fail the test with what did arrive if not."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while not predicate(self.received):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"webhook condition not met in {timeout_s}s; got {len(self.received)}")
                self._arrived.wait(remaining)
            return list(self.received)
