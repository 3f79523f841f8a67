"""Downloading untrusted images (SPEC §6, "hostile images").

Every image URL comes from a client, so the download is bounded: it goes through the SSRF-safe
client (each redirect hop re-checked), runs under one overall deadline and a byte cap enforced
while streaming. Whatever goes wrong becomes a ``Failure`` with a stable code, so a bad image
fails that image and nothing else.
"""

from __future__ import annotations

import asyncio

import httpx

from core.failures import MAX_REASON_CHARS, Failure, describe
from core.safe_http import safe_client
from core.schemas import ErrorCode
from core.settings import Settings
from core.urlpolicy import UrlPolicy


class ImageFetcher:
    """Downloads image bytes through the URL policy with a deadline and a byte cap.

    One fetcher (and its connection pool) serves every download of a process; close it with
    ``aclose``.
    """

    def __init__(
        self, client: httpx.AsyncClient, policy: UrlPolicy, *, max_bytes: int, timeout_s: float
    ) -> None:
        self._client = client
        self._policy = policy
        self._max_bytes = max_bytes
        self._timeout_s = timeout_s
        # Each redirect hop gets the same request-time URL check as the first URL (scheme,
        # credentials, address literals); the network backend then checks what it resolves to.
        client.event_hooks["request"].append(self._check_hop)

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageFetcher:
        policy = UrlPolicy.from_settings(settings)
        client = safe_client(
            policy,
            timeout=settings.fetch_timeout_s,
            follow_redirects=True,
            max_redirects=settings.max_redirects,
        )
        return cls(client, policy, max_bytes=settings.max_image_bytes, timeout_s=settings.fetch_timeout_s)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _check_hop(self, request: httpx.Request) -> None:
        self._policy.check_url(str(request.url))

    async def fetch(self, url: str) -> bytes:
        """The body at ``url``; raises ``Failure`` with a code for every way a download can fail."""
        self._policy.check_url(url)
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._download(url)
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

    async def _download(self, url: str) -> bytes:
        # Ask for the bytes as stored and read them raw: a compressed response could expand far
        # beyond the cap inside a single decoded chunk, before any counting could stop it.
        headers = {"accept": "image/*", "accept-encoding": "identity"}
        async with self._client.stream("GET", url, headers=headers) as response:
            if not response.is_success:
                raise Failure(ErrorCode.HTTP_ERROR, f"image host answered HTTP {response.status_code}")
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
