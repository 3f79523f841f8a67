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
consumers on queue length). Serve applies ``upscale_delay_s`` / ``downscale_delay_s`` around the
policy. With no report yet (replicas starting) the target stays where it is.

The controller unpickles the policy class by value (``cloudpickle.register_pickle_by_value``), so
this module imports nothing of Sightwire: the controller may run without the app's code on its
path.
"""

from __future__ import annotations

import math
from typing import Any

from ray.serve.config import AutoscalingConfig, AutoscalingPolicy

BACKLOG = "sightwire_backlog"
HELD = "sightwire_held"
LOOK_BACK_S = 15.0  # must exceed the replicas' push interval (10 s)
UPSCALE_DELAY_S = 5.0
DOWNSCALE_DELAY_S = 120.0


class BacklogPolicy:
    """``AutoscalingPolicy(policy_function=BacklogPolicy, policy_kwargs={"jobs_per_replica": n})``."""

    def __init__(self, jobs_per_replica: int) -> None:
        if jobs_per_replica < 1:
            raise ValueError("jobs_per_replica must be at least 1")
        self.jobs_per_replica = jobs_per_replica

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        """``ctx`` is Ray Serve's ``AutoscalingContext``; returns (replicas, policy state)."""
        metrics = ctx.aggregated_metrics or {}
        backlog = metrics.get(BACKLOG) or {}
        held = metrics.get(HELD) or {}
        if not backlog and not held:
            return ctx.target_num_replicas, {}
        work = max(backlog.values(), default=0.0) + sum(held.values())
        wanted = math.ceil(work / self.jobs_per_replica)
        return max(ctx.capacity_adjusted_min_replicas, min(ctx.capacity_adjusted_max_replicas, wanted)), {}


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
