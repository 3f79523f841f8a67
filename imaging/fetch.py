"""Downloading untrusted images (SPEC §6, "hostile images").

Every image URL comes from a client, so the download is bounded: it goes through the SSRF-safe
client (each redirect hop re-checked), runs under one overall deadline and a byte cap enforced
while streaming. Whatever goes wrong becomes a ``Failure`` with a stable code, so a bad image
fails that image and nothing else.

One client serves every tenant's downloads, so it keeps no state a response could set: its
cookie jar refuses every cookie (a cookie set on org A's fetch is never sent on org B's, nor
on the next redirect hop). A host that is busy (429, 503) or drops the connection gets a bounded
number of further attempts, paced by its ``Retry-After`` (seconds or an HTTP date) or by a
doubling backoff, all within the same deadline; a ``Retry-After`` reaching past the deadline
fails the image at once as ``fetch_throttled`` instead of waiting for nothing.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import urllib.request

import httpx

from core.failures import MAX_REASON_CHARS, Failure, describe
from core.safe_http import DEFAULT_LIMITS, retry_after_seconds, safe_client
from core.schemas import ErrorCode
from core.settings import Settings
from core.urlpolicy import UrlPolicy

RETRY_STATUSES = frozenset({429, 503})
# The connection failed or was reset before a response: worth another attempt. Timeouts are
# not (the deadline covers them), nor is anything the URL policy refused (a ``Failure``).
RETRY_ERRORS = (httpx.NetworkError, httpx.RemoteProtocolError)


class NoCookies(http.cookiejar.CookiePolicy):
    """A cookie policy that accepts and returns nothing."""

    netscape = True
    rfc2965 = False
    hide_cookie2 = True

    def set_ok(self, cookie: http.cookiejar.Cookie, request: urllib.request.Request) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: urllib.request.Request) -> bool:
        return False

    def domain_return_ok(self, domain: str, request: urllib.request.Request) -> bool:
        return False

    def path_return_ok(self, path: str, request: urllib.request.Request) -> bool:
        return False


class _Retryable(Exception):
    """One attempt failed in a way another attempt may not: the failure to report if none is left."""

    def __init__(self, failure: Failure, retry_after_s: float | None = None) -> None:
        super().__init__(failure.message)
        self.failure = failure
        self.retry_after_s = retry_after_s


class ImageFetcher:
    """Downloads image bytes through the URL policy with a deadline, a byte cap and bounded
    retries.

    One fetcher (and its connection pool) serves every download of a process; close it with
    ``aclose``.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        policy: UrlPolicy,
        *,
        max_bytes: int,
        timeout_s: float,
        retries: int = 2,
        backoff_s: float = 0.5,
    ) -> None:
        self._client = client
        self._policy = policy
        self._max_bytes = max_bytes
        self._timeout_s = timeout_s
        self._retries = retries
        self._backoff_s = backoff_s
        # A jar, not ``httpx.Cookies``: the setter would copy one into a default jar.
        client.cookies = http.cookiejar.CookieJar(policy=NoCookies())
        # Each redirect hop gets the same request-time URL check as the first URL (scheme,
        # credentials, address literals); the network backend then checks what it resolves to.
        client.event_hooks["request"].append(self._check_hop)

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageFetcher:
        """The pool has a connection for every download the engine's fetch stage lets start
        (``engine_max_in_flight``): a smaller pool would queue granted downloads FIFO behind
        one org's slow hosts, under the stage's fair round and out of its sight."""
        policy = UrlPolicy.from_settings(settings)
        connections = max(DEFAULT_LIMITS.max_connections or 0, settings.engine_max_in_flight)
        client = safe_client(
            policy,
            timeout=settings.fetch_timeout_s,
            follow_redirects=True,
            max_redirects=settings.max_redirects,
            limits=httpx.Limits(max_connections=connections,
                                max_keepalive_connections=DEFAULT_LIMITS.max_keepalive_connections),
        )
        return cls(client, policy, max_bytes=settings.max_image_bytes, timeout_s=settings.fetch_timeout_s,
                   retries=settings.fetch_retries, backoff_s=settings.fetch_retry_backoff_s)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _check_hop(self, request: httpx.Request) -> None:
        self._policy.check_url(str(request.url))

    async def fetch(self, url: str) -> bytes:
        """The body at ``url``; raises ``Failure`` with a code for every way a download can fail."""
        self._policy.check_url(url)
        try:
            async with asyncio.timeout(self._timeout_s) as deadline:
                return await self._attempts(url, deadline)
        except (TimeoutError, httpx.TimeoutException):
            message = f"image download took longer than {self._timeout_s:g}s"
            raise Failure(ErrorCode.FETCH_TIMEOUT, message) from None
        except httpx.TooManyRedirects:
            raise Failure(
                ErrorCode.TOO_MANY_REDIRECTS, f"more than {self._client.max_redirects} redirects"
            ) from None
        except httpx.UnsupportedProtocol as exc:  # a redirect to ftp:, file:, ...
            raise Failure(ErrorCode.URL_FORBIDDEN, describe(exc, MAX_REASON_CHARS)) from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise Failure(ErrorCode.FETCH_FAILED, describe(exc, MAX_REASON_CHARS)) from None

    async def _attempts(self, url: str, deadline: asyncio.Timeout) -> bytes:
        loop = asyncio.get_running_loop()
        for attempt in range(self._retries + 1):
            try:
                return await self._download(url)
            except _Retryable as outcome:
                retryable = outcome
            if attempt == self._retries:
                break
            pause = retryable.retry_after_s
            if pause is None:
                pause = self._backoff_s * 2**attempt
            left = (deadline.when() or loop.time()) - loop.time()
            if pause >= left:
                if retryable.retry_after_s is None:
                    break  # no time for another attempt: report what the host did
                raise Failure(ErrorCode.FETCH_THROTTLED,
                              f"{retryable.failure.message} with Retry-After {pause:.0f}s, past the fetch "
                              f"deadline ({left:.1f}s left of {self._timeout_s:g}s)")
            await asyncio.sleep(pause)
        failure = retryable.failure
        raise Failure(failure.code, f"{failure.message} ({attempt + 1} attempts)")

    async def _download(self, url: str) -> bytes:
        # Ask for the bytes as stored and read them raw: a compressed response could expand far
        # beyond the cap inside a single decoded chunk, before any counting could stop it.
        headers = {"accept": "image/*", "accept-encoding": "identity"}
        try:
            async with self._client.stream("GET", url, headers=headers) as response:
                return await self._body(response)
        except RETRY_ERRORS as exc:
            raise _Retryable(Failure(ErrorCode.FETCH_FAILED, describe(exc, MAX_REASON_CHARS))) from None

    async def _body(self, response: httpx.Response) -> bytes:
        if not response.is_success:
            failure = Failure(ErrorCode.HTTP_ERROR, f"image host answered HTTP {response.status_code}")
            if response.status_code in RETRY_STATUSES:
                raise _Retryable(failure, retry_after_seconds(response.headers.get("retry-after")))
            raise failure
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise Failure(ErrorCode.FETCH_FAILED, f"unsupported Content-Encoding {encoding!r}")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            message = f"image declares {declared} bytes; the limit is {self._max_bytes}"
            raise Failure(ErrorCode.IMAGE_TOO_LARGE, message)
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > self._max_bytes:
                message = f"image is over the limit of {self._max_bytes} bytes"
                raise Failure(ErrorCode.IMAGE_TOO_LARGE, message)
        return bytes(body)
