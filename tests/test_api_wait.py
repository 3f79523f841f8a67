"""``Prefer: wait=N`` on ``POST /v1/images`` (issue 12): finished in time, or the usual 202.

In time: on the session's real stack (processor, tiny models, finalize publishing). Not in time:
the real app under uvicorn with no processor behind it, so the image never finishes.
"""

from __future__ import annotations

import time

import httpx
import pytest

from core.settings import Settings
from core.tokens import new_id
from serve_app.routes.images import preferred_wait
from tests.conftest import png_bytes
from tests.support.asgi import local_api
from tests.support.servers import ImageHost

pytestmark = pytest.mark.integration


def auth(key: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **extra}


async def test_wait_answers_200_with_the_finished_record(
    api: httpx.AsyncClient, api_key: str, image_host: ImageHost
) -> None:
    body = {"url": image_host.put("/wait.png", png_bytes(seed=21)), "models": ["object_detection"]}
    response = await api.post("/v1/images", json=body, headers=auth(api_key, Prefer="wait=30"))
    assert response.status_code == 200, response.text
    assert response.headers["preference-applied"] == "wait=30"
    record = response.json()
    assert record["status"] == "complete" and record["models"]["object_detection"]["status"] == "complete"
    assert response.headers["location"] == f"/v1/images/{record['id']}"


async def test_wait_not_met_answers_the_usual_202_after_n_seconds(settings: Settings, org: str) -> None:
    async with local_api(settings.model_copy(update={"key_prefix": new_id("swwait")})) as app:
        key = await app.ctx.store.accounts.create_api_key(org)
        async with httpx.AsyncClient(base_url=app.url, timeout=30) as http:
            started = time.monotonic()
            response = await http.post("/v1/images", headers=auth(key, Prefer="respond-async, wait=1"),
                                       json={"url": "http://example.com/w.png", "models": ["object_detection"]})
            waited = time.monotonic() - started
    assert response.status_code == 202 and "preference-applied" not in response.headers
    assert response.json()["status"] == "queued"
    assert 1.0 <= waited < 5.0


def test_prefer_header_parsing() -> None:
    assert preferred_wait("wait=5") == 5
    assert preferred_wait("respond-async, wait=10") == 10
    assert preferred_wait("wait=600") == 60  # capped
    assert all(preferred_wait(header) is None for header in (None, "wait=abc", "return=minimal"))
