"""Bulk inference spreads over the nodes of a multi-node Ray cluster.

The session's Ray cannot host more nodes, so the test runs this file as a script in a child
process: it starts its own ``ray.cluster_utils.Cluster`` (a head for the driver and the
loaders, two worker nodes with room for one detector actor each) in its own temp dir — its
address file stays there, so no other ``ray.init`` on the machine can stumble into it — runs
``bulk.run`` with node tracing, and reports which node ran each batch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IMAGES = 48  # enough batches (of 8) for the pipeline to keep two detector actors busy


def test_bulk_inference_runs_on_several_nodes(tiny_models_dir: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    ray_tmp = tempfile.mkdtemp(prefix="swmn")  # short: Ray's socket paths live under it
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=ray_tmp, PYTHONPATH=str(ROOT))
    child = subprocess.Popen(
        [sys.executable, __file__, str(tiny_models_dir), str(report)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        output, _ = child.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)  # the child's own session: its cluster's processes
        output, _ = child.communicate()
        pytest.fail(f"the multi-node run timed out:\n{output.decode()[-4000:]}")
    assert child.returncode == 0, output.decode()[-4000:]

    result = json.loads(report.read_text())
    assert result["statuses"] == {"complete": IMAGES}
    used = set(result["nodes_used"])
    assert used <= set(result["worker_nodes"]), "inference ran on a node without room for a detector"
    assert len(used) >= 2, f"inference ran on one node only: {result}"


# --- the child process ---------------------------------------------------------------------------


# input_size 640: a batch of 8 takes ~0.3 s on one of these cores, longer than the loaders take
# to deliver the next block, so blocks queue and the pool hands each to its least busy actor. At
# 256 a batch took ~0.05 s: one actor could finish each block before the next arrived, and then
# every block went to the same actor (seen once in the full suite).
REGISTRY = """
models:
  object_detection:
    task: object-detection
    checkpoint: {models_dir}/tiny/object_detection
    input_size: 640
    threshold: 0.05
    max_detections: 10
    batching: {{max_batch_size: 8, batch_wait_timeout_s: 0.01}}
    autoscaling: {{min_replicas: 2, max_replicas: 2, target_ongoing_requests: 8}}
    resources: {{num_cpus: 2, num_gpus: 0}}
"""


def main(models_dir: str, report: str) -> None:
    import ipaddress

    import ray
    from ray.cluster_utils import Cluster

    from core.settings import RAY_NAMESPACE, Settings
    from pipelines import bulk
    from pipelines.columns import NODE_PREFIX
    from pipelines.dataset import PipelineOptions
    from tests.conftest import png_bytes
    from tests.support.servers import ImageHost

    # The head runs the driver and the loaders; each worker node fits exactly one detector
    # actor (2 CPUs), so a pool of two detectors must use both worker nodes.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    host = ImageHost().start()
    try:
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace=RAY_NAMESPACE, log_to_driver=False)
        registry = Path(report).with_name("registry.yaml")
        registry.write_text(REGISTRY.format(models_dir=models_dir))
        urls = [host.put(f"/{i}.png", png_bytes(48, 32, seed=i)) for i in range(IMAGES)]
        settings = Settings(allow_private_cidrs=(ipaddress.ip_network("127.0.0.0/8"),), fetch_timeout_s=10)
        # Both detectors are up before any image flows, and four loaders (a quarter CPU each, on
        # the head) deliver batches of 8 at once, so the pool, which hands each batch to its
        # least busy actor, has both at work.
        options = PipelineOptions(
            trace_nodes=True, fetch_batch_size=8, loader_cpus=0.25, wait_for_min_actors_s=120
        )
        frame = bulk.run(
            urls, ["object_detection"], profile=str(registry), models_dir=models_dir, settings=settings,
            progress=False, options=options,
        )
        Path(report).write_text(json.dumps({
            "statuses": frame["status"].value_counts().to_dict(),
            "nodes_used": sorted(set(frame[NODE_PREFIX + "object_detection"])),
            "worker_nodes": [node.node_id for node in workers],
        }))
    finally:
        host.stop()
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
