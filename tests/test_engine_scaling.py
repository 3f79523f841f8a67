"""The processor's backlog autoscaling policy: constructed contexts, Ray's own wrapper, real Serve."""

from __future__ import annotations

import asyncio
import time

import pytest
from ray import serve
from ray.serve._private.autoscaling_state import _resolve_policy_callable
from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.autoscaling_policy import _apply_autoscaling_config
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from deployments.engine import scaling
from deployments.engine.scaling import BACKLOG, HELD, BacklogPolicy, autoscaling_config
from serve_app.stack import LocalStack

DEPLOYMENT = DeploymentID(name="JobProcessor", app_name="sightwire")


def context(metrics: dict[str, list[float]] | None, *, replicas: int = 2, target: int = 2, low: int = 1,
            high: int = 8) -> AutoscalingContext:
    """What Serve's controller hands the policy: one value per running replica and metric."""
    running = [ReplicaID(unique_id=f"r{i}", deployment_id=DEPLOYMENT) for i in range(replicas)]
    aggregated = None if metrics is None else {
        name: dict(zip(running, values, strict=True)) for name, values in metrics.items()
    }
    return AutoscalingContext(
        deployment_id=DEPLOYMENT, deployment_name=DEPLOYMENT.name, app_name=DEPLOYMENT.app_name,
        current_num_replicas=replicas, target_num_replicas=target, running_replicas=running,
        total_num_requests=0.0, total_queued_requests=0.0, aggregated_metrics=aggregated, raw_metrics={},
        capacity_adjusted_min_replicas=low, capacity_adjusted_max_replicas=high, policy_state={},
        last_scale_up_time=None, last_scale_down_time=None, current_time=time.time(),
        config=AutoscalingConfig(min_replicas=low, max_replicas=high, upscale_delay_s=0, downscale_delay_s=0),
    )


def no_cpu_bound() -> None:
    """A cluster whose CPUs are not known (no Ray): only the deployment's own bounds apply."""
    return None


def test_the_shared_backlog_counts_once_and_what_replicas_hold_adds_up() -> None:
    policy = BacklogPolicy(jobs_per_replica=256, cpus=no_cpu_bound)
    # both replicas see the same 1,000 queued jobs and hold 100 each: (1000 + 200) / 256 -> 5
    assert policy(context({BACKLOG: [1000, 1000], HELD: [100, 100]}))[0] == 5
    assert policy(context({BACKLOG: [1000, 980], HELD: [256, 256]}))[0] == 6  # the largest report


def test_replicas_stay_within_their_bounds() -> None:
    policy = BacklogPolicy(jobs_per_replica=256, cpus=no_cpu_bound)
    assert policy(context({BACKLOG: [100_000, 100_000], HELD: [256, 256]}, high=4))[0] == 4
    assert policy(context({BACKLOG: [0, 0], HELD: [0, 0]}, low=1))[0] == 1
    assert policy(context({BACKLOG: [0, 0], HELD: [3, 0]}, low=2))[0] == 2


def test_no_report_yet_keeps_the_target() -> None:
    policy = BacklogPolicy(jobs_per_replica=256, cpus=no_cpu_bound)
    assert policy(context(None, target=3, replicas=3))[0] == 3
    assert policy(context({}, target=3, replicas=3))[0] == 3


def test_no_more_replicas_than_the_cluster_has_cpus_and_never_fewer_than_the_minimum() -> None:
    reads = []

    def two_cpus() -> float:
        reads.append(1)
        return 2.0

    policy = BacklogPolicy(jobs_per_replica=256, cpus=two_cpus)
    assert policy(context({BACKLOG: [100_000, 100_000], HELD: [256, 256]}, high=4))[0] == 2
    assert policy(context({BACKLOG: [100_000], HELD: [256]}, replicas=1, high=8))[0] == 2
    assert policy(context({BACKLOG: [100_000, 100_000, 100_000], HELD: [0, 0, 0]}, replicas=3, low=3))[0] == 3
    assert BacklogPolicy(256, cpus=lambda: 0.5)(context({BACKLOG: [9_000], HELD: [0]}, replicas=1))[0] == 1
    assert len(reads) == 1  # read once per CPUS_EVERY_S, not on every control loop


def test_a_failed_cpu_reading_keeps_the_last_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scaling, "CPUS_EVERY_S", 0.0)  # every control loop reads again
    readings = iter([2.0, RuntimeError("GCS restarting")])

    def flaky() -> float:
        reading = next(readings)
        if isinstance(reading, Exception):
            raise reading
        return reading

    policy = BacklogPolicy(jobs_per_replica=256, cpus=flaky)
    busy = context({BACKLOG: [100_000, 100_000], HELD: [256, 256]}, high=8)
    assert policy(busy)[0] == 2
    assert policy(busy)[0] == 2  # the read raised: still bounded by the last reading


def test_jobs_per_replica_must_be_positive() -> None:
    with pytest.raises(ValueError):
        BacklogPolicy(0)


def test_the_config_serialises_the_policy_as_serve_will_load_it() -> None:
    """The controller gets the policy by value and instantiates it with its kwargs; Serve's own
    wrapper (scaling factors, delays, state merge) accepts what it returns."""
    config = autoscaling_config(1, 4, jobs_per_replica=128)
    assert (config.min_replicas, config.initial_replicas, config.max_replicas) == (1, 1, 4)
    policy = _resolve_policy_callable(config.policy)
    assert type(policy).__name__ == "BacklogPolicy" and policy.jobs_per_replica == 128  # a copy, by value
    wrapped = _apply_autoscaling_config(policy)
    # within any CPU bound of the session's Ray (4 CPUs) or none (no Ray yet): the default bound
    # travels by value with the policy
    replicas, state = wrapped(context({BACKLOG: [200, 200], HELD: [128, 0]}))
    assert replicas == 3 and isinstance(state, dict)  # ceil((200 + 128) / 128)


@serve.deployment(
    ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": {
        "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5"}}},
)
class Probe:
    """Reports a backlog it is told, as the processor reports the queue's."""

    def __init__(self) -> None:
        self.backlog = 0

    def set_backlog(self, backlog: int) -> None:
        self.backlog = backlog

    def record_autoscaling_stats(self) -> dict[str, float]:
        return {BACKLOG: float(self.backlog), HELD: 0.0}


def running_replicas(app: str) -> int:
    status = serve.status().applications[app].deployments["Probe"]
    return status.replica_states.get("RUNNING", 0)


async def test_a_reported_backlog_scales_a_deployment_out(stack: LocalStack) -> None:
    """The metric travels for real: replica method -> controller -> ctx.aggregated_metrics."""
    app = "scaling-probe"
    handle = serve.run(Probe.options(autoscaling_config=autoscaling_config(1, 3, jobs_per_replica=10)).bind(),
                       name=app, route_prefix=None)
    try:
        assert running_replicas(app) == 1
        await handle.set_backlog.remote(1000)  # one replica's report is enough: the largest counts
        deadline = time.monotonic() + 90
        while running_replicas(app) < 3:
            assert time.monotonic() < deadline, f"still {running_replicas(app)} replicas"
            await asyncio.sleep(0.5)
    finally:
        serve.delete(app)
