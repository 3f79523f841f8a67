"""One HTTP attempt of one delivery.

Every endpoint problem (refused, timed out, redirected, non-2xx, forbidden address) becomes an
``Attempt`` with a short error text for the delivery log; nothing here raises for them, so the
caller's only decision is when to try again. At most ``read_limit`` bytes of the response body
are read (and dropped): a small reply read to its end leaves the connection reusable, and an
endpoint streaming a large body cannot hold memory or time (its connection is closed instead).
"""

from __future__ import annotations

import asyncio
import time
from email.utils import parsedate_to_datetime

import httpx

from core.failures import Failure
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


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; ``None`` if absent
    or unreadable (clamping is the caller's policy)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


async def _drain(response: httpx.Response, limit: int, timeout_s: float) -> None:
    """Read up to ``limit`` bytes of the body within ``timeout_s``, then close the response: the
    connection goes back to the pool only if the body was read to its end."""
    read = 0
    try:
        if limit > 0 and timeout_s > 0:
            async with asyncio.timeout(timeout_s):
                async for chunk in response.aiter_raw():
                    read += len(chunk)
                    if read > limit:
                        break
    except (TimeoutError, httpx.HTTPError):
        pass  # the status is what counts; this connection is simply not reused
    finally:
        await response.aclose()


async def send_attempt(
    client: httpx.AsyncClient,
    delivery: Delivery,
    secrets: list[str],
    timeout_s: float,
    read_limit: int = 65_536,
) -> Attempt:
    """POST ``delivery`` once, signed with ``secrets``; success is a 2xx within ``timeout_s``.

    Redirects are never followed, whatever ``client`` is set to: a 3xx is a failure, so a
    receiver cannot bounce the signed payload to a third party. ``timeout_s`` bounds the whole
    exchange up to the response headers; reading (and dropping) up to ``read_limit`` bytes of
    the reply gets what is left of it."""
    at = utcnow()
    headers = signature_headers(secrets, delivery.webhook_id, int(at.timestamp()), delivery.body)
    headers["user-agent"] = USER_AGENT
    started = time.perf_counter()
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None
    response: httpx.Response | None = None
    try:
        async with asyncio.timeout(timeout_s):
            request = client.build_request("POST", delivery.url, content=delivery.body, headers=headers)
            response = await client.send(request, stream=True, follow_redirects=False)
        status = response.status_code
        retry_after = retry_after_seconds(response.headers.get("retry-after"))
        if 300 <= status < 400:
            error = f"redirect to {response.headers.get('location', '(no location)')} not followed"
        elif not 200 <= status < 300:
            error = f"HTTP {status}"
    except (TimeoutError, httpx.TimeoutException):
        error = f"timeout after {timeout_s:g}s"
    except httpx.ConnectError as exc:
        error = _connect_error(exc)
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
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
