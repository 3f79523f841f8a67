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
