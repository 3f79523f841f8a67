"""Refuse a Redis that may drop data on its own (SPEC §6): the eviction policy must be ``noeviction``.

Under any other ``maxmemory-policy`` a full Redis deletes keys to make room — a job, an outbox
delivery, a record — and nothing tells anyone: accepted work is lost silently. With
``noeviction`` a full Redis refuses writes instead, which the API answers as an error and the
workers retry. Checked from ``INFO memory``, which managed services (that often rename or
disable ``CONFIG``) still answer.

``verify_store_config`` runs where the app is built (``serve_app.gateway.build_app``), before
anything is deployed: a misconfigured Redis stops the deploy with the message, not work later.
On a Redis Cluster (``core.store.connect``) every master holds a share of the keys and evicts on
its own, so each is checked, and the message names the nodes that would evict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster

from core.settings import Settings
from core.store.connect import ClusterAddress, is_cluster_url, parse_cluster_url

SAFE_EVICTION_POLICY = "noeviction"


class StoreMisconfigured(RuntimeError):
    """The Redis could lose accepted work; the message says what to change."""


def check_memory_info(info: Mapping[str, Any], node: str | None = None) -> None:
    """Raise ``StoreMisconfigured`` unless ``INFO memory`` shows ``maxmemory_policy:noeviction``;
    ``node`` (``host:port``) names the cluster node that answered, for the message."""
    policy = info.get("maxmemory_policy")
    if policy == SAFE_EVICTION_POLICY:
        return
    if policy is None:
        whose = "this Redis's" if node is None else f"Redis node {node}'s"
        raise StoreMisconfigured(
            f"cannot tell {whose} eviction policy (INFO memory has no maxmemory_policy); "
            f"Sightwire needs maxmemory-policy {SAFE_EVICTION_POLICY}"
        )
    who = "Redis" if node is None else f"Redis node {node}"
    raise StoreMisconfigured(
        f"{who} has maxmemory-policy {policy}: when it fills up it would silently evict Sightwire's "
        f"jobs, records and webhook deliveries. Set maxmemory-policy {SAFE_EVICTION_POLICY} (redis.conf, "
        f"or CONFIG SET maxmemory-policy {SAFE_EVICTION_POLICY}) and start again."
    )


def verify_store_config(settings: Settings) -> None:
    """Check the Redis of ``settings`` (every master of a cluster) over short-lived connections
    of its own."""
    if is_cluster_url(settings.redis_url):
        verify_cluster(parse_cluster_url(settings.redis_url))
        return
    client = redis.Redis.from_url(settings.redis_url)
    try:
        check_memory_info(client.info("memory"))
    finally:
        client.close()


def verify_cluster(address: ClusterAddress) -> None:
    """Check every master of the cluster; one error naming each master that fails the check."""
    client = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in address.seeds],
        username=address.username, password=address.password, ssl=address.ssl,
    )
    problems: list[str] = []
    try:
        for node in sorted(client.get_primaries(), key=lambda node: node.name):
            try:
                check_memory_info(client.info("memory", target_nodes=node), node=node.name)
            except StoreMisconfigured as problem:
                problems.append(str(problem))
    finally:
        client.close()
    if problems:
        raise StoreMisconfigured("\n".join(problems))
