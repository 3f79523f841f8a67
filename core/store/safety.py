"""Refuse a Redis that may drop data on its own (SPEC §6): the eviction policy must be ``noeviction``.

Under any other ``maxmemory-policy`` a full Redis deletes keys to make room — a job, an outbox
delivery, a record — and nothing tells anyone: accepted work is lost silently. With
``noeviction`` a full Redis refuses writes instead, which the API answers as an error and the
workers retry. Checked from ``INFO memory``, which managed services (that often rename or
disable ``CONFIG``) still answer.

``verify_store_config`` runs where the app is built (``serve_app.gateway.build_app``), before
anything is deployed: a misconfigured Redis stops the deploy with the message, not work later.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis

from core.settings import Settings

SAFE_EVICTION_POLICY = "noeviction"


class StoreMisconfigured(RuntimeError):
    """The Redis could lose accepted work; the message says what to change."""


def check_memory_info(info: Mapping[str, Any]) -> None:
    """Raise ``StoreMisconfigured`` unless ``INFO memory`` shows ``maxmemory_policy:noeviction``."""
    policy = info.get("maxmemory_policy")
    if policy == SAFE_EVICTION_POLICY:
        return
    if policy is None:
        raise StoreMisconfigured(
            "cannot tell this Redis's eviction policy (INFO memory has no maxmemory_policy); "
            f"Sightwire needs maxmemory-policy {SAFE_EVICTION_POLICY}"
        )
    raise StoreMisconfigured(
        f"Redis has maxmemory-policy {policy}: when it fills up it would silently evict Sightwire's "
        f"jobs, records and webhook deliveries. Set maxmemory-policy {SAFE_EVICTION_POLICY} (redis.conf, "
        f"or CONFIG SET maxmemory-policy {SAFE_EVICTION_POLICY}) and start again."
    )


def verify_store_config(settings: Settings) -> None:
    """Check the Redis of ``settings`` over a short-lived connection of its own."""
    client = redis.Redis.from_url(settings.redis_url)
    try:
        check_memory_info(client.info("memory"))
    finally:
        client.close()
