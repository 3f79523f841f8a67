"""Processor replicas from the job backlog: a Serve custom autoscaling policy.

Serve's default policy counts requests in flight to a deployment; the processor receives none
(it pulls its work from Redis), so it would never scale. Instead each replica reports, through
its ``record_autoscaling_stats`` method, two numbers: ``BACKLOG``, the jobs queued in Redis as
it sees them, and ``HELD``, the jobs it holds (claimed and leased). Serve's controller averages
each replica's reports over ``look_back_period_s`` and hands them to the policy as
``ctx.aggregated_metrics[name][replica_id]``. Every replica sees the same queues, so the
backlog is the largest report, not the sum; what replicas hold is summed. The policy asks for

    ceil((backlog + held) / jobs_per_replica)   replicas, within [min_replicas, max_replicas]

so one replica suffices while the queued and running work fits its share, and a backlog that
does not adds replicas until it does (as the asynchronous-inference work in Ray scales task
consumers on queue length), but never more than one replica per CPU of the cluster: a replica
reserves no CPU, so past that it only shares the cores its peers already keep busy (measured on
two cores with org A's 20,000 queued 404s, same code on each side: 4 replicas finished 4,011 of
them in 30 s and org B's p99 was 2.6 s, 2 replicas 7,603 and 0.44 s). On an autoscaling
cluster the bound grows with the nodes that join; a cluster whose nodes declare no CPUs (a head
started with ``num-cpus: 0`` before any worker joined) gets no bound, as before. Serve applies
``upscale_delay_s`` / ``downscale_delay_s`` around the policy. With no report yet (replicas
starting) the target stays where it is.

The controller unpickles the policy class by value (``cloudpickle.register_pickle_by_value``), so
this module imports nothing of Sightwire: the controller may run without the app's code on its
path.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.serve.config import AutoscalingConfig, AutoscalingPolicy

BACKLOG = "sightwire_backlog"
HELD = "sightwire_held"
LOOK_BACK_S = 15.0  # must exceed the replicas' push interval (10 s)
UPSCALE_DELAY_S = 5.0
DOWNSCALE_DELAY_S = 120.0
CPUS_EVERY_S = 10.0  # how often the policy reads the cluster's CPUs again


def cluster_cpus() -> float | None:
    """The CPUs of the cluster's live nodes, as the controller's Ray sees them (None: no Ray, or
    none declared: a head with ``num-cpus: 0`` still runs the replicas on its real cores)."""
    if not ray.is_initialized():
        return None
    return ray.cluster_resources().get("CPU", 0.0) or None


class BacklogPolicy:
    """``AutoscalingPolicy(policy_function=BacklogPolicy, policy_kwargs={"jobs_per_replica": n})``."""

    def __init__(self, jobs_per_replica: int, cpus: Callable[[], float | None] = cluster_cpus) -> None:
        if jobs_per_replica < 1:
            raise ValueError("jobs_per_replica must be at least 1")
        self.jobs_per_replica = jobs_per_replica
        self._cpus = cpus
        self._cpus_read: tuple[float, float | None] = (-math.inf, None)  # (when, what)

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        """``ctx`` is Ray Serve's ``AutoscalingContext``; returns (replicas, policy state)."""
        metrics = ctx.aggregated_metrics or {}
        backlog = metrics.get(BACKLOG) or {}
        held = metrics.get(HELD) or {}
        if not backlog and not held:
            return ctx.target_num_replicas, {}
        work = max(backlog.values(), default=0.0) + sum(held.values())
        wanted = min(math.ceil(work / self.jobs_per_replica), ctx.capacity_adjusted_max_replicas)
        cpus = self._cluster_cpus()
        if cpus is not None:
            wanted = min(wanted, math.floor(cpus))
        return max(ctx.capacity_adjusted_min_replicas, wanted), {}

    def _cluster_cpus(self) -> float | None:
        """``cpus()``, read at most every ``CPUS_EVERY_S`` (the policy runs on every control loop)."""
        read_at, cpus = self._cpus_read
        if time.monotonic() - read_at >= CPUS_EVERY_S:
            with contextlib.suppress(Exception):  # the GCS restarting: keep the last reading
                cpus = self._cpus()
            self._cpus_read = (time.monotonic(), cpus)
        return cpus


def autoscaling_config(min_replicas: int, max_replicas: int, jobs_per_replica: int) -> AutoscalingConfig:
    """The processor deployment's autoscaling: this policy, quick to add replicas for a burst
    (replicas report every 10 s, Serve's default push interval; averaged over 15 s), slow to
    remove them (a lull between bursts keeps the replicas and their warm connections)."""
    return AutoscalingConfig(
        min_replicas=min_replicas,
        initial_replicas=min_replicas,
        max_replicas=max_replicas,
        look_back_period_s=LOOK_BACK_S,
        upscale_delay_s=UPSCALE_DELAY_S,
        downscale_delay_s=DOWNSCALE_DELAY_S,
        policy=AutoscalingPolicy(policy_function=BacklogPolicy, policy_kwargs={"jobs_per_replica": jobs_per_replica}),
    )
