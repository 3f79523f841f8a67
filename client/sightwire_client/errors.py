"""Typed exceptions. Every API error is an ``APIError`` carrying the problem+json fields; which
subclass is raised comes from ``PROBLEMS``, the one table from problem ``type`` or status."""

from __future__ import annotations

import email.utils
import time
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import httpx


class SightwireError(Exception):
    """Base of every error this package raises."""


class TransportError(SightwireError):
    """The API could not be reached (connection, timeout, protocol) after the retries allowed."""


class InvalidResponse(SightwireError):
    """A success whose body is not the record expected (a proxy's page, a server far newer)."""

    def __init__(self, message: str, response: httpx.Response) -> None:
        super().__init__(message)
        self.response = response


class APIError(SightwireError):
    """The API answered with an error (RFC 9457 problem details when it could)."""

    def __init__(
        self,
        status: int,
        title: str,
        *,
        type: str = "about:blank",
        detail: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        retry_after: float | None = None,
        instance: str | None = None,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(f"{status} {title}" + (f": {detail}" if detail else ""))
        self.status = status
        self.type = type
        self.title = title
        self.detail = detail
        self.errors = errors or []
        self.retry_after = retry_after
        self.instance = instance
        self.response = response


class BadRequest(APIError):
    """400: the body or a parameter could not be read (malformed JSON, a forged cursor)."""


class Unauthorized(APIError):
    """401: no API key, or one the server does not know."""


class Forbidden(APIError):
    """403: a known key that may not do this (an organisation's API key on an operator route)."""


class NotFound(APIError):
    """404: no such resource in your organisation (or no such route on this server)."""


class Conflict(APIError):
    """409: the request conflicts with the resource's state."""


class DeliverySuperseded(Conflict):
    """409: a newer update of the same resource exists; retry that delivery instead."""


class DeliveryInFlight(Conflict):
    """409: the delivery is being sent right now."""


class EndpointDisabled(Conflict):
    """409: the endpoint is disabled; enable it first."""


class ImageNotRunnable(Conflict):
    """409: the image failed to load or was canceled; submit it again."""


class NothingToRetry(Conflict):
    """409: the group is still running, or none of its images failed."""


class PayloadTooLarge(APIError):
    """413: the request body is over the server's limit."""


class InvalidRequest(APIError):
    """422: a field is invalid; ``errors`` names each one (``field``, ``message``)."""


class RateLimited(APIError):
    """429: too many requests; ``retry_after`` says when to try again."""


class ServerError(APIError):
    """5xx: the server failed."""


class ServiceUnavailable(ServerError):
    """503: the server (or its store) is briefly unavailable; ``retry_after`` says when to retry."""


class WaitTimeout(SightwireError):
    """``wait`` ran out of time; ``record`` is the last state seen."""

    def __init__(self, record: Any, timeout_s: float) -> None:
        super().__init__(f"{record.id} is still {record.status} after {timeout_s:g}s")
        self.record = record
        self.timeout_s = timeout_s


class VerificationFailure(StrEnum):
    MISSING_HEADER = "missing_header"
    BAD_TIMESTAMP = "bad_timestamp"
    TIMESTAMP_OUT_OF_TOLERANCE = "timestamp_out_of_tolerance"
    NO_MATCHING_SIGNATURE = "no_matching_signature"
    BAD_BODY = "bad_body"


class WebhookVerificationError(SightwireError):
    """The message is not a verified Sightwire webhook; ``reason`` says why. Answer it with 400."""

    def __init__(self, reason: VerificationFailure, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# The one table: a problem's ``type`` (its last path segment) first, then the status.
PROBLEMS: dict[str | int, type[APIError]] = {
    "malformed-json": BadRequest,
    "invalid-cursor": BadRequest,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "not-found": NotFound,
    "delivery-superseded": DeliverySuperseded,
    "delivery-in-flight": DeliveryInFlight,
    "endpoint-disabled": EndpointDisabled,
    "image-not-runnable": ImageNotRunnable,
    "nothing-to-retry": NothingToRetry,
    "payload-too-large": PayloadTooLarge,
    "validation-error": InvalidRequest,
    "rate-limited": RateLimited,
    "store-unavailable": ServiceUnavailable,
    "internal-error": ServerError,
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: InvalidRequest,
    429: RateLimited,
    503: ServiceUnavailable,
}


def problem_class(status: int, problem_type: str) -> type[APIError]:
    slug = urlsplit(problem_type).path.rstrip("/").rsplit("/", 1)[-1]
    found = PROBLEMS.get(slug) or PROBLEMS.get(status)
    if found is not None:
        return found
    return ServerError if status >= 500 else APIError


def retry_after_s(response: httpx.Response, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), or None without a valid one."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def error_from_response(response: httpx.Response) -> APIError:
    """The typed exception for an error response, problem+json or not (a proxy's HTML page)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    problem: dict[str, Any] = body if isinstance(body, dict) else {}
    status = response.status_code
    problem_type = str(problem.get("type") or "about:blank")
    detail = problem.get("detail")
    if detail is None and not problem and response.text:
        detail = response.text[:500]
    return problem_class(status, problem_type)(
        status,
        str(problem.get("title") or response.reason_phrase or "HTTP error"),
        type=problem_type,
        detail=None if detail is None else str(detail),
        errors=problem.get("errors") if isinstance(problem.get("errors"), list) else None,
        retry_after=retry_after_s(response),
        instance=problem.get("instance"),
        response=response,
    )
