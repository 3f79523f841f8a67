"""``POST /v1/groups`` reads its body as a stream (``serve_app.group_body``): a group of the
largest size is accepted with the default limits, the API's memory does not grow with it, and
bad bodies are refused as a whole-body parse refused them, naming the image by its place.

The real app under uvicorn on loopback with a real Redis; no models are needed.
"""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from core.settings import Settings
from core.store.jobs import Job, QueueName
from core.tokens import new_id
from tests.support.asgi import LocalApi, local_api

MODELS = ["object_detection"]


def images(n: int, url_length: int = 60) -> list[dict]:
    pad = "p" * max(0, url_length - 40)
    return [{"url": f"https://images.example.com/{pad}/{i}.jpg"} for i in range(n)]


@dataclass
class Api:
    running: LocalApi
    org: str
    key: str


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    async with local_api(settings.model_copy(update={"key_prefix": new_id("swgb")})) as running:
        org = new_id("org")
        yield Api(running, org, await running.ctx.store.accounts.create_api_key(org))


def client(api: Api) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=api.running.url, timeout=60, headers={"Authorization": f"Bearer {api.key}"})


async def test_the_largest_group_is_accepted_past_the_general_body_cap(api: Api) -> None:
    """10,000 images with 120-character URLs: 1.4 MB, past ``max_body_bytes`` (1 MiB), within
    ``max_group_body_bytes``; every image is written in order, and the bulk job lists them all."""
    running = api.running
    body = {"images": images(10_000, url_length=120), "models": MODELS}
    assert len(json.dumps(body)) > running.ctx.settings.max_body_bytes
    async with client(api) as http:
        response = await http.post("/v1/groups", json=body)
        assert response.status_code == 202, response.text[:300]
        group = response.json()
        assert group["counts"]["total"] == 10_000 and group["bulk"] is True
        store = running.ctx.store
        ids = await store.groups.image_ids(group["id"])
        assert len(ids) == 10_000
        for position in (0, 999, 1000, 7777, 9999):
            [record] = await store.images.get_many([ids[position]])
            assert record.url == body["images"][position]["url"] and record.group_id == group["id"]
        page = (await http.get("/v1/images", params={"groupId": group["id"], "limit": 5})).json()
        assert [i["id"] for i in page["data"]] == ids[:5]
        jobs = store.keys.job_queue(QueueName.BULK)
        [job_id] = await store.redis.lrange(jobs.org_queue(api.org), 0, -1)
        payload = json.loads(await store.redis.hget(jobs.job(job_id.decode()), "payload"))
        assert Job.from_payload(payload) == Job(models=MODELS, group_id=group["id"], image_ids=tuple(ids))


async def peak_bytes_while_posting(running: LocalApi, key: str, body: bytes, tmp_path: Path) -> int:
    """Python's peak allocation in this process (the API) while it accepts ``body``, sent by curl
    from another process so that no client buffer counts."""
    path = tmp_path / "body.json"
    path.write_bytes(body)
    tracemalloc.start()
    try:
        curl = await asyncio.create_subprocess_exec(
            "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", f"Authorization: Bearer {key}",
            "-H", "Content-Type: application/json", "--data-binary", f"@{path}", f"{running.url}/v1/groups",
            stdout=asyncio.subprocess.PIPE)
        status, _ = await curl.communicate()
        assert status == b"202", status
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


async def test_accepting_a_group_takes_the_same_memory_for_1000_and_10000_images(
    api: Api, tmp_path: Path
) -> None:
    """SPEC §8: the API's memory the same for 1k and 10k (±2 MB). A whole-body parse held the
    dicts and models of every image (about 10 MB more at 10,000)."""
    running, key = api.running, api.key
    peaks = {}
    for n in (1_000, 10_000, 1_000, 10_000):  # the first of each warms caches up
        body = json.dumps({"images": images(n), "models": MODELS}).encode()
        peaks[n] = await peak_bytes_while_posting(running, key, body, tmp_path)
    assert peaks[10_000] - peaks[1_000] < 1_000_000, peaks


async def test_a_bad_image_is_named_by_its_place_and_nothing_is_written(api: Api) -> None:
    body = {"images": images(2_500), "models": MODELS}
    body["images"][1500] = {"url": ""}
    body["images"][1999] = {"url": "https://images.example.com/x.jpg", "colour": "red"}
    body["images"][2200] = {"url": "ftp://images.example.com/x.jpg"}
    async with client(api) as http:
        response = await http.post("/v1/groups", json=body)
        assert response.status_code == 422, response.text[:300]
        fields = {e["field"] for e in response.json()["errors"]}
        assert "images.1500.url" in fields, fields  # the first bad chunk is the one reported
        body["images"][1500] = {"url": "https://images.example.com/ok.jpg"}
        response = await http.post("/v1/groups", json=body)
        assert [e["field"] for e in response.json()["errors"]] == ["images.1999.colour"]
        body["images"][1999] = {"url": "https://images.example.com/ok.jpg"}
        response = await http.post("/v1/groups", json=body)
        assert [e["field"] for e in response.json()["errors"]] == ["images.2200.url"]
        assert "scheme" in response.json()["detail"]
        listed = (await http.get("/v1/images")).json()
        assert listed["data"] == []


