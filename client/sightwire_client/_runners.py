"""The I/O: perform the steps of an operation (``_protocol``) with httpx, sync or async.

This is all that differs between ``Client`` and ``AsyncClient``: how a request is sent, how a
pause is slept, how pages are yielded.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from sightwire_client import __version__
from sightwire_client._protocol import Listing, Operation, Pause, Polling, Reply, Retries, Step

T = TypeVar("T")

API_KEY_ENV = "SIGHTWIRE_API_KEY"
API_URL_ENV = "SIGHTWIRE_API_URL"
DEFAULT_API_URL = "http://127.0.0.1:8000"
USER_AGENT = f"sightwire-client/{__version__} httpx/{httpx.__version__}"


class Runner:
    """Configuration both clients share: key, base URL (both also from the environment),
    timeout, retry policy, polling."""

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = 30.0,
        retries: Retries | None = None,
        polling: Polling | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        key = api_key or os.environ.get(API_KEY_ENV)
        if not key:
            raise ValueError(f"no API key: pass api_key= or set {API_KEY_ENV}")
        self.base_url = (base_url or os.environ.get(API_URL_ENV) or DEFAULT_API_URL).rstrip("/")
        self._timeout_s = timeout
        self._retries = retries or Retries()
        self._polling = polling or Polling()
        self._http = self._open(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {key}", "User-Agent": USER_AGENT, "Accept": "application/json",
                     **(headers or {})},
        )

    def _open(self, **options: Any) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"


class SyncRunner(Runner):
    _http: httpx.Client

    def _open(self, **options: Any) -> httpx.Client:
        return httpx.Client(**options)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def _perform(self, step: Step) -> Reply:
        if isinstance(step, Pause):
            return time.sleep(step.seconds)
        try:
            return self._http.request(**step.arguments(self._timeout_s))
        except httpx.TransportError as exc:
            return exc

    def _run(self, operation: Operation[T]) -> T:
        reply: Reply = None
        try:
            while True:
                reply = self._perform(operation.send(reply))
        except StopIteration as done:
            return done.value

    def _iterate(self, listing: Listing[T]) -> Iterator[T]:
        cursor: str | None = None
        while True:
            page = self._run(listing(cursor))
            yield from page.data
            if not (cursor := page.next_cursor):
                return


class AsyncRunner(Runner):
    _http: httpx.AsyncClient

    def _open(self, **options: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(**options)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.aclose()

    async def _perform(self, step: Step) -> Reply:
        if isinstance(step, Pause):
            return await asyncio.sleep(step.seconds)
        try:
            return await self._http.request(**step.arguments(self._timeout_s))
        except httpx.TransportError as exc:
            return exc

    async def _run(self, operation: Operation[T]) -> T:
        reply: Reply = None
        try:
            while True:
                reply = await self._perform(operation.send(reply))
        except StopIteration as done:
            return done.value

    async def _iterate(self, listing: Listing[T]) -> AsyncIterator[T]:
        cursor: str | None = None
        while True:
            page = await self._run(listing(cursor))
            for item in page.data:
                yield item
            if not (cursor := page.next_cursor):
                return
