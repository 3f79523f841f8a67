"""``serve_app:app`` builds a locally built profile where its models run, or refuses with the reason.

On the session's (one-node) Ray: the build runs as a task on every alive node; a node that cannot
build names itself and the way out. Before Ray is connected (``serve run serve_app:app`` imports
the app first) it is built on this machine. The multi-node case runs in ``test_cluster_deploy``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray
from ray.serve.deployment import Application

import serve_app
from core.settings import Settings
from core.tokens import new_id
from notifier import notifier_handle
from serve_app.node_profiles import ProfileUnavailable, prepare

ROOT = Path(__file__).resolve().parent.parent
MARKER = Path("tiny") / ".sightwire-tiny-ready"


def test_the_tiny_profile_is_built_on_every_alive_node(ray_session: None, tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    built_on = prepare(Settings(models="tiny", models_dir=models_dir))
    assert built_on == [node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]]
    assert (models_dir / MARKER).is_file()


def test_a_node_that_cannot_build_the_profile_refuses_the_app_with_the_reason(
    ray_session: None, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    [address] = [node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]]
    with pytest.raises(ProfileUnavailable, match=rf"node {address}: .*cannot be built in .*SIGHTWIRE_MODELS_DIR"):
        prepare(Settings(models="tiny", models_dir=blocker / "models"))


def test_downloaded_profiles_are_left_alone(ray_session: None, tmp_path: Path) -> None:
    assert prepare(Settings(models="pretrained", models_dir=tmp_path / "models")) == []
    assert not (tmp_path / "models").exists()


def test_serve_app_app_builds_the_tiny_profile_before_binding(
    ray_session: None, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIGHTWIRE_MODELS", "tiny")
    monkeypatch.setenv("SIGHTWIRE_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("REDIS_URL", settings.redis_url)  # the builder checks the store first
    prefix = new_id("swbuild")
    monkeypatch.setenv("SIGHTWIRE_KEY_PREFIX", prefix)
    try:
        assert isinstance(serve_app.app, Application)
        assert (tmp_path / "models" / MARKER).is_file()
    finally:  # the builder started this prefix's notifier; nothing else uses it
        ray.kill(notifier_handle(Settings.from_env()), no_restart=True)


def test_without_ray_the_profile_is_built_on_this_machine_and_the_log_says_so(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SIGHTWIRE_MODELS": "tiny",
           "SIGHTWIRE_MODELS_DIR": str(tmp_path / "models")}
    done = subprocess.run(
        [sys.executable, "-c", "import logging, ray; logging.basicConfig(); from core.settings import Settings; "
                               "from serve_app.node_profiles import prepare; print(prepare(Settings.from_env())); "
                               "assert not ray.is_initialized()"],
        env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "on this machine only" in done.stderr and "serve deploy cluster/serve_config.yaml" in done.stderr
    assert (tmp_path / "models" / MARKER).is_file()