@pytest.mark.parametrize(("body", "status", "field"), [
    (b'{"images": [{"url": "https://a.example/1.jpg"}', 400, None),
    (b'x', 400, None),
    (b'[1,', 400, None),
    (b'[{"url": "https://a.example/1.jpg"}], 1', 400, None),
    (b'{"images": [{"url": "https://a.example/1.jpg", "metadata": {"n": ' + b"1" * 5_000 + b'}}]}', 400, None),
    (b'', 422, "body"),
    (b'"a group"', 422, "body"),
    (b'{"images": [{"url": "https://a.example/1.jpg"}], "models": ["object_detection"]} x', 400, None),
    (b'\xff{"images": []}', 400, None),
    (b'[{"url": "https://a.example/1.jpg"}]', 422, "body"),
    (b'{"models": ["object_detection"]}', 422, "images"),
    (b'{"images": [], "models": ["object_detection"]}', 422, "images"),
    (b'{"images": "https://a.example/1.jpg", "models": ["object_detection"]}', 422, "images"),
    (b'{"images": [{"url": "https://a.example/1.jpg"}], "images": [], "models": ["object_detection"]}', 422, "images"),
    (b'{"images": [{"url": "https://a.example/1.jpg"}], "models": ["nope"]}', 422, "models"),
    (b'{"images": [{"url": "https://a.example/1.jpg"}], "models": ["object_detection"], "x": 1}', 422, "x"),
])
async def test_a_body_that_is_not_a_group_is_refused(api: Api, body: bytes, status: int,
                                                     field: str | None) -> None:
    async with client(api) as http:
        response = await http.post("/v1/groups", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text[:300]
    problem = response.json()
    assert problem["type"].endswith("malformed-json" if status == 400 else "validation-error"), problem
    if field is not None:
        assert field in [e["field"] for e in problem["errors"]], problem


async def test_one_image_past_the_group_limit_is_refused_with_the_count(api: Api) -> None:
    running = api.running
    limit = running.ctx.settings.max_group_images
    async with client(api) as http:
        response = await http.post("/v1/groups", json={"images": images(limit + 1), "models": MODELS})
    assert response.status_code == 422
    assert f"at most {limit} images; this would make {limit + 1}" in response.json()["detail"]


async def test_a_body_past_the_limit_is_not_parsed_to_its_end(api: Api) -> None:
    """Parsing costs per item: once the limit is passed the rest of the body is only drained,
    so 1.2 million tiny items cost no more than the limit's worth (the answer says "or more")."""
    running = api.running
    limit = running.ctx.settings.max_group_images
    body = b'{"models": ["object_detection"], "images": [' + b",".join([b'{"url":"h"}'] * 1_200_000) + b"]}"
    async with client(api) as http:
        response = await http.post("/v1/groups", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text[:300]
    assert f"at most {limit} images; this would make {limit + 1} or more" in response.json()["detail"]


async def test_a_large_group_with_an_idempotency_key_runs_once(api: Api) -> None:
    """A body past the spools' in-memory part (on disk, replayed to the route a block at a
    time): the same group again, in another key order and spacing, is the first answer; a
    changed image is another request."""
    body = {"images": images(6_000), "models": MODELS}
    text = json.dumps(body)
    assert len(text) > 256 * 1024
    again = json.dumps({"models": MODELS, "images": body["images"]}, indent=1)
    async with client(api) as http:
        key = {"Idempotency-Key": new_id("idem"), "Content-Type": "application/json"}
        first = await http.post("/v1/groups", content=text, headers=key)
        assert first.status_code == 202, first.text[:300]
        replay = await http.post("/v1/groups", content=again, headers=key)
        assert replay.status_code == 202 and replay.headers["idempotent-replayed"] == "true"
        assert replay.json()["id"] == first.json()["id"]
        body["images"][5999] = {"url": "https://images.example.com/other.jpg"}
        other = await http.post("/v1/groups", json=body, headers=key)
        assert other.status_code == 422 and other.json()["type"].endswith("idempotency-key-reused")
        listed = (await http.get("/v1/images", params={"limit": 1})).json()
        assert listed["data"][0]["groupId"] == first.json()["id"]


async def test_only_the_group_routes_take_the_larger_cap(settings: Settings) -> None:
    capped = settings.model_copy(update={"key_prefix": new_id("swgb"), "max_group_body_bytes": 2_000_000})
    async with local_api(capped) as running:
        key = await running.ctx.store.accounts.create_api_key(new_id("org"))
        async with httpx.AsyncClient(base_url=running.url, timeout=60,
                                     headers={"Authorization": f"Bearer {key}"}) as http:
            within = {"images": images(10_000, url_length=120), "models": MODELS}  # 1.4 MB
            assert (await http.post("/v1/groups", json=within)).status_code == 202
            over = {"images": images(20_000, url_length=120), "models": MODELS}  # 2.8 MB
            assert (await http.post("/v1/groups", json=over)).status_code == 413
            image = {"url": "https://images.example.com/a.jpg", "models": MODELS, "metadata": {"x": "y" * 1_200_000}}
            refused = await http.post("/v1/images", json=image)
            assert refused.status_code == 413
            assert refused.json()["detail"] == f"the limit is {capped.max_body_bytes} bytes"


async def test_every_shape_error_is_told_at_once_before_any_url_refusal(api: Api) -> None:
    """As a whole-body validation did: the body's shape errors together (the images' and the
    other members'), and only then the URL policy."""
    async with client(api) as http:
        both_missing = (await http.post("/v1/groups", json={})).json()
        assert {e["field"] for e in both_missing["errors"]} == {"images", "models"}
        shape = (await http.post("/v1/groups", json={"images": [{"url": ""}], "models": []})).json()
        assert {e["field"] for e in shape["errors"]} == {"images.0.url", "models"}
        refused_url_and_no_models = {"images": [{"url": "ftp://images.example.com/x.jpg"}], "models": []}
        first = (await http.post("/v1/groups", json=refused_url_and_no_models)).json()
        assert [e["field"] for e in first["errors"]] == ["models"]
        many = {"images": images(1), "models": MODELS, **{f"k{i}": i for i in range(1_000)}}
        extra = (await http.post("/v1/groups", json=many)).json()
        assert extra["status"] == 422 and 0 < len(extra["errors"]) <= 32
        assert {e["type"] for e in extra["errors"]} == {"extra_forbidden"}


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
async def test_a_body_not_sent_as_json_is_refused_as_fastapi_refused_it(api: Api, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    body = json.dumps({"images": images(1), "models": MODELS}).encode()
    async with client(api) as http:
        response = await http.post("/v1/groups", content=body, headers=headers)
        assert "content-type" not in response.request.headers or content_type is not None
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "body", response.text
    async with client(api) as http:
        plus_json = await http.post("/v1/groups", content=body, headers={"Content-Type": "application/vnd.x+json"})
    assert plus_json.status_code == 202


async def test_the_size_limit_is_told_before_any_bad_image(settings: Settings) -> None:
    """The group's size first, as before, also when images past the limit were only counted
    (the first read stops checking them): never an image named at a wrong place."""
    small = settings.model_copy(update={"key_prefix": new_id("swgb"), "max_group_images": 1_500})
    async with local_api(small) as running:
        key = await running.ctx.store.accounts.create_api_key(new_id("org"))
        async with httpx.AsyncClient(base_url=running.url, timeout=60,
                                     headers={"Authorization": f"Bearer {key}"}) as http:
            group = (await http.post("/v1/groups", json={"images": images(1_000), "models": MODELS})).json()
            grow = {"images": images(700)}
            grow["images"][3] = {"url": "ftp://images.example.com/x.jpg"}
            too_many = (await http.post(f"/v1/groups/{group['id']}/images", json=grow)).json()
            assert "at most 1500 images; this would make 1501 or more" in too_many["detail"], too_many
            grow["images"] = grow["images"][:450]
            bad = (await http.post(f"/v1/groups/{group['id']}/images", json=grow)).json()
            assert [e["field"] for e in bad["errors"]] == ["images.3.url"], bad


async def test_metadata_within_its_limit_is_accepted_however_it_is_spelled(api: Api) -> None:
    """The bound on a value's text before it is decoded leaves room for indentation and
    escapes; the metadata limit itself counts the stored JSON."""
    running = api.running
    metadata = {"a": {"b": {"c": [0] * 8_000}}}
    assert len(json.dumps(metadata, separators=(",", ":"))) < running.ctx.settings.max_metadata_bytes
    body = json.dumps({"images": [{"url": "https://images.example.com/a.jpg", "metadata": metadata}],
                       "models": MODELS}, indent=8)
    assert len(body) > 8 * running.ctx.settings.max_metadata_bytes
    async with client(api) as http:
        response = await http.post("/v1/groups", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 202, response.text[:300]
