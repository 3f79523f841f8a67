"""Key lifecycle (issue 12): ``sightwire keys list/revoke`` and ``secret show`` on the real stack.

The CLI runs in-process (``serve_app.cli.main``) against the stack's Redis; a revoked key's very
next request is a 401.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from core.settings import Settings
from core.store.accounts import key_id_of
from core.tokens import hash_api_key, new_id
from serve_app.cli import main
from serve_app.stack import LocalStack

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cli_env(stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", stack.settings.redis_url)
    monkeypatch.setenv("SIGHTWIRE_KEY_PREFIX", stack.settings.key_prefix)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_list_revoke_and_secret_show(stack: LocalStack, cli_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    org = new_id("org")
    first = run(capsys, "keys", "create", "--org", org).splitlines()[-1]
    second = run(capsys, "keys", "create", "--org", org).splitlines()[-1]
    listed = run(capsys, "keys", "list", "--org", org).splitlines()
    assert len(listed) == 2 and all(line.startswith("key_") for line in listed)
    assert first not in "".join(listed) and second not in "".join(listed)  # ids, never the keys

    with httpx.Client(base_url=stack.url, timeout=30) as http:
        def status(key: str) -> int:
            return http.get("/v1/images", headers={"Authorization": f"Bearer {key}"}).status_code

        assert status(first) == 200 and status(second) == 200
        first_id, second_id = (key_id_of(hash_api_key(key)) for key in (first, second))
        assert [line.split()[0] for line in listed] == [first_id, second_id]  # oldest first
        assert "revoked" in run(capsys, "keys", "revoke", first_id)
        assert (status(first), status(second)) == (401, 200)  # at once, and only that key
        assert [line.split()[0] for line in run(capsys, "keys", "list", "--org", org).splitlines()] == [second_id]

    with pytest.raises(SystemExit, match="no key"):
        main(["keys", "revoke", first_id])
    assert run(capsys, "secret", "show", "--org", org).strip().startswith("whsec_")
    limits = run(capsys, "keys", "limits", "--org", org, "--requests-per-s", "20", "--images-per-min", "0")
    assert limits.split() == ["requests_per_s=20.0", "images_per_min=0.0"]
    reset = run(capsys, "keys", "limits", "--org", org, "--requests-per-s", "default")
    assert reset.split()[0] == "requests_per_s=default"
    ghost = new_id("org")
    with pytest.raises(SystemExit, match=f"no org {ghost}"):
        main(["secret", "show", "--org", ghost])
    assert "has no keys" in run(capsys, "keys", "list", "--org", ghost)
    with pytest.raises(SystemExit, match=f"no org {ghost}"):  # still none: show created nothing
        main(["secret", "show", "--org", ghost])


def test_key_and_secret_commands_print_json_with_json(
    stack: LocalStack, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--json`` prints the record (the key once, on create) for scripts to parse."""
    org = new_id("org")
    created = json.loads(run(capsys, "keys", "create", "--org", org, "--json"))
    assert created["org"] == org and created["id"] == key_id_of(hash_api_key(created["key"]))
    listed = json.loads(run(capsys, "keys", "list", "--org", org, "--json"))
    assert [(k["id"], k["org"]) for k in listed] == [(created["id"], org)] and "key" not in listed[0]
    assert listed[0]["createdAt"]
    limits = json.loads(run(capsys, "keys", "limits", "--org", org, "--requests-per-s", "5", "--json"))
    assert limits == {"org": org, "requests_per_s": 5.0, "images_per_min": None}
    secret = json.loads(run(capsys, "secret", "show", "--org", org, "--json"))
    assert secret["org"] == org and secret["secret"].startswith("whsec_")
    revoked = json.loads(run(capsys, "keys", "revoke", created["id"], "--json"))
    assert revoked == listed[0] | {"revoked": True}
    assert json.loads(run(capsys, "keys", "list", "--org", org, "--json")) == []


HEAVY = ("torch", "transformers", "ray")


def test_the_store_commands_load_neither_ray_nor_the_models(settings: Settings) -> None:
    """``keys create`` on a cluster's Redis took 7.6 s, most of it importing torch and transformers
    through the local stack's module; an operator's store command needs neither, nor Ray."""
    probe = ("import sys; from serve_app.cli import main; code = main(['keys', 'create', '--org', 'acme']); "
             f"print(code, [m for m in {HEAVY!r} if m in sys.modules])")
    env = {**os.environ, "REDIS_URL": settings.redis_url, "SIGHTWIRE_KEY_PREFIX": new_id("k"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "client")])}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "0 []", done.stdout
