"""The OpenAPI document as client generators need it, and ``/docs`` without a CDN.

FastAPI's own document says nothing of the bearer keys, declares a JSON 422 body the API never
sends, and has no webhooks. ``install_openapi`` post-processes it once per app:

- a ``bearer`` HTTP security scheme (Swagger's Authorize button), required by every operation
  whose route depends on ``serve_app.auth.current_org`` (an API key) or ``current_operator``
  (an operator key: the admin routes);
- every error status an operation can answer, each with the ``application/problem+json`` body:
  the shared ones are derived from the route (401/429/503 behind auth; 409/422 on a POST, for
  ``Idempotency-Key``; 400/413/422 with a body;
  422 with parameters; 404 with path parameters; 500 everywhere), route-specific ones are named
  by the route (``problems.problem_responses``);
- stable, unique ``operationId`` values (the route's function name, prefixed by its tag where
  two routes share one);
- the webhook payloads under OpenAPI 3.1 ``webhooks``, one per event type.

``/docs`` (Swagger UI 5, which reads OpenAPI 3.1) and ``/redoc`` load their assets from
``/docs/assets``: the files the ``fastapi-offline`` package ships (only its files are used).
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import fastapi_offline
from fastapi import FastAPI, Header
from fastapi.dependencies.models import Dependant
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.staticfiles import StaticFiles

from core.schemas import EndpointHealth, EventType, GroupCounts, GroupRecord, ImageRecord, ImageStatus, Wire
from serve_app.auth import current_operator, current_org
from serve_app.group_body import DOCUMENTED_BODIES
from serve_app.problems import MEDIA_TYPE, STATUS_TITLES, ProblemDocument

SCHEME = "bearer"
ASSETS = "/docs/assets"
ASSET_DIR = Path(fastapi_offline.__file__).parent / "static"
PROBLEM_REF = "#/components/schemas/ProblemDocument"
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


def _depends_on(dependant: Dependant, call: Any) -> bool:
    return any(d.call is call or _depends_on(d, call) for d in dependant.dependencies)


def _path_params(dependant: Dependant) -> bool:
    return bool(dependant.path_params) or any(_path_params(d) for d in dependant.dependencies)


def _authenticated(route: APIRoute) -> bool:
    return _depends_on(route.dependant, current_org) or _depends_on(route.dependant, current_operator)


def shared_statuses(route: APIRoute) -> set[int]:
    """The error statuses a route answers whatever it does (see the module docstring)."""
    statuses = {500}
    if _authenticated(route):
        statuses |= {401, 503}
    if _depends_on(route.dependant, current_org):
        statuses.add(429)  # the key's rate limit (serve_app.auth)
    if _depends_on(route.dependant, current_operator):
        statuses.add(403)  # an org's key
    if "POST" in route.methods:
        statuses |= {409, 422}  # Idempotency-Key: in progress, or reused with another body
    if route.body_field is not None or "requestBody" in (route.openapi_extra or {}):
        statuses |= {400, 413, 422}
    if route.dependant.query_params or _path_params(route.dependant):
        statuses.add(422)
    if _path_params(route.dependant):
        statuses.add(404)
    return statuses


def _problem_response(status: int, declared: dict[str, Any] | None) -> dict[str, Any]:
    description = (declared or {}).get("description") or STATUS_TITLES.get(status, "Error")
    if description == "Validation Error":  # FastAPI's default 422
        description = STATUS_TITLES[422]
    response: dict[str, Any] = {
        "description": description,
        "content": {MEDIA_TYPE: {"schema": {"$ref": PROBLEM_REF}}},
    }
    if status in (429, 503):
        response["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    return response


def api_routes(app: FastAPI) -> list[tuple[str, APIRoute]]:
    """Each documented route with its full path (FastAPI 0.163 keeps included routers nested)."""
    return [(ctx.path_format, ctx.original_route) for ctx in iter_route_contexts(app.routes)
            if isinstance(ctx.original_route, APIRoute) and ctx.original_route.include_in_schema]


def _operation_ids(routes: list[APIRoute]) -> dict[int, str]:
    """Function name, or ``tag_name`` where two routes share a function name."""
    counts = Counter(r.name for r in routes)
    return {id(r): r.name if counts[r.name] == 1 else f"{r.tags[0]}_{r.name}".replace(" ", "_")
            for r in routes}


def document(app: FastAPI) -> dict[str, Any]:
    """The post-processed document (built once, then cached on the app)."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, openapi_version=app.openapi_version,
                      description=app.description, routes=app.routes, webhooks=app.webhooks.routes)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 body, never sent
        schemas.pop(name, None)
    for name, model in {"ProblemDocument": ProblemDocument, **DOCUMENTED_BODIES}.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}", by_alias=True)
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
    components["securitySchemes"] = {
        SCHEME: {"type": "http", "scheme": "bearer",
                 "description": "an API key (`sightwire keys create --org ORG`); on the admin routes an "
                                "operator key (`sightwire operator-keys create`)"}
    }
    routes = api_routes(app)
    ids = _operation_ids([route for _, route in routes])
    for path, route in routes:
        path_item = doc["paths"][path]
        for method in route.methods:
            operation = path_item[method.lower()]
            operation["operationId"] = ids[id(route)]
            responses = operation["responses"]
            declared = {int(s) for s in responses if s.isdigit() and int(s) >= 400}
            for status in sorted(declared | shared_statuses(route)):
                if not _keeps_own_body(route, status):
                    responses[str(status)] = _problem_response(status, responses.get(str(status)))
            if _authenticated(route):
                operation["security"] = [{SCHEME: []}]
    for item in doc.get("webhooks", {}).values():  # a receiver's answers, not FastAPI's 422
        for operation in item.values():
            operation["responses"].pop("422", None)
    app.openapi_schema = doc
    return doc


