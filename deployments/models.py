"""From registry to Serve: one deployment per model, options taken from its ``ModelSpec``."""

from __future__ import annotations

from ray.serve.deployment import Application, Deployment

from core.registry import ModelSpec, Registry, Task
from deployments.detection import Detector, ObjectDetection
from deployments.runner import ModelRunner

FAMILIES: dict[Task, Deployment] = {Task.OBJECT_DETECTION: ObjectDetection}
RUNNERS: dict[Task, type[ModelRunner]] = {Task.OBJECT_DETECTION: Detector}


def load_runner(spec: ModelSpec) -> ModelRunner:
    """The plain (Serve-free) model for ``spec``: for Ray Data actors and bare benchmarks."""
    return RUNNERS[spec.task](spec)


def bind_model(spec: ModelSpec) -> Application:
    """A bound deployment for ``spec``: its own autoscaling on its own queue, its resources."""
    family = FAMILIES.get(spec.task)
    if family is None:
        raise ValueError(f"model {spec.name!r}: task {spec.task} has no deployment yet")
    batch = spec.batching.max_batch_size
    return family.options(
        name=spec.deployment_name,
        # A replica must accept at least a full batch (twice, to fill the next while one runs).
        max_ongoing_requests=max(2 * batch, 8),
        autoscaling_config={
            "min_replicas": spec.autoscaling.min_replicas,
            "max_replicas": spec.autoscaling.max_replicas,
            "target_ongoing_requests": spec.autoscaling.target_ongoing_requests,
        },
        ray_actor_options={"num_cpus": spec.resources.num_cpus, "num_gpus": spec.resources.num_gpus},
    ).bind(spec)


def bind_models(registry: Registry) -> dict[str, Application]:
    return {name: bind_model(spec) for name, spec in registry.models.items()}
