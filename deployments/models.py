"""From registry to Serve: one deployment per model, options taken from its ``ModelSpec``."""

from __future__ import annotations

from ray.serve.deployment import Application, Deployment

from core.registry import ModelSpec, Registry, Task
from deployments.detection import Detector, ObjectDetection
from deployments.runner import ModelRunner
from deployments.zero_shot import ZeroShotClassification, ZeroShotClassifier

# One zero-shot CLIP family serves both classification and 1-6 scoring (prompt sets differ).
FAMILIES: dict[Task, Deployment] = {
    Task.OBJECT_DETECTION: ObjectDetection,
    Task.ZERO_SHOT_IMAGE_CLASSIFICATION: ZeroShotClassification,
    Task.SCORING: ZeroShotClassification,
}
RUNNERS: dict[Task, type[ModelRunner]] = {
    Task.OBJECT_DETECTION: Detector,
    Task.ZERO_SHOT_IMAGE_CLASSIFICATION: ZeroShotClassifier,
    Task.SCORING: ZeroShotClassifier,
}

# Serve notices a dead replica through its health check; a short period replaces it sooner.
HEALTH_CHECK_PERIOD_S = 2.0


def load_runner(spec: ModelSpec) -> ModelRunner:
    """The plain (Serve-free) model for ``spec``: for Ray Data actors and bare benchmarks."""
    return RUNNERS[spec.task](spec)


def max_ongoing_requests(spec: ModelSpec) -> int:
    """A replica must accept at least a full batch, twice, to fill the next while one runs,
    and at least the autoscaling target, or the target could never be reached."""
    batch = spec.batching.max_batch_size
    return max(2 * batch, int(spec.autoscaling.target_ongoing_requests + 0.999), 8)


def bind_model(spec: ModelSpec) -> Application:
    """A bound deployment for ``spec``: its own autoscaling on its own queue, its resources."""
    family = FAMILIES.get(spec.task)
    if family is None:
        raise ValueError(f"model {spec.name!r}: task {spec.task} has no deployment yet")
    return family.options(
        name=spec.deployment_name,
        max_ongoing_requests=max_ongoing_requests(spec),
        autoscaling_config={
            "min_replicas": spec.autoscaling.min_replicas,
            "max_replicas": spec.autoscaling.max_replicas,
            "target_ongoing_requests": spec.autoscaling.target_ongoing_requests,
        },
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
        ray_actor_options={"num_cpus": spec.resources.num_cpus, "num_gpus": spec.resources.num_gpus},
    ).bind(spec)


def bind_models(registry: Registry) -> dict[str, Application]:
    return {name: bind_model(spec) for name, spec in registry.models.items()}
