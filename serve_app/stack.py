"""Everything on one machine: a local Ray, Redis (given or private), and the Serve app.

``LocalStack`` is what ``sightwire serve`` and ``sightwire demo`` run, and what the integration
tests start once per session. Ray's GCS gets a free port from ``ray.init`` (never 6379).
With ``show_logs`` (``sightwire serve``) the processor's, the notifier's and the models' log lines
are streamed to this terminal (``serve_app.worker_logs``), as text or, with ``log_format`` json,
one JSON object a line (Serve's own replica logs in ``logs/serve`` too); either way ``logs_dir`` is
the Ray session's log folder, where every process's full output stays. A Ray started here runs
Serve in ``settings.serve_ingress`` (``serve_app.serve_env``; HAProxy ingress by default).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

import httpx
import ray
from ray import serve
from ray.serve.schema import LoggingConfig

from core.registry import LOCAL_PROFILES
from core.settings import LogFormat, Settings
from models.tiny import ensure_local_profile
from notifier import NAMESPACE, notifier_handle
from serve_app import worker_logs
from serve_app.gateway import APP_NAME, build_app
from serve_app.local import RedisServer, runtime_file
from serve_app.serve_env import apply_serve_env

log = logging.getLogger("sightwire.stack")


def wait_ready(url: str, timeout_s: float) -> None:
    """Until the Sightwire at ``url`` answers ``/readyz`` with 200 (here or on a cluster)."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/readyz", timeout=5)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise RuntimeError(f"Sightwire was not ready after {timeout_s}s: {last}")


class LocalStack:
    """Start with ``start()``, stop with ``stop()`` (or use it as a context manager)."""

    def __init__(
        self,
        settings: Settings,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        embedded_redis: bool = False,
        num_cpus: int | None = None,
        show_logs: bool = False,
    ) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self.num_cpus = num_cpus
        self.show_logs = show_logs
        self.logs_dir: Path | None = None
        self.metrics_url: str | None = None  # the Ray node's Prometheus endpoint, when this stack started Ray
        redis_dir = Path(settings.data_dir).expanduser() / "redis"
        self._redis = RedisServer(redis_dir, appendfsync=settings.redis_appendfsync) if embedded_redis else None
        self._owns_ray = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, ready_timeout_s: float = 300.0) -> LocalStack:
        if self._redis is not None:
            self._redis.start()
            self.settings = self.settings.model_copy(update={"redis_url": self._redis.url})
        if self.settings.models in LOCAL_PROFILES:  # tiny, bench: built here, random weights
            ensure_local_profile(self.settings.models_dir, self.settings.models)
        if not ray.is_initialized():
            if self.show_logs:
                worker_logs.configure()
            apply_serve_env(self.settings)  # Serve's mode is read from the environment Ray inherits
            context = ray.init(
                address="local", num_cpus=self.num_cpus, include_dashboard=False, namespace=NAMESPACE,
                log_to_driver=self.show_logs, runtime_env=self._runtime_env() if self.show_logs else None,
            )
            self._owns_ray = True
            self.logs_dir = Path(context.address_info["session_dir"]) / "logs"
            self.metrics_url = f"http://127.0.0.1:{context.address_info['metrics_export_port']}/metrics"
        serve.start(http_options={"host": self.host, "port": self.port})
        serve.run(build_app(self.settings), name=APP_NAME, route_prefix="/", blocking=False,
                  logging_config=LoggingConfig(encoding="JSON") if self.settings.log_format is LogFormat.JSON else None)
        self.wait_ready(ready_timeout_s)
        self._write_runtime_file()
        return self

    def _runtime_env(self) -> dict[str, object]:
        """Every worker installs Sightwire's log handler, in the format of the settings."""
        return {"worker_process_setup_hook": worker_logs.HOOK,
                "env_vars": {worker_logs.FORMAT_VARIABLE: self.settings.log_format.value}}

    def wait_ready(self, timeout_s: float) -> None:
        wait_ready(self.url, timeout_s)

    def _write_runtime_file(self) -> None:
        path = runtime_file(self.settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"redis_url": self.settings.redis_url, "url": self.url}))

    def stop(self) -> None:
        runtime_file(self.settings).unlink(missing_ok=True)
        serve.shutdown()
        with contextlib.suppress(ValueError):  # no notifier was started
            ray.kill(notifier_handle(self.settings), no_restart=True)
        if self._owns_ray:
            ray.shutdown()
        if self._redis is not None:
            self._redis.stop()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
