"""The engine's and the models' series reach Prometheus through the session Ray's metrics agent.

One good image and one whose URL answers 404 go through the session stack; then the node's
metrics endpoint (what Prometheus scrapes) must hold every series ``core.metrics`` documents,
with the labels an operator filters on: the org's queue depth, the fetch error's code, the model.
"""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest
import ray

from core.metrics import REFRESH_S
from tests.conftest import png_bytes
from tests.support.servers import ImageHost
from tests.test_api_images import auth, submit

pytestmark = pytest.mark.integration


async def finished(api: httpx.AsyncClient, key: str, image_id: str, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        record = (await api.get(f"/v1/images/{image_id}", headers=auth(key))).json()
        if record["status"] in ("complete", "failed"):
            return record
        assert time.monotonic() < deadline, record
        await asyncio.sleep(0.2)


async def test_engine_and_model_series_are_scraped(
    api: httpx.AsyncClient, api_key: str, org: str, image_host: ImageHost
) -> None:
    good = await submit(api, api_key, url=image_host.put("/metrics-good.png", png_bytes(seed=11)))
    missing = await submit(api, api_key, url=image_host.url("/metrics-missing.png"))
    assert (await finished(api, api_key, good["id"]))["status"] == "complete"
    assert (await finished(api, api_key, missing["id"]))["error"]["code"] == "http_error"

    expected = {
        "queue depth of the org": rf'ray_sightwire_queue_depth\{{[^}}]*org="{org}"[^}}]*queue="online"[^}}]*\}} 0',
        "dead letters": r'ray_sightwire_dead_letters\{[^}]*queue="bulk"',
        "jobs in flight": r'ray_sightwire_jobs_in_flight\{[^}]*queue="online"',
        "per-org cap": r'ray_sightwire_engine_org_cap\{[^}]*queue="online"[^}]*\} [1-9]',
        "fetch errors": r'ray_sightwire_fetch_errors_total\{[^}]*code="http_error"[^}]*\} [1-9]',
        "decode time": r"ray_sightwire_decode_ms_bucket\{",
        "model latency": r'ray_sightwire_model_latency_ms_count\{[^}]*model="object_detection"[^}]*\} [1-9]',
        "batch time": r'ray_sightwire_model_batch_ms_count\{[^}]*model="object_detection"[^}]*\} [1-9]',
        "batch size": r'ray_sightwire_model_batch_size_count\{[^}]*model="object_detection"[^}]*\} [1-9]',
    }
    port = ray.nodes()[0]["MetricsExportPort"]
    deadline = time.monotonic() + REFRESH_S + 25  # a gauge refresh, then Ray's export interval
    async with httpx.AsyncClient() as client:
        while True:
            text = (await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)).text
            absent = [what for what, pattern in expected.items() if not re.search(pattern, text)]
            if not absent:
                break
            assert time.monotonic() < deadline, f"not exported: {absent}"
            await asyncio.sleep(1)
