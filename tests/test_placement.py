"""A registry written for GPU nodes comes up on a Ray without GPUs (core/placement.py).

The session's Ray has no GPU, as laptops and CPU clusters have none: under the default
``GpuPolicy.AUTO`` a model that asks for part of a GPU is deployed on CPU, in fp32, with a log
line that says so; ``REQUIRE`` keeps the ask for clusters whose autoscaler adds GPU nodes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import ray
from ray import serve

from core.placement import fit_to_cluster
from core.registry import Registry, load_registry
from core.settings import GpuPolicy
from deployments.serving import bind_models
from imaging import DecodedImage

if TYPE_CHECKING:
    from serve_app.stack import LocalStack


@pytest.fixture(scope="module")
def gpu_registry(tiny_models_dir: Path) -> Registry:
    """The tiny detector as a GPU node would run it: half a GPU per replica, in fp16."""
    spec = load_registry("tiny", tiny_models_dir)["object_detection"]
    asks = spec.model_copy(update={
        "resources": spec.resources.model_copy(update={"num_gpus": 0.5}), "precision": "fp16",
        "autoscaling": spec.autoscaling.model_copy(update={"min_replicas": 1, "max_replicas": 1}),
    })
    return Registry(models={"object_detection": asks})


def test_auto_drops_the_gpu_ask_only_where_the_cluster_has_no_gpu(
    gpu_registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    [spec] = gpu_registry.models.values()
    with caplog.at_level(logging.WARNING, logger="sightwire.placement"):
        [fitted] = fit_to_cluster([spec], GpuPolicy.AUTO, gpus=0)
    assert fitted.resources.num_gpus == 0 and fitted.resources.num_cpus == spec.resources.num_cpus
    assert "object_detection asks for 0.5 GPU" in caplog.text and "runs on CPU in fp32" in caplog.text
    assert fit_to_cluster([spec], GpuPolicy.AUTO, gpus=1) == [spec]  # a GPU cluster keeps the ask
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sightwire.placement"):
        assert fit_to_cluster([spec], GpuPolicy.REQUIRE, gpus=0) == [spec]
    assert "waits for GPU nodes" in caplog.text


async def test_a_gpu_registry_serves_on_a_ray_without_gpus(stack: LocalStack, gpu_registry: Registry) -> None:
    # On the session stack's Serve: one started here would take the default port 8000, and a stack
    # started after it in the session could not have its own port (Serve keeps the first config).
    assert ray.cluster_resources().get("GPU", 0) == 0
    [app] = bind_models(gpu_registry, GpuPolicy.AUTO).values()
    handle = serve.run(app, name="placement-probe", route_prefix=None)  # would wait forever for a GPU
    try:
        info = await handle.info.remote()
        assert (info.device, info.precision) == ("cpu", "fp32")  # fp16 was asked: CPUs run fp32
        pixels = np.random.default_rng(0).integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
        answer = await handle.predict.remote(DecodedImage(pixels=pixels, width=64, height=48))
        assert isinstance(answer["result"]["detections"], list)
    finally:
        serve.delete("placement-probe")
