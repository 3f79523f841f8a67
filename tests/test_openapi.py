"""The OpenAPI document generators read, and ``/docs`` offline.

The document is checked in-process (``create_app`` on a context whose store is never called);
the error statuses it declares are checked against what the running API answers (session stack).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from core.registry import load_registry
from core.schemas import EventType
from core.settings import Settings
from core.store import Store
from serve_app.api import create_app
from serve_app.context import ApiContext
from serve_app.problems import MEDIA_TYPE

METHODS = ("get", "put", "post", "delete", "patch")
PUBLIC = {"/healthz", "/readyz"}


@pytest.fixture(scope="module")
def client(settings: Settings, tiny_models_dir: Path) -> Iterator[TestClient]:
    async def no_info(name: str) -> Any:
        raise AssertionError("the document needs no model")

    ctx = ApiContext(settings, Store.from_settings(settings), load_registry("tiny", tiny_models_dir), no_info)
    with TestClient(create_app(ctx)) as test_client:  # lifespan runs: readiness against the session redis
        yield test_client


@pytest.fixture(scope="module")
def doc(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def test_document_is_structurally_valid(doc: dict[str, Any]) -> None:
    assert doc["openapi"].startswith("3.1")
    assert doc["info"]["title"] and doc["info"]["version"]
    for ref in set(refs(doc)):
        assert ref.startswith("#/"), ref
        resolve(doc, ref)  # KeyError: a dangling reference
    ids = [op["operationId"] for _, _, op in operations(doc)]
    ids += [op["operationId"] for item in doc["webhooks"].values() for op in item.values()]
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", i) for i in ids), ids
    for path, method, op in operations(doc):
        for status, response in op["responses"].items():
            assert status == "default" or re.fullmatch(r"[1-5]\d\d", status), (path, status)
            assert response.get("description"), (path, method, status)
        for name in re.findall(r"{(\w+)}", path):
            assert any(p["in"] == "path" and p["name"] == name and p["required"] for p in op.get("parameters", [])), (
                path, name)
    assert "HTTPValidationError" not in doc["components"]["schemas"]


def test_bearer_scheme_guards_every_v1_operation(doc: dict[str, Any]) -> None:
    schemes = doc["components"]["securitySchemes"]
    assert schemes == {"bearer": {"type": "http", "scheme": "bearer", "description": schemes["bearer"]["description"]}}
    for path, method, op in operations(doc):
        if path in PUBLIC:
            assert "security" not in op, path
        else:
            assert op.get("security") == [{"bearer": []}], (path, method)
            assert "401" in op["responses"], (path, method)


def test_every_error_is_problem_json(doc: dict[str, Any]) -> None:
    problem = doc["components"]["schemas"]["ProblemDocument"]
    assert set(problem["required"]) == {"type", "title", "status"}
    for path, method, op in operations(doc):
        errors = {s: r for s, r in op["responses"].items() if s.isdigit() and int(s) >= 400}
        assert "500" in errors, (path, method)
        for status, response in errors.items():
            assert list(response["content"]) == [MEDIA_TYPE], (path, method, status)
            assert response["content"][MEDIA_TYPE]["schema"] == {"$ref": "#/components/schemas/ProblemDocument"}
        if "requestBody" in op:
            assert {"400", "413", "422"} <= set(errors), (path, method)
        if "{" in path:
            assert "404" in errors, (path, method)
    assert "409" in doc["paths"]["/v1/deliveries/{delivery_id}/retry"]["post"]["responses"]
    assert "400" in doc["paths"]["/v1/images"]["get"]["responses"]  # invalid cursor


def test_webhooks_document_each_event_payload(doc: dict[str, Any]) -> None:
    assert set(doc["webhooks"]) == {str(e) for e in EventType}
    for event, item in doc["webhooks"].items():
        op = item["post"]
        headers = {p["name"] for p in op["parameters"] if p["in"] == "header"}
        assert headers == {"webhook-id", "webhook-timestamp", "webhook-signature"}, event
        schema = resolve(doc, op["requestBody"]["content"]["application/json"]["schema"]["$ref"])
        type_schema = schema["properties"]["type"]
        allowed = type_schema.get("enum") or [type_schema.get("const")]
        assert event in allowed, (event, type_schema)
    image = resolve(doc, doc["webhooks"]["image.completed"]["post"]["requestBody"]["content"]["application/json"]
                    ["schema"]["$ref"])
    assert {r.rsplit("/", 1)[-1] for r in refs(image["properties"]["data"])} == {"ImageRecord", "ThinData"}


def test_docs_load_only_local_assets(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assert "http://" not in html and "https://" not in html, page
        assets = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)
        assert any(a.endswith(".js") for a in assets), html
        for asset in assets:
            response = client.get(asset)
            assert response.status_code == 200, asset
            assert asset.endswith(".json") or len(response.content) > 1000, asset


@pytest.mark.integration
async def test_declared_statuses_are_what_the_api_answers(api: httpx.AsyncClient, api_key: str) -> None:
    """Real errors from the running stack: each status is declared for its operation, as problem+json."""
    doc = (await api.get("/openapi.json")).json()
    auth = {"Authorization": f"Bearer {api_key}"}
    cases = [
        ("get", "/v1/images/{image_id}", "/v1/images/img_missing", {}, None),  # 401
        ("get", "/v1/images/{image_id}", "/v1/images/img_missing", auth, None),  # 404
        ("get", "/v1/images", "/v1/images?cursor=%%%", auth, None),  # 400 invalid cursor
        ("post", "/v1/images", "/v1/images", auth, {"url": "x"}),  # 422
        ("post", "/v1/images", "/v1/images", {**auth, "content-type": "application/json"}, b"{"),  # 400
        ("post", "/v1/images", "/v1/images", auth, b"x" * (3 << 20)),  # 413
        ("post", "/v1/endpoints/enable", "/v1/endpoints/enable", auth, {"url": "http://127.0.0.1:9/x"}),  # 404
    ]
    seen = set()
    for method, template, url, headers, body in cases:
        kwargs = {"json": body} if isinstance(body, dict) else {"content": body}
        response = await api.request(method, url, headers=headers, **kwargs)
        assert response.status_code >= 400, (url, response.status_code)
        assert response.headers["content-type"] == MEDIA_TYPE
        declared = doc["paths"][template][method]["responses"]
        assert str(response.status_code) in declared, (template, response.status_code)
        seen.add(response.status_code)
    assert seen == {400, 401, 404, 413, 422}
