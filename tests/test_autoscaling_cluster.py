"""Autoscaling on Ray's fake multinode provider (SPEC §7): GPU nodes come when work needs them, and go.

The cluster is a real ``ray start --head`` with an autoscaler (``RAY_FAKE_CLUSTER=1``, the
``fake_multinode`` provider): its "GPU nodes" are raylets it starts on this machine, each with
one logical GPU (torch sees none, so the models run on CPU there). The head has no GPU, so:

1. Sightwire is served with a detector that asks for a GPU and may scale to zero
   (``min_replicas: 0``, ``SIGHTWIRE_GPU_POLICY=require``): once ready, no GPU node and no
   replica exist; a POST brings up a GPU node and a replica on it; the signed webhook arrives;
   then, idle, the replica goes and then its node.
2. A bulk run of the same detector with two actors on the same cluster brings up two GPU nodes
   and its batches run on both.

The driver is a child process (this process already belongs to the session's Ray): it runs
both parts and writes a report; the cluster is started and stopped (by its own processes) here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import psutil
import pytest

from core.settings import GpuPolicy, Settings
from tests.support.ray_cluster import RayCluster

ROOT = Path(__file__).resolve().parent.parent
IMAGES = 48  # enough batches of 8 to keep two detector actors busy
CHILD_TIMEOUT_S = 420
IDLE_TIMEOUT_S = 120.0
T = TypeVar("T")

pytestmark = [pytest.mark.cluster, pytest.mark.own_ray, pytest.mark.timeout(600)]

GPU_NODE = {"resources": {"CPU": 2, "GPU": 1, "object_store_memory": 100_000_000}, "node_config": {},
            "min_workers": 0, "max_workers": 2}


def autoscaler_config(cluster: RayCluster, head_cpus: int) -> dict[str, object]:
    """Ray's fake-multinode example config, with this cluster's GCS (never 6379) and node types."""
    return {
        "cluster_name": "sightwire-fake", "max_workers": 2, "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.1,  # an idle GPU node goes after 6 s
        "provider": {"type": "fake_multinode", "gcs_address": cluster.gcs_address, "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": head_cpus, "GPU": 0}, "node_config": {}, "max_workers": 0},
            "gpu_node": GPU_NODE,
        },
        "head_node_type": "ray.head.default", "auth": {}, "docker": {},
        **{key: [] for key in ("initialization_commands", "setup_commands", "head_setup_commands",
                               "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands",
                               "cluster_synced_files", "rsync_exclude", "rsync_filter")},
        "file_mounts": {}, "file_mounts_sync_continuously": False,
    }


@pytest.fixture
def cluster() -> Iterator[RayCluster]:
    head_cpus = 4
    # Serve drains the proxy of a node left without replicas for 30 s before the node counts as
    # idle; 1 s here, so an idle GPU node goes within seconds of its replica.
    cluster = RayCluster(workers=0, cpus_per_node=head_cpus,
                         env={"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "PYTHONPATH": str(ROOT),
                              "RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S": "1"})
    config = cluster.temp_dir / "autoscaler.json"
    config.write_text(json.dumps(autoscaler_config(cluster, head_cpus)))
    cluster.head_args = (f"--autoscaling-config={config}",)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
    leftovers = [p for p in psutil.process_iter(["cmdline"])
                 if str(cluster.temp_dir) in " ".join(p.info["cmdline"] or [])]
    assert not leftovers, f"processes of the fake cluster survived its stop: {leftovers}"


def test_gpu_nodes_come_for_work_and_go_when_idle(
    cluster: RayCluster, settings: Settings, tiny_models_dir: Path, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    app_settings = settings.model_copy(update={"key_prefix": "swfake", "models_dir": tiny_models_dir,
                                               "gpu_policy": GpuPolicy.REQUIRE})
    (tmp_path / "settings.json").write_text(app_settings.model_dump_json())
    child = subprocess.Popen(
        [sys.executable, __file__, cluster.gcs_address, str(tmp_path)],
        cwd=cluster.temp_dir,
        env={**cluster.process_env(), "PYTHONPATH": str(ROOT), "SIGHTWIRE_TEST_DASHBOARD": cluster.dashboard_url},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        output, _ = child.communicate(timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        output, _ = child.communicate()
        pytest.fail(f"the autoscaling run timed out:\n{output.decode()[-6000:]}")
    assert child.returncode == 0, output.decode()[-6000:]
    result = json.loads(report.read_text())

    serving = result["serve"]
    assert serving["gpu_nodes_when_ready"] == 0 and serving["replicas_when_ready"] == 0  # nothing idles on a GPU
    assert serving["webhook"] == {"type": "image.completed", "status": "complete", "verified": True}
    assert serving["replica_node"] in serving["gpu_nodes_brought_up"]  # the replica ran on a node made for it
    # Idle, the replica went (look_back_period_s 2, downscale_delay_s 1), then its node (idle_timeout_minutes 0.1):
    # the child waited for each, at most IDLE_TIMEOUT_S, and says how long it took.
    assert 0 <= serving["replica_gone_after_s"] <= serving["gpu_node_gone_after_s"] <= 2 * IDLE_TIMEOUT_S
    bulk = result["bulk"]
    assert bulk["statuses"] == {"complete": IMAGES}
    assert set(bulk["nodes_used"]) <= set(bulk["gpu_nodes"]), "a batch ran on a node without a GPU"
    assert len(bulk["nodes_used"]) >= 2, f"the pool did not spread over the GPU nodes it brought up: {bulk}"


# --- the child process: the driver ---------------------------------------------------------------

REGISTRY = """
models:
  object_detection:
    task: object-detection
    checkpoint: {models_dir}/tiny/object_detection
    input_size: {input_size}
    threshold: 0.05
    max_detections: 10
    timeout_s: 240
    batching: {{max_batch_size: 8, batch_wait_timeout_s: 0.01}}
    autoscaling: {{min_replicas: {min_replicas}, max_replicas: {max_replicas}, target_ongoing_requests: 8,
                  downscale_delay_s: 1, look_back_period_s: 2}}
    resources: {{num_cpus: 1, num_gpus: 1}}
