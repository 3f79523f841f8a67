"""One HTTP attempt of one delivery.

Every endpoint problem (refused, timed out, redirected, non-2xx, forbidden address) becomes an
``Attempt`` with a short error text for the delivery log; nothing here raises for them, so the
caller's only decision is when to try again. At most ``read_limit`` bytes of the response body
are read (and dropped): a small reply read to its end leaves the connection reusable, and an
endpoint streaming a large body cannot hold memory or time (its connection is closed instead).

Requests go straight to an httpcore connection pool whose every connection passes the URL
policy (``core.safe_http.policy_pool``: resolved, checked, pinned). No client sits on top: no
cookie jar carries state from one delivery to the next, redirects cannot be followed, and the
per-request cost is about half that of ``httpx.AsyncClient``'s layers.
"""

from __future__ import annotations

import asyncio
import time
from functools import lru_cache

import httpcore
import httpx

from core.failures import Failure
from core.safe_http import retry_after_seconds
from core.schemas import Attempt, Delivery, utcnow
from notifier.signing import signature_headers

USER_AGENT = "Sightwire-Webhooks/1"
MAX_ERROR_CHARS = 500


def _connect_error(exc: BaseException) -> str:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        cause = cause.__cause__ or cause.__context__
    return f"connection failed: {exc}"


async def _drain(response: httpcore.Response, limit: int, timeout_s: float) -> None:
    """Read up to ``limit`` bytes of the body within ``timeout_s``, then close the response: the
    connection goes back to the pool only if the body was read to its end."""
    read = 0
    try:
        if limit > 0 and timeout_s > 0:
            async with asyncio.timeout(timeout_s):
                async for chunk in response.aiter_stream():
                    read += len(chunk)
                    if read > limit:
                        break
    except (TimeoutError, httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError):
        pass  # the status is what counts; this connection is simply not reused
    finally:
        await response.aclose()


@lru_cache(maxsize=4096)
def _target(url: str) -> tuple[httpcore.URL, bytes]:
    """The parsed URL (validated and IDNA-encoded by httpx) and its ``Host`` header."""
    parsed = httpx.URL(url)
    return (
        httpcore.URL(scheme=parsed.raw_scheme, host=parsed.raw_host, port=parsed.port, target=parsed.raw_path),
        parsed.netloc,
    )


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def send_attempt(
    pool: httpcore.AsyncConnectionPool,
    delivery: Delivery,
    secrets: list[str],
    timeout_s: float,
    read_limit: int = 65_536,
) -> Attempt:
    """POST ``delivery`` once, signed with ``secrets``; success is a 2xx within ``timeout_s``.

    Redirects are never followed: a 3xx is a failure, so a receiver cannot bounce the signed
    payload to a third party. ``timeout_s`` bounds the exchange up to the response headers;
    reading (and dropping) up to ``read_limit`` bytes of the reply gets what is left of it."""
    at = utcnow()
    body = delivery.body.encode()
    started = time.perf_counter()
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None
    response: httpcore.Response | None = None
    try:
        url, host = _target(delivery.url)
        signed = signature_headers(secrets, delivery.webhook_id, int(at.timestamp()), delivery.body)
        headers = [
            (b"host", host),
            (b"user-agent", USER_AGENT.encode()),
            (b"content-length", str(len(body)).encode()),
            *((name.encode(), value.encode()) for name, value in signed.items()),
        ]
        request = httpcore.Request(
            b"POST", url, headers=headers, content=body,
            extensions={"timeout": {"connect": timeout_s, "read": timeout_s, "write": timeout_s, "pool": timeout_s}},
        )
        async with asyncio.timeout(timeout_s):
            response = await pool.handle_async_request(request)
        status = response.status
        retry_after = retry_after_seconds(_header(response.headers, b"retry-after"))
        if 300 <= status < 400:
            error = f"redirect to {_header(response.headers, b'location') or '(no location)'} not followed"
        elif not 200 <= status < 300:
            error = f"HTTP {status}"
    except (TimeoutError, httpcore.TimeoutException):
        error = f"timeout after {timeout_s:g}s"
    except httpcore.ConnectError as exc:
        error = _connect_error(exc)
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
        error = f"{type(exc).__name__}: {exc}"
    except httpx.InvalidURL as exc:
        error = f"invalid URL: {exc}"
    except Failure as exc:  # the URL policy refused the address
        error = exc.message
    latency_ms = (time.perf_counter() - started) * 1000  # to the response headers
    if response is not None:
        await _drain(response, read_limit, timeout_s - latency_ms / 1000)
    return Attempt(
        at=at,
        status_code=status,
        latency_ms=round(latency_ms, 3),
        error=error[:MAX_ERROR_CHARS] if error else None,
        succeeded=error is None,
        retry_after_s=retry_after,
    )