def _keeps_own_body(route: APIRoute, status: int) -> bool:
    """A status a route answers with its own declared model (``/readyz``'s 503), not a problem."""
    declared = route.responses.get(status) or route.responses.get(str(status)) or {}
    return "model" in declared


# --- webhooks: documentation only; the payloads are what ``core.events.payload`` builds -----


class ThinData(Wire):
    """What ``data`` holds when the full record is over the payload cap: fetch ``href``."""

    id: str
    object: Literal["image", "group"]
    status: ImageStatus
    sequence: int
    counts: GroupCounts | None = None
    thin: Literal[True] = True
    href: str


class TestData(Wire):
    id: str
    object: Literal["test"] = "test"
    sequence: int = 1
    message: str


class ImageEventPayload(Wire):
    type: Literal[EventType.IMAGE_COMPLETED, EventType.IMAGE_FAILED, EventType.IMAGE_UPDATED]
    timestamp: datetime
    data: ImageRecord | ThinData


class GroupEventPayload(Wire):
    type: Literal[EventType.GROUP_COMPLETED, EventType.GROUP_UPDATED, EventType.GROUP_PROGRESS]
    timestamp: datetime
    data: GroupRecord | ThinData


class EndpointData(EndpointHealth):
    """An endpoint's health as ``GET /v1/endpoints`` shows it, and ``object: endpoint``."""

    object: Literal["endpoint"] = "endpoint"


class EndpointEventPayload(Wire):
    """To the org's operations webhook (``PATCH /v1/settings``) when one of its endpoints is
    disabled; the health says why (``disabledReason``)."""

    type: Literal[EventType.ENDPOINT_DISABLED]
    timestamp: datetime
    data: EndpointData


class TestEventPayload(Wire):
    type: Literal[EventType.TEST]
    timestamp: datetime
    data: TestData


PAYLOADS: dict[EventType, type[Wire]] = {
    **dict.fromkeys((EventType.IMAGE_COMPLETED, EventType.IMAGE_FAILED, EventType.IMAGE_UPDATED), ImageEventPayload),
    **dict.fromkeys((EventType.GROUP_COMPLETED, EventType.GROUP_UPDATED, EventType.GROUP_PROGRESS), GroupEventPayload),
    EventType.ENDPOINT_DISABLED: EndpointEventPayload,
    EventType.TEST: TestEventPayload,
}
WEBHOOK_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Any 2xx acknowledges the event"},
    410: {"description": "Gone: the endpoint is disabled at once"},
    "default": {"description": "Anything else (or no answer in time) is retried on the retry schedule"},
}
WebhookId = Annotated[str, Header(alias="webhook-id", description="stable across retries: deduplicate on it")]
WebhookTimestamp = Annotated[str, Header(alias="webhook-timestamp", description="Unix seconds")]
WebhookSignature = Annotated[str, Header(alias="webhook-signature",
                                         description="`v1,<base64 HMAC-SHA256>`, space-separated during a rotation")]


async def _image_event(payload: ImageEventPayload, webhook_id: WebhookId, webhook_timestamp: WebhookTimestamp,
                       webhook_signature: WebhookSignature) -> None:
    """Signed per Standard Webhooks with the organisation's ``whsec_`` secret."""


async def _group_event(payload: GroupEventPayload, webhook_id: WebhookId, webhook_timestamp: WebhookTimestamp,
                       webhook_signature: WebhookSignature) -> None:
    """Signed per Standard Webhooks with the organisation's ``whsec_`` secret."""


async def _endpoint_event(payload: EndpointEventPayload, webhook_id: WebhookId, webhook_timestamp: WebhookTimestamp,
                          webhook_signature: WebhookSignature) -> None:
    """Signed per Standard Webhooks with the organisation's ``whsec_`` secret."""


async def _test_event(payload: TestEventPayload, webhook_id: WebhookId, webhook_timestamp: WebhookTimestamp,
                      webhook_signature: WebhookSignature) -> None:
    """Signed per Standard Webhooks with the organisation's ``whsec_`` secret."""


RECEIVERS = {ImageEventPayload: _image_event, GroupEventPayload: _group_event, EndpointEventPayload: _endpoint_event,
             TestEventPayload: _test_event}


def install_openapi(app: FastAPI) -> None:
    """The post-processed document at ``/openapi.json``, webhooks, and offline ``/docs``."""
    for event, model in PAYLOADS.items():
        app.webhooks.post(str(event), operation_id=f"webhook_{event.value.replace('.', '_')}",
                          summary=f"{event.value} event", responses=WEBHOOK_RESPONSES)(RECEIVERS[model])
    app.openapi = lambda: document(app)  # type: ignore[method-assign]
    app.mount(ASSETS, StaticFiles(directory=ASSET_DIR), name="docs-assets")
    spec_url = app.openapi_url or "/openapi.json"
    favicon = f"{ASSETS}/favicon.png"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=spec_url, title=f"{app.title} API", swagger_favicon_url=favicon,
                                   swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS}/swagger-ui.css")

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=spec_url, title=f"{app.title} API", redoc_favicon_url=favicon,
                              redoc_js_url=f"{ASSETS}/redoc.standalone.js", with_google_fonts=False)
