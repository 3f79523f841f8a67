"""What is accepted can be serialised (issue 15, item 2): bounded depth, UTF-8 size, finite
numbers and encodable text in every free-form field, and no 500 from stored content.

The real app under uvicorn on loopback with a real Redis; no models are needed. Bodies are sent
as raw bytes where ``json.dumps`` could not write them (``1e400``, lone surrogates).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from core.settings import Settings
from core.tokens import new_id
from core.wire_json import MAX_JSON_DEPTH
from serve_app.context import ApiContext
from tests.support.asgi import local_api

URL = "http://example.com/a.png"
MODELS = ["object_detection"]
LIMIT = 16_384  # Settings.max_metadata_bytes


@pytest.fixture
async def api(settings: Settings, org: str) -> AsyncIterator[tuple[httpx.AsyncClient, ApiContext]]:
    api_settings = settings.model_copy(update={"key_prefix": new_id("swjson"), "max_metadata_bytes": LIMIT})
    async with local_api(api_settings) as local:
        key = await local.ctx.store.accounts.create_api_key(org)
        async with httpx.AsyncClient(base_url=local.url, timeout=30,
                                     headers={"Authorization": f"Bearer {key}",
                                              "Content-Type": "application/json"}) as http:
            yield http, local.ctx


def nested(depth: int) -> str:
    """JSON text of an object ``depth`` levels deep (2 KB at 300, as in the issue)."""
    return '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)


def image_body(metadata: str, url: str = f'"{URL}"') -> str:
    return f'{{"url": {url}, "models": {json.dumps(MODELS)}, "metadata": {metadata}}}'


def group_body(image_metadata: str) -> str:
    images = f'[{{"url": "{URL}"}}, {{"url": "{URL}", "metadata": {image_metadata}}}]'
    return f'{{"models": {json.dumps(MODELS)}, "images": {images}}}'


def refused(response: httpx.Response, field: str, words: str) -> None:
    assert response.status_code == 422, (response.status_code, response.text[:400])
    assert response.headers["content-type"] == "application/problem+json"
    [error] = response.json()["errors"]
    assert error["field"] == field and words in error["message"], error


BAD_METADATA = [
    pytest.param(nested(300), "nested deeper", id="300-deep"),
    pytest.param(nested(MAX_JSON_DEPTH + 1), "nested deeper", id="one-past-the-depth"),
    pytest.param('{"price": 1e400}', "not a JSON number", id="1e400"),
    pytest.param('{"a": [1, NaN]}', "not a JSON number", id="NaN"),
    pytest.param('{"a": {"b": -Infinity}}', "not a JSON number", id="-Infinity"),
    pytest.param('{"a": "\\ud800"}', "lone surrogate", id="lone-surrogate"),
    pytest.param('{"\\udfff": 1}', "lone surrogate", id="surrogate-key"),
]


@pytest.mark.parametrize(("metadata", "words"), BAD_METADATA)
async def test_unserialisable_metadata_is_422_naming_the_field(api: tuple[httpx.AsyncClient, ApiContext],
                                                                metadata: str, words: str) -> None:
    http, _ = api
    refused(await http.post("/v1/images", content=image_body(metadata)), "metadata", words)
    group = await http.post("/v1/groups", content=group_body(metadata))
    refused(group, "images.1.metadata", words)
    listed = (await http.get("/v1/images")).json()["data"]
    assert listed == [], "nothing refused was stored"


async def test_the_deepest_accepted_metadata_reads_back(api: tuple[httpx.AsyncClient, ApiContext]) -> None:
    http, _ = api
    created = await http.post("/v1/images", content=image_body(nested(MAX_JSON_DEPTH)))
    assert created.status_code == 202, created.text[:300]
    read = await http.get(f"/v1/images/{created.json()['id']}")
    assert read.status_code == 200 and read.json()["metadata"] == json.loads(nested(MAX_JSON_DEPTH))


@pytest.mark.parametrize(("field", "reported"), [("url", "url"), ("externalId", "externalId"),
                                                ("webhookUrl", "webhookUrl"), ("models", "models.0")])
async def test_text_fields_must_be_encodable(api: tuple[httpx.AsyncClient, ApiContext], field: str,
                                             reported: str) -> None:
    """A lone surrogate in any text field is a 422 naming it (before: ``models`` answered 500
    while rendering its own error; pydantic refused it only in length-constrained fields)."""
    http, _ = api
    body: dict[str, Any] = {"url": URL, "models": MODELS}
    body[field] = ["SURROGATE"] if field == "models" else "http://example.com/SURROGATE"
    response = await http.post("/v1/images", content=json.dumps(body).replace("SURROGATE", "\\ud800"))
    assert response.status_code == 422, (response.status_code, response.text[:300])
    [error] = response.json()["errors"]
    assert error["field"] == reported and ("surrogate" in error["message"] or "unicode" in error["message"]), error


def metadata_of_size(size: int, char: str) -> dict[str, str]:
    """``{"k": char * n}`` whose compact UTF-8 JSON is exactly ``size`` bytes."""
    overhead = len(b'{"k":""}')
    width = len(char.encode())
    assert (size - overhead) % width == 0
    return {"k": char * ((size - overhead) // width)}


@pytest.mark.parametrize("char", ["e", "é", "€", "😀"], ids=["1-byte", "2-byte", "3-byte", "4-byte"])
async def test_metadata_size_is_counted_in_utf8_bytes(api: tuple[httpx.AsyncClient, ApiContext], char: str) -> None:
    http, _ = api
    width = len(char.encode())
    at_limit = metadata_of_size(LIMIT - (LIMIT - 8) % width, char)
    accepted = await http.post("/v1/images", json={"url": URL, "models": MODELS, "metadata": at_limit})
    assert accepted.status_code == 202, accepted.text[:300]
    assert (await http.get(f"/v1/images/{accepted.json()['id']}")).json()["metadata"] == at_limit
    over = {"k": at_limit["k"] + char}
    response = await http.post("/v1/images", json={"url": URL, "models": MODELS, "metadata": over})
    refused(response, "metadata", f"the limit is {LIMIT}")


async def test_stored_content_never_makes_a_read_fail(api: tuple[httpx.AsyncClient, ApiContext]) -> None:
    """A record written before these bounds (the issue's 300-deep metadata, a lone surrogate)
    still reads: its metadata as null, the rest of the record intact."""
    http, ctx = api
    image = (await http.post("/v1/images", json={"url": URL, "models": MODELS})).json()
    group = (await http.post("/v1/groups", json={"models": MODELS, "images": [{"url": URL}]})).json()
    for stored in (nested(300), '{"a": "\\ud800"}'):
        await ctx.store.redis.hset(ctx.store.keys.image(image["id"]), "metadata", stored)
        await ctx.store.redis.hset(ctx.store.keys.group(group["id"]), "metadata", stored)
        for path in (f"/v1/images/{image['id']}", "/v1/images", f"/v1/groups/{group['id']}"):
            response = await http.get(path)
            assert response.status_code == 200, (path, response.status_code, response.text[:300])
        read = (await http.get(f"/v1/images/{image['id']}")).json()
        assert read["metadata"] is None and read["id"] == image["id"] and read["url"] == URL
