"""RFC 9457 problem details: every error the API returns is ``application/problem+json``.

Exceptions that escape a route map to problems here, in one place: request validation (422, or
400 for a body that is not JSON), HTTP errors, Redis unreachable (503 with ``Retry-After``: the
client may retry) and anything else (500, logged; never retried blindly).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_BASE = "https://sightwire.dev/problems/"
MEDIA_TYPE = "application/problem+json"


class Problem(Exception):
    """Raise anywhere in a route to answer with a problem document."""

    def __init__(
        self,
        status: int,
        type_: str,
        title: str,
        detail: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.type = type_
        self.title = title
        self.detail = detail
        self.errors = errors
        self.headers = headers

    def response(self, instance: str | None = None) -> JSONResponse:
        body: dict[str, Any] = {"type": PROBLEM_BASE + self.type, "title": self.title, "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        if instance:
            body["instance"] = instance
        if self.errors:
            body["errors"] = self.errors
        return JSONResponse(body, status_code=self.status, media_type=MEDIA_TYPE, headers=self.headers)


class FieldError(BaseModel):
    field: str
    message: str
    type: str | None = None


class ProblemDocument(BaseModel):
    """The body of every error, for the OpenAPI document (``Problem.response`` writes it)."""

    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldError] | None = None


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route's own error statuses; ``serve_app.openapi`` declares the ones
    every route shares (401, 422, 500, ...) and gives each the problem+json body."""
    return {status: {"description": STATUS_TITLES.get(status, "Error")} for status in statuses}


def invalid(field: str, message: str) -> Problem:
    """A 422 naming the offending field, as validation errors do."""
    return Problem(422, "validation-error", "Request validation failed", message,
                   errors=[{"field": field, "message": message}])


def not_found(what: str) -> Problem:
    return Problem(404, "not-found", "Not found", f"{what} does not exist")


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


STATUS_TITLES = {
    400: "Bad request (malformed JSON, invalid cursor)",
    401: "Missing or invalid API key",
    403: "An operator key is required (admin routes)",
    404: "Not found",
    409: "Conflict with the resource's state",
    413: "Request body too large",
    422: "Request validation failed",
    429: "Rate limit of the API key reached (see Retry-After and RateLimit)",
    500: "Internal server error",
    503: "The store is unreachable; retry after Retry-After",
}

STATUS_TYPES = {401: "unauthorized", 403: "forbidden", 404: "not-found", 405: "method-not-allowed",
                413: "payload-too-large"}

# Redis errors that mean "the store cannot be reached now" (refused, reset, timed out, loading):
# only these are a 503 worth retrying. A command error (``ResponseError``) is a bug: a 500.
STORE_UNREACHABLE: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError)


def install_problem_handlers(app: FastAPI, on_store_unreachable: Callable[[], None] = lambda: None) -> None:
    """Register every mapping; ``on_store_unreachable`` hears of each failed store call."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return exc.response(request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            problem = Problem(400, "malformed-json", "Body is not valid JSON", str(errors[0].get("msg")))
        else:
            problem = Problem(
                422, "validation-error", "Request validation failed",
                "; ".join(f"{_field(e['loc'])}: {e['msg']}" for e in errors),
                errors=[{"field": _field(e["loc"]), "message": e["msg"], "type": e["type"]} for e in errors],
            )
        return problem.response(request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        problem = Problem(exc.status_code, STATUS_TYPES.get(exc.status_code, "http-error"), str(exc.detail),
                          headers=exc.headers)
        return problem.response(request.url.path)

    async def _store_unreachable(request: Request, exc: Exception) -> JSONResponse:
        on_store_unreachable()
        return Problem(503, "store-unavailable", "The store is unreachable; retry shortly",
                       headers={"Retry-After": "1"}).response(request.url.path)

    for exc_type in STORE_UNREACHABLE:
        app.add_exception_handler(exc_type, _store_unreachable)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        # Starlette logs the exception after this response is sent.
        return Problem(500, "internal-error", "Internal server error", "the error was logged").response(
            request.url.path)
