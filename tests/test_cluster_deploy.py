"""``serve deploy cluster/serve_config.yaml`` onto a running multi-node Ray cluster, end to end.

A head and a worker node are started with ``ray start`` (``tests.support.ray_cluster``); their
processes see neither the repository (no PYTHONPATH, another working directory) nor the test's
settings. The shipped serve config is deployed with only its values changed for this machine
(the zip ``tools/package.py`` builds at a ``file://`` path, a private Redis, a fresh models folder,
loopback ports), so the code and the settings reach the replicas through its ``runtime_env``,
and the ``tiny`` profile is built on the nodes by ``serve_app:app``. A POST through the cluster's
proxy then reaches a loopback receiver as a webhook that verifies with ``standardwebhooks``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from standardwebhooks import Webhook

from core.registry import load_registry
from serve_app.local import RedisServer, free_port
from serve_app.stack import wait_ready as wait_until_ready
from tests.conftest import png_bytes
from tests.support.ray_cluster import BIN, RayCluster
from tests.support.servers import ImageHost, WebhookReceiver
from tools.package import build as build_package

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "cluster" / "serve_config.yaml"
MODELS = ["object_detection", "room_classification", "condition_score", "quality_score"]
READY_TIMEOUT_S = 180.0
CPUS_PER_NODE = 2

pytestmark = [pytest.mark.cluster, pytest.mark.own_ray, pytest.mark.timeout(420)]


def deploy_config(cluster_tmp: Path, redis_url: str, models_dir: Path, port: int) -> Path:
    """The shipped serve config with this machine's values; every key it sets is the shipped one.

    Beside them, as an operator would in the same file, each model deployment asks for a whole
    node's CPUs: one node cannot hold both, so the code must reach both nodes (with the tiny
    profile's zero-CPU asks, Ray may pack every replica onto one node and prove nothing)."""
    config = yaml.safe_load(SHIPPED.read_text())
    [app] = config["applications"]
    runtime_env = app["runtime_env"]
    shipped_zip = runtime_env["working_dir"]
    assert shipped_zip.startswith("file://"), shipped_zip
    package = build_package(cluster_tmp / "dist")
    assert package.name == Path(shipped_zip).name, "the shipped config names another version's zip"
    runtime_env["working_dir"] = package.as_uri()
    values = {
        "REDIS_URL": redis_url, "SIGHTWIRE_KEY_PREFIX": "swcluster", "SIGHTWIRE_MODELS": "tiny",
        "SIGHTWIRE_MODELS_DIR": str(models_dir), "SIGHTWIRE_ALLOW_PRIVATE_CIDRS": "127.0.0.0/8",
        "SIGHTWIRE_GPU_POLICY": runtime_env["env_vars"]["SIGHTWIRE_GPU_POLICY"],  # tiny asks for none
        "SIGHTWIRE_LOG_FORMAT": "json",
    }
    assert set(values) == set(runtime_env["env_vars"]), "the shipped config's settings changed: update this test"
    runtime_env["env_vars"] = values
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    registry = load_registry("tiny", models_dir)
    model_deployments = sorted({registry.deployment_of(name) for name in MODELS})
    assert len(model_deployments) >= 2, model_deployments
    app["deployments"] = [{"name": name, "ray_actor_options": {"num_cpus": CPUS_PER_NODE, "num_gpus": 0}}
                          for name in model_deployments]
    path = cluster_tmp / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def cluster() -> Iterator[RayCluster]:
    running = RayCluster(workers=1, cpus_per_node=CPUS_PER_NODE).start()
    try:
        yield running
    finally:
        running.stop()
    assert not running.processes(), "processes of the test cluster survived its stop"


def cli(cluster: RayCluster, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(list(args), env={**cluster.process_env(), **(env or {})}, cwd=cluster.temp_dir,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def wait_ready(cluster: RayCluster, url: str) -> None:
    try:
        wait_until_ready(url, READY_TIMEOUT_S)
    except RuntimeError as exc:
        status = cli(cluster, str(BIN / "serve"), "status", "--address", cluster.dashboard_url)
        pytest.fail(f"{exc}; serve status:\n{status}")


def test_serve_deploy_ships_code_and_settings_to_a_multi_node_cluster(
    cluster: RayCluster, redis_server: RedisServer, image_host: ImageHost, receiver: WebhookReceiver,
) -> None:
    models_dir = cluster.temp_dir / "models"  # does not exist yet: the deploy builds it on the nodes
    port = free_port()
    config = deploy_config(cluster.temp_dir, redis_server.url, models_dir, port)
    cli(cluster, str(BIN / "serve"), "deploy", str(config), "--address", cluster.dashboard_url)
    url = f"http://127.0.0.1:{port}"
    wait_ready(cluster, url)
    assert (models_dir / "tiny" / ".sightwire-tiny-ready").is_file()

    # The replicas run in the unpacked working_dir, on both nodes (each model deployment fills one).
    replicas = [p for p in cluster.processes() if "ServeReplica:sightwire" in " ".join(p.cmdline())]
    assert replicas, "no Serve replica processes found"
    for replica in replicas:
        assert "runtime_resources/working_dir_files" in replica.cwd(), (replica.cmdline(), replica.cwd())
    assert {cluster.node_of(replica) for replica in replicas} == {0, 1}, "all replicas ran on one node"

    # Keys and secrets come from the cluster's Redis, through the CLI as an operator would.
    store_env = {"REDIS_URL": redis_server.url, "SIGHTWIRE_KEY_PREFIX": "swcluster", "PYTHONPATH": str(ROOT)}
    api_key = cli(cluster, sys.executable, "-m", "serve_app.cli", "keys", "create", "--org", "acme",
                  env=store_env).strip().splitlines()[-1]
    secret = cli(cluster, sys.executable, "-m", "serve_app.cli", "secret", "show", "--org", "acme",
                 env=store_env).strip()

    image_url = image_host.put("/cluster.png", png_bytes(64, 48, seed=7))
    response = httpx.post(f"{url}/v1/images", headers={"Authorization": f"Bearer {api_key}"}, timeout=30,
                          json={"url": image_url, "models": MODELS, "webhookUrl": receiver.url("/hook")})
    assert response.status_code == 202, response.text
    image_id = response.json()["id"]

    received = receiver.wait_for(lambda got: any(b'"image.completed"' in r.body for r in got), timeout_s=90)
    [hook] = [r for r in received if b'"image.completed"' in r.body]
    payload = Webhook(secret).verify(hook.body, hook.headers)
    assert payload["type"] == "image.completed"
    assert payload["data"]["id"] == image_id
    statuses = {name: result["status"] for name, result in payload["data"]["models"].items()}
    assert statuses == dict.fromkeys(MODELS, "complete"), json.dumps(payload["data"]["models"])[:2000]
