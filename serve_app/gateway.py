"""The Serve ingress deployment and the application builder (``serve run serve_app:app``)."""

from __future__ import annotations

from fastapi import FastAPI
from ray import serve
from ray.serve.deployment import Application
from ray.serve.handle import DeploymentHandle

from core.registry import Registry, load_registry
from core.schemas import ModelInfo
from core.settings import Settings
from core.store import Store
from core.store.safety import verify_store_config
from deployments.engine.scaling import autoscaling_config
from deployments.processor import JobProcessor
from serve_app.api import create_app
from serve_app.context import ApiContext

APP_NAME = "sightwire"


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
@serve.ingress()
class ApiGateway:
    """Serve's HTTP proxy routes every request here; the FastAPI app is built per replica."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        models: dict[str, DeploymentHandle],
        processor: DeploymentHandle,
    ) -> None:
        self._models = models
        self._processor = processor  # bound here so Serve deploys the processor with the app
        self._ctx = ApiContext(settings, Store.from_settings(settings), registry, self._model_info)

    async def _model_info(self, name: str) -> ModelInfo:
        return await self._models[name].info.remote(name)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self._ctx)


def build_app(settings: Settings) -> Application:
    """Start the notifier and bind every deployment: one per model, the job processor, and the
    API in front."""
    # Imported here: the model runners pull in torch and transformers, which the API and
    # processor replicas (which import this module to unpickle ApiGateway) never need.
    from deployments.serving import bind_models
    from notifier import start_notifier
    from pipelines.group_run import process_group_remote

    verify_store_config(settings)  # refuse an evicting Redis before anything is deployed
    start_notifier(settings)  # the one place it is created; a rebuild finds the running one
    registry = load_registry(settings.models, settings.models_dir)
    models = bind_models(registry, settings.gpu_policy)
    # Large groups run as Ray Data pipelines: the processor launches this task for bulk jobs.
    scaling = autoscaling_config(settings.processor_min_replicas, settings.processor_max_replicas,
                                 jobs_per_replica=settings.engine_max_in_flight)
    processor = JobProcessor.options(autoscaling_config=scaling).bind(settings, models, process_group_remote)
    return ApiGateway.bind(settings, registry, models, processor)