"""


def wait(what: str, check: Callable[[], T], timeout_s: float = 180.0, every_s: float = 0.5) -> T:
    """Poll ``check()`` until it returns something truthy; fail with ``what`` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(every_s)
    raise TimeoutError(f"not seen within {timeout_s}s: {what}")


def gpu_nodes() -> list[str]:
    import ray

    return [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0]


def replica_nodes(deployment: str) -> list[str]:
    from ray.util.state import list_actors

    # The state API's address is this cluster's dashboard: left to find one, it refuses when it
    # sees several Ray instances on the machine (the test session's own is one).
    actors = list_actors(address=os.environ["SIGHTWIRE_TEST_DASHBOARD"], filters=[("state", "=", "ALIVE")],
                         limit=1000)
    return [a.node_id for a in actors
            if a.class_name.startswith("ServeReplica:") and a.class_name.endswith(f":{deployment}")]


def serve_part(settings: Settings, work: Path) -> dict[str, object]:
    import asyncio

    import httpx
    from ray import serve
    from standardwebhooks import Webhook

    from core.registry import load_registry
    from core.store import Store
    from serve_app.gateway import APP_NAME, build_app
    from serve_app.local import free_port
    from serve_app.stack import wait_ready
    from tests.conftest import png_bytes
    from tests.support.servers import ImageHost, WebhookReceiver

    registry_path = work / "serve_registry.yaml"
    registry_path.write_text(REGISTRY.format(models_dir=settings.models_dir, input_size=256, min_replicas=0,
                                             max_replicas=1))
    settings = settings.model_copy(update={"models": str(registry_path)})
    deployment = load_registry(settings.models, settings.models_dir).deployment_of("object_detection")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/", blocking=False)
    wait_ready(f"http://127.0.0.1:{port}", 240)
    found: dict[str, object] = {"gpu_nodes_when_ready": len(gpu_nodes()),
                                "replicas_when_ready": len(replica_nodes(deployment))}

    async def account() -> tuple[str, str]:
        store = Store.from_settings(settings)
        try:
            key = await store.accounts.create_api_key("org_fake")
            return key, (await store.accounts.webhook_secrets("org_fake"))[0]
        finally:
            await store.close()

    api_key, secret = asyncio.run(account())
    host, receiver = ImageHost().start(), WebhookReceiver().start()
    try:
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/images", headers={"Authorization": f"Bearer {api_key}"}, timeout=30,
            json={"url": host.put("/one.png", png_bytes(64, 48, seed=3)), "models": ["object_detection"],
                  "webhookUrl": receiver.url("/hook")},
        )
        assert response.status_code == 202, response.text
        found["gpu_nodes_brought_up"] = wait("a GPU node", gpu_nodes)
        found["replica_node"] = wait("a replica", lambda: replica_nodes(deployment))[0]
        [hook] = wait("the webhook", lambda: receiver.received, timeout_s=240)
        event = Webhook(secret).verify(hook.body, hook.headers)
        found["webhook"] = {"type": event["type"], "status": event["data"]["status"], "verified": True}
    finally:
        host.stop()
        receiver.stop()
    idle_since = time.monotonic()
    wait("the replica going", lambda: not replica_nodes(deployment), timeout_s=IDLE_TIMEOUT_S)
    found["replica_gone_after_s"] = round(time.monotonic() - idle_since, 1)
    wait("the GPU node going", lambda: not gpu_nodes(), timeout_s=IDLE_TIMEOUT_S)
    found["gpu_node_gone_after_s"] = round(time.monotonic() - idle_since, 1)
    serve.shutdown()
    return found


