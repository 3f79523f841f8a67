"""Per-org weights: an org's share of the engine's fair queues and stage limiters, set by an operator.

One HASH (``Keys.org_weights``) for the whole deployment, outside the queues' hash tags: the
processors read it (cached, ``deployments.engine.limits.OrgWeights``) and hand the weights to
every claim (``FairQueue.claim``) and stage limiter, so a change takes effect within their
refresh period, without a restart. An org not in the hash has weight 1; setting 1 deletes it.
"""

from __future__ import annotations

import math

from redis.asyncio import Redis

from core.keys import Keys

DEFAULT_WEIGHT = 1.0
MIN_WEIGHT = 1 / 64  # every org with queued work still gets a turn within 64 rounds
MAX_WEIGHT = 64.0  # and one org cannot take more than 64 quanta per visit


def check_weight(weight: float) -> float:
    """``weight`` as stored, or ValueError naming the bounds (finite, MIN_WEIGHT … MAX_WEIGHT)."""
    if not (math.isfinite(weight) and MIN_WEIGHT <= weight <= MAX_WEIGHT):
        raise ValueError(f"a weight must be a number from {MIN_WEIGHT:g} to {MAX_WEIGHT:g}, not {weight!r}")
    return float(weight)


class Weights:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._key = keys.org_weights

    async def get(self, org: str) -> float:
        raw = await self._redis.hget(self._key, org)
        return float(raw) if raw is not None else DEFAULT_WEIGHT

    async def set(self, org: str, weight: float | None) -> float:
        """Set the org's weight (``None`` or 1: back to the default); returns the weight now."""
        if weight is None or check_weight(weight) == DEFAULT_WEIGHT:
            await self._redis.hdel(self._key, org)
            return DEFAULT_WEIGHT
        await self._redis.hset(self._key, org, repr(float(weight)))
        return float(weight)

    async def all(self) -> dict[str, float]:
        """Every org whose weight is not the default."""
        return {org.decode(): float(value) for org, value in (await self._redis.hgetall(self._key)).items()}
