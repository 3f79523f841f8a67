"""Image fetches share no state across tenants and retry a busy host (issue 15, item 6).

A scripted HTTP server on loopback answers each request as the test says (a status, an image,
a connection reset) and records what each request carried; the fetcher is the product's own
(``ImageFetcher.from_settings``), policy and all.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.utils import formatdate

import pytest

from core.failures import Failure
from core.schemas import ErrorCode
from core.settings import Settings
from imaging import ImageFetcher
from tests.conftest import png_bytes

IMAGE = png_bytes(8, 8)
RESET = b""  # a reply that resets the connection instead of answering


def reply(status: int = 200, body: bytes = IMAGE, **headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"content-length: {len(body)}", "connection: close"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Seen:
    """Each request the server got: its path and lower-cased headers."""

    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]


@asynccontextmanager
async def scripted(answer: Callable[[str, int], bytes]) -> AsyncIterator[tuple[str, Seen]]:
    """A loopback server answering ``answer(path, n)`` to the ``n``-th request (from 0)."""
    seen = Seen()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            path = head[0].split(" ")[1]
            headers = dict(line.lower().split(": ", 1) for line in head[1:] if ": " in line)
            seen.requests.append((path, headers))
            data = answer(path, len(seen.requests) - 1)
            if data is RESET:
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            writer.write(data)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", seen


@pytest.fixture
async def fetcher(settings: Settings) -> AsyncIterator[ImageFetcher]:
    fetcher = ImageFetcher.from_settings(settings.model_copy(update={"fetch_retry_backoff_s": 0.05,
                                                                     "fetch_timeout_s": 4.0}))
    yield fetcher
    await fetcher.aclose()


async def failure_of(fetcher: ImageFetcher, url: str) -> Failure:
    with pytest.raises(Failure) as caught:
        await fetcher.fetch(url)
    return caught.value


async def test_a_cookie_set_on_one_fetch_is_never_sent_on_another(fetcher: ImageFetcher) -> None:
    """Org A's fetch gets a cookie (on the image, and on a redirect); org B's fetch from the same
    host, and the redirect's next hop, carry no ``Cookie`` header."""

    def answer(path: str, n: int) -> bytes:
        if path == "/org-a.png":
            return reply(set_cookie="session=org-a; Path=/")
        if path == "/hop":
            return reply(302, b"", location="/org-a-target.png", set_cookie="hop=org-a; Path=/")
        return reply()

    async with scripted(answer) as (base, seen):
        assert await fetcher.fetch(f"{base}/org-a.png") == IMAGE
        assert await fetcher.fetch(f"{base}/hop") == IMAGE
        assert await fetcher.fetch(f"{base}/org-b.png") == IMAGE
    assert seen.paths() == ["/org-a.png", "/hop", "/org-a-target.png", "/org-b.png"]
    assert [path for path, headers in seen.requests if "cookie" in headers] == []


async def test_503_then_reset_then_success_is_retried(fetcher: ImageFetcher) -> None:
    script = [reply(503, b"busy"), RESET, reply()]
    async with scripted(lambda path, n: script[n]) as (base, seen):
        assert await fetcher.fetch(f"{base}/busy.png") == IMAGE
    assert len(seen.requests) == 3


@pytest.mark.parametrize("form", ["seconds", "http-date"])
async def test_429_retry_after_is_honoured(fetcher: ImageFetcher, form: str) -> None:
    # An HTTP date has whole seconds: two seconds ahead waits between one and two.
    wait = "1" if form == "seconds" else formatdate(time.time() + 2, usegmt=True)
    script = [reply(429, b"slow down", retry_after=wait), reply()]
    started = time.monotonic()
    async with scripted(lambda path, n: script[n]) as (base, seen):
        assert await fetcher.fetch(f"{base}/slow.png") == IMAGE
    assert time.monotonic() - started >= 0.95
    assert len(seen.requests) == 2


@pytest.mark.parametrize("wait", ["120", "Wed, 01 Jan 2099 00:00:00 GMT"], ids=["seconds", "http-date"])
async def test_retry_after_past_the_deadline_fails_at_once(fetcher: ImageFetcher, wait: str) -> None:
    started = time.monotonic()
    async with scripted(lambda path, n: reply(503, b"later", retry_after=wait)) as (base, seen):
        failure = await failure_of(fetcher, f"{base}/later.png")
    assert failure.code is ErrorCode.FETCH_THROTTLED and "past the fetch deadline" in failure.message
    assert time.monotonic() - started < 1.0 and len(seen.requests) == 1


async def test_retries_are_bounded(fetcher: ImageFetcher, settings: Settings) -> None:
    async with scripted(lambda path, n: reply(503, b"down")) as (base, seen):
        failure = await failure_of(fetcher, f"{base}/down.png")
    assert failure.code is ErrorCode.HTTP_ERROR and "503" in failure.message
    assert len(seen.requests) == settings.fetch_retries + 1
    async with scripted(lambda path, n: RESET) as (base, seen):
        failure = await failure_of(fetcher, f"{base}/reset.png")
    assert failure.code is ErrorCode.FETCH_FAILED
    assert len(seen.requests) == settings.fetch_retries + 1


async def test_other_errors_are_not_retried(fetcher: ImageFetcher) -> None:
    async with scripted(lambda path, n: reply(404, b"no")) as (base, seen):
        assert (await failure_of(fetcher, f"{base}/missing.png")).code is ErrorCode.HTTP_ERROR
    assert len(seen.requests) == 1
