"""An operator sets an org's weight (issue 14): the admin route and ``sightwire orgs weight``.

The real app under uvicorn on loopback with a real Redis (no models needed); the CLI in-process
against the same Redis. What the engine does with a weight: ``tests/test_engine.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from core.settings import Settings
from core.store import Store
from core.tokens import new_id
from serve_app.cli import main
from tests.support.asgi import local_api

BAD_WEIGHTS = [0, -1, 1 / 128, 64.5, "2", True, [2]]


@dataclass
class Admin:
    http: httpx.AsyncClient
    store: Store
    operator_key: str
    org_key: str
    org: str

    async def put(self, org: str, body: object, key: str | None = None) -> httpx.Response:
        return await self.http.put(f"/v1/admin/orgs/{org}/weight", json=body,
                                   headers={"Authorization": f"Bearer {key or self.operator_key}"})

    async def get(self, org: str, key: str | None = None) -> httpx.Response:
        return await self.http.get(f"/v1/admin/orgs/{org}/weight",
                                   headers={"Authorization": f"Bearer {key or self.operator_key}"})


@pytest.fixture
async def admin(settings: Settings, org: str) -> AsyncIterator[Admin]:
    async with local_api(settings.model_copy(update={"key_prefix": new_id("swadm")})) as api:
        store = api.ctx.store
        org_key = await store.accounts.create_api_key(org)
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
            yield Admin(http, store, await store.operators.create_key(), org_key, org)


def problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return response.json()


async def test_an_operator_reads_sets_and_resets_an_orgs_weight(admin: Admin) -> None:
    assert (await admin.get(admin.org)).json() == {"org": admin.org, "weight": 1.0}
    response = await admin.put(admin.org, {"weight": 2})
    assert response.status_code == 200, response.text
    assert response.json() == {"org": admin.org, "weight": 2.0}
    assert (await admin.get(admin.org)).json()["weight"] == 2.0
    assert await admin.store.weights.all() == {admin.org: 2.0}  # what the processors refresh from
    assert (await admin.put(admin.org, {"weight": 0.25})).json()["weight"] == 0.25
    assert (await admin.put(admin.org, {"weight": None})).json()["weight"] == 1.0  # back to the default
    assert await admin.store.weights.all() == {}


@pytest.mark.parametrize("weight", BAD_WEIGHTS)
async def test_a_bad_weight_is_a_422_problem_and_changes_nothing(admin: Admin, weight: object) -> None:
    await admin.put(admin.org, {"weight": 3})
    body = problem(await admin.put(admin.org, {"weight": weight}), 422)
    assert body["errors"][0]["field"] == "weight"
    assert await admin.store.weights.get(admin.org) == 3.0


async def test_malformed_or_incomplete_bodies_are_problems(admin: Admin) -> None:
    for body, status in (({}, 422), ({"weight": 2, "extra": 1}, 422)):
        problem(await admin.put(admin.org, body), status)
    for raw in (b'{"weight": NaN}', b'{"weight": Infinity}', b'{"weight": 1e400}'):  # Python's json reads all three
        response = await admin.http.put(f"/v1/admin/orgs/{admin.org}/weight", content=raw,
                                        headers={"Authorization": f"Bearer {admin.operator_key}",
                                                 "content-type": "application/json"})
        assert problem(response, 422)["errors"][0]["field"] == "weight", raw
    problem(await admin.http.put(f"/v1/admin/orgs/{admin.org}/weight", content=b"{",
                                 headers={"Authorization": f"Bearer {admin.operator_key}",
                                          "content-type": "application/json"}), 400)
    assert await admin.store.weights.all() == {}


async def test_only_an_operator_key_may_and_only_for_an_org_that_exists(admin: Admin) -> None:
    assert problem(await admin.put(admin.org, {"weight": 2}, key=admin.org_key), 403)["type"].endswith("/forbidden")
    problem(await admin.get(admin.org, key=admin.org_key), 403)
    problem(await admin.http.get(f"/v1/admin/orgs/{admin.org}/weight"), 401)
    problem(await admin.get(admin.org, key="swop_not-a-key"), 401)
    problem(await admin.put(new_id("org"), {"weight": 2}), 404)
    [listed] = await admin.store.operators.list_keys()
    assert await admin.store.operators.revoke_key(listed.id)
    problem(await admin.put(admin.org, {"weight": 2}), 401)  # revoked: at once
    assert await admin.store.weights.all() == {}


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The CLI in a thread: it runs its own event loop."""
    code = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_the_cli_reads_and_sets_weights_and_refuses_bad_ones(
    admin: Admin, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("SIGHTWIRE_KEY_PREFIX", admin.store.keys.prefix)
    org = admin.org
    expected = json.dumps({"org": org, "weight": 1.0}) + "\n"
    assert await cli(capsys, "orgs", "weight", org, "--json") == (0, expected, "")
    assert (await cli(capsys, "orgs", "weight", org, "2.5"))[1] == f"{org} weight 2.5\n"
    assert json.loads((await cli(capsys, "orgs", "weight", org, "--json"))[1]) == {"org": org, "weight": 2.5}
    assert (await admin.get(org)).json()["weight"] == 2.5  # the route reads what the CLI wrote
    for bad in ("abc", "0", "100", "nan", "inf"):
        code, out, err = await cli(capsys, "orgs", "weight", org, bad)
        assert (code, out) == (1, "") and err.startswith("error: "), (bad, err)
    assert (await cli(capsys, "orgs", "weight", new_id("org"), "2"))[0] == 1
    assert json.loads((await cli(capsys, "orgs", "weight", org, "default", "--json"))[1])["weight"] == 1.0
    assert await admin.store.weights.all() == {}


async def test_operator_keys_are_minted_listed_and_revoked_by_the_cli(
    admin: Admin, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("SIGHTWIRE_KEY_PREFIX", admin.store.keys.prefix)
    key = (await cli(capsys, "operator-keys", "create"))[1].splitlines()[-1]
    assert key.startswith("swop_")
    assert (await admin.get(admin.org, key=key)).status_code == 200
    listed = (await cli(capsys, "operator-keys", "list"))[1].splitlines()
    assert len(listed) == 2 and key not in "".join(listed)  # the fixture's and this one; ids only
    for line in listed:
        assert (await cli(capsys, "operator-keys", "revoke", line.split()[0]))[0] == 0
    problem(await admin.get(admin.org, key=key), 401)
    assert (await cli(capsys, "operator-keys", "revoke", "key_nothing"))[0] == 1
