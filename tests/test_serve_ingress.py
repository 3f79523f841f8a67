"""The stack as shipped serves HTTP through Ray's HAProxy ingress (``Settings.serve_ingress``).

The session's Ray is started with ``serve_app.serve_env`` (as ``LocalStack`` starts its own), so
Serve runs an ``haproxy`` process whose frontend is the stack's loopback port; its config lives in
a folder of that Ray's own, not Ray's shared ``/tmp/haproxy-serve`` (two stacks on one machine would
overwrite each other's config and fight over the stats and metrics ports).
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import ray

from benchmarks.common import descendants, process_table
from core.settings import ServeIngress, Settings
from serve_app.local import free_port
from serve_app.serve_env import serve_env
from serve_app.stack import LocalStack


def haproxy_configs() -> list[Path]:
    """The ``-f`` config file of every haproxy process under this test process."""
    parents, info = process_table()
    configs = []
    for pid in descendants(os.getpid(), parents):
        words = info.get(pid, (0.0, ""))[1].split()
        if words and Path(words[0]).name == "haproxy" and "-f" in words:
            configs.append(Path(words[words.index("-f") + 1]))
    return configs


def test_the_stack_answers_through_haproxy_on_its_own_port_and_config(stack: LocalStack) -> None:
    configs = haproxy_configs()
    assert configs, "no haproxy process: Serve runs its Python proxy"
    config = configs[0]
    assert not str(config).startswith("/tmp/haproxy-serve"), config
    assert f"bind 127.0.0.1:{stack.port}" in config.read_text()
    assert httpx.get(f"{stack.url}/readyz", timeout=10).status_code == 200


def test_each_ray_gets_its_own_haproxy_files_and_ports() -> None:
    first, second = serve_env(Settings()), serve_env(Settings())
    assert first["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"] != second["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]
    assert first["RAY_SERVE_HAPROXY_STATS_PORT"] != first["RAY_SERVE_HAPROXY_METRICS_PORT"]
    proxy = serve_env(Settings(serve_ingress=ServeIngress.PROXY))
    assert proxy == {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0",
                     "RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S": "2.0",
                     "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2.0"}


def test_a_ray_started_here_drains_its_ingress_for_the_setting_not_serves_30_s(ray_session: None) -> None:
    """What a Serve process of the session's Ray (started through ``serve_env``) reads as its
    drain periods: with Serve's 30 s default every stop of a local stack waited 30 s."""

    @ray.remote(num_cpus=0)
    def drain_periods() -> tuple[float, float]:
        from ray.serve._private import constants
        return constants.PROXY_MIN_DRAINING_PERIOD_S, constants.RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S

    assert ray.get(drain_periods.remote()) == (Settings().serve_drain_s,) * 2


def test_the_ports_handed_out_are_none_the_kernel_or_ray_hand_out_themselves() -> None:
    """HAProxy's metrics port is chosen before Ray starts its workers and bound only later: a
    port the kernel had picked (bind to port 0) was once given to one of those workers meanwhile,
    and HAProxy could not start ("Address already in use"). Ray's workers take 10002-19999."""
    ephemeral_from = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [int(port) for _ in range(50)
             for name, port in serve_env(Settings()).items() if name.endswith("_PORT")]
    ports += [free_port() for _ in range(200)]
    assert all(19_999 < port < ephemeral_from for port in ports), sorted(ports)[:5]
