"""Serve's fast path: the environment a Ray started here needs for ``Settings.serve_ingress``.

Ray Serve reads its mode from environment variables when each of its processes imports
``ray.serve`` (controller, proxy, replicas), so the variables must be in this process's
environment before ``ray.init`` starts the raylet: every worker inherits them from it. A Ray
that was already running keeps the mode it was started with (a cluster: set the variables on
every node, docs/operations.md).

HAProxy mode writes its config, admin socket and server state under fixed ``/tmp`` paths and
binds fixed stats (8404) and metrics (9101) ports unless told otherwise; two stacks on one
machine (tests, ``sightwire serve`` beside a benchmark) would collide, so each Ray started here
gets a private folder of its own and free ports. The folder is a short one under the system's
temporary directory: Ray adds a 56-character folder per node, and HAProxy refuses socket paths
longer than 97 bytes (a ``data_dir`` under a pytest or home folder is too deep).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from core.settings import ServeIngress, Settings
from serve_app.local import free_port


def drain_env(settings: Settings) -> dict[str, str]:
    """Serve's drain periods (proxy and direct ingress, 30 s each by default) at
    ``settings.serve_drain_s``: they exist for an external load balancer to notice a stopping
    ingress, and a Ray started here has none in front of it. A period exported by hand wins."""
    names = ("RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S", "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S")
    return {name: os.environ.get(name, str(settings.serve_drain_s)) for name in names}


def serve_env(settings: Settings) -> dict[str, str]:
    """The variables that put a Ray started from this process in ``settings.serve_ingress``."""
    if settings.serve_ingress is ServeIngress.PROXY:
        # explicit, so an inherited RAY_SERVE_* variable cannot switch the mode silently
        return {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0", **drain_env(settings)}
    folder = Path(tempfile.mkdtemp(prefix="sw-haproxy-"))
    stats_port = free_port()
    while (metrics_port := free_port()) == stats_port:
        pass
    return {
        **drain_env(settings),
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(folder / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(folder / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(folder),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(folder / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(folder / "metrics.sock"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics_port),
    }


def apply_serve_env(settings: Settings) -> None:
    """Put ``serve_env(settings)`` into this process's environment; call before ``ray.init``."""
    os.environ.update(serve_env(settings))
