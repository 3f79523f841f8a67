"""Where a model's replicas may run: its GPU ask fitted to the cluster it is deployed on.

A registry written for GPU nodes (``pretrained``: 0.2-0.4 GPU per replica) would otherwise
wait forever on a laptop or a CPU-only cluster, since Ray never places an actor whose GPU ask
no node can meet. Under ``GpuPolicy.AUTO`` a cluster with no GPU now runs such models on CPU
(the runner then picks fp32, ``models.loading.pick_dtype``) and says so once per model;
``REQUIRE`` keeps the ask, for clusters whose autoscaler adds GPU nodes on demand.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from core.registry import ModelSpec
from core.settings import GpuPolicy

log = logging.getLogger("sightwire.placement")


def cluster_gpus() -> float:
    """GPUs in the connected Ray cluster now (0 when none has joined yet)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def fit_to_cluster(specs: Sequence[ModelSpec], policy: GpuPolicy, gpus: float) -> list[ModelSpec]:
    """``specs`` with their GPU asks dropped where ``policy`` and a GPU-less cluster say so."""
    if gpus > 0:
        return list(specs)
    if policy is GpuPolicy.REQUIRE:
        for spec in specs:
            if spec.resources.num_gpus > 0:
                log.warning("model %s asks for %g GPU per replica and this Ray cluster has none now: it waits for "
                            "GPU nodes to join (SIGHTWIRE_GPU_POLICY=require)", spec.name, spec.resources.num_gpus)
        return list(specs)
    fitted = []
    for spec in specs:
        if spec.resources.num_gpus > 0:
            log.warning(
                "model %s asks for %g GPU per replica and this Ray cluster has none: it runs on CPU in fp32 "
                "(set SIGHTWIRE_GPU_POLICY=require to wait for GPU nodes instead)",
                spec.name, spec.resources.num_gpus,
            )
            spec = spec.model_copy(update={"resources": spec.resources.model_copy(update={"num_gpus": 0.0})})
        fitted.append(spec)
    return fitted