def bulk_part(settings: Settings, work: Path) -> dict[str, object]:
    from pipelines import bulk
    from pipelines.columns import NODE_PREFIX
    from pipelines.dataset import PipelineOptions
    from tests.conftest import png_bytes
    from tests.support.servers import ImageHost

    registry = work / "bulk_registry.yaml"
    # input_size 640: a batch of 8 takes ~0.3 s on one of these cores, longer than the loaders take
    # to deliver the next block, so blocks queue and the pool hands each to its least busy actor (at
    # 256 one actor could finish each block before the next arrived and took every block).
    registry.write_text(REGISTRY.format(models_dir=settings.models_dir, input_size=640, min_replicas=2,
                                        max_replicas=2))
    host = ImageHost().start()
    seen: set[str] = set()  # every GPU node alive during the run (an idle one may go before it ends)
    watching = threading.Event()

    def watch() -> None:
        while not watching.wait(0.5):
            seen.update(gpu_nodes())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        urls = [host.put(f"/{i}.png", png_bytes(48, 32, seed=i)) for i in range(IMAGES)]
        options = PipelineOptions(trace_nodes=True, fetch_batch_size=8, loader_cpus=0.25, wait_for_min_actors_s=240)
        frame = bulk.run(urls, ["object_detection"], profile=str(registry), models_dir=str(settings.models_dir),
                         settings=settings, progress=False, options=options)
    finally:
        watching.set()
        watcher.join()
        host.stop()
    return {"statuses": frame["status"].value_counts().to_dict(),
            "nodes_used": sorted(set(frame[NODE_PREFIX + "object_detection"])), "gpu_nodes": sorted(seen)}


def main(gcs_address: str, work: str) -> None:
    import ray

    from core.settings import RAY_NAMESPACE

    folder = Path(work)
    settings = Settings.model_validate_json((folder / "settings.json").read_text())
    ray.init(address=gcs_address, namespace=RAY_NAMESPACE, log_to_driver=False)
    try:
        result = {"serve": serve_part(settings, folder), "bulk": bulk_part(settings, folder)}
    finally:
        ray.shutdown()
    (folder / "report.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
