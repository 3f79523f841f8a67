"""One HTTP attempt of one delivery.

Every endpoint problem (refused, timed out, redirected, non-2xx, forbidden address) becomes an
``Attempt`` with a short error text for the delivery log; nothing here raises for them, so the
caller's only decision is when to try again. The response body is never read: a receiver
answers with its status, and an endpoint streaming a large body cannot hold memory or time.
"""

from __future__ import annotations

import asyncio
import time

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


async def send_attempt(
    client: httpx.AsyncClient, delivery: Delivery, secrets: list[str], timeout_s: float
) -> Attempt:
    """POST ``delivery`` once, signed with ``secrets``; success is a 2xx within ``timeout_s``.

    Redirects are never followed, whatever ``client`` is set to: a 3xx is a failure, so a
    receiver cannot bounce the signed payload to a third party. ``timeout_s`` bounds the whole
    exchange up to the response headers, not each network step."""
    at = utcnow()
    headers = signature_headers(secrets, delivery.webhook_id, int(at.timestamp()), delivery.body)
    headers["user-agent"] = USER_AGENT
    started = time.perf_counter()
    status: int | None = None
    error: str | None = None
    try:
        async with asyncio.timeout(timeout_s):
            request = client.build_request("POST", delivery.url, content=delivery.body, headers=headers)
            response = await client.send(request, stream=True, follow_redirects=False)
            await response.aclose()
        status = response.status_code
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
    latency_ms = (time.perf_counter() - started) * 1000
    return Attempt(
        at=at,
        status_code=status,
        latency_ms=round(latency_ms, 3),
        error=error[:MAX_ERROR_CHARS] if error else None,
        succeeded=error is None,
    )
