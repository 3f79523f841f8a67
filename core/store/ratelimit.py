"""Rate limits per API key: requests per second and images per minute, one token bucket each.

The bucket is one Lua function (``lua/bucket.lua``): it reads the org's own quota (its settings
hash, else the deployment's default), refills by Redis' clock and takes the cost in one atomic
step, so replicas sharing a key share its bucket exactly. It runs in a script of its own
(``charge``), or inside a write that must not happen when refused (``Charge``: an image's create
charges its images in the create's own script, one round trip for both). The answer carries
what the IETF ``RateLimit`` / ``RateLimit-Policy`` headers and ``Retry-After`` need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from core.keys import Keys

LUA_DIR = Path(__file__).with_name("lua")
BUCKET_LIB = (LUA_DIR / "bucket.lua").read_text()  # take_tokens(...), for scripts that charge a bucket
SCRIPT = BUCKET_LIB + (LUA_DIR / "token_bucket.lua").read_text()


class LimitKind(StrEnum):
    REQUESTS = "requests"  # every authenticated request, per second
    IMAGES = "images"  # images submitted (a group's each count), per minute

    @property
    def window_s(self) -> int:
        return 1 if self is LimitKind.REQUESTS else 60

    @property
    def org_field(self) -> str:
        """The org settings field overriding the default quota."""
        return "requests_per_s" if self is LimitKind.REQUESTS else "images_per_min"


@dataclass(frozen=True)
class Verdict:
    kind: LimitKind
    allowed: bool
    quota: float  # negative: unlimited
    remaining: float
    retry_after_s: float
    reset_s: float

    @classmethod
    def of(cls, kind: LimitKind, reply: list[Any]) -> Verdict:
        """The verdict of ``take_tokens``'s answer."""
        allowed, quota, remaining, wait, full = reply
        return cls(kind, int(allowed) == 1, float(quota), float(remaining), float(wait), float(full))

    @property
    def limited(self) -> bool:
        return self.quota >= 0

    def headers(self) -> dict[str, str]:
        """``RateLimit-Policy`` and ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers), and
        ``Retry-After`` when refused; nothing for an unlimited key."""
        if not self.limited:
            return {}
        name = f'"{self.kind.value}"'
        headers = {
            "RateLimit-Policy": f"{name};q={math.floor(self.quota)};w={self.kind.window_s}",
            "RateLimit": f"{name};r={max(0, math.floor(self.remaining))};t={math.ceil(self.reset_s)}",
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return headers


@dataclass(frozen=True)
class Charge:
    """A bucket charge for a script that takes it with its own write (``take_tokens`` with
    ``args``; the bucket and the org's settings are ``keys``, in the org's shard)."""

    kind: LimitKind
    keys: list[str]
    args: dict[str, Any]


class RateLimiter:
    def __init__(self, redis: Redis, keys: Keys, defaults: dict[LimitKind, float]) -> None:
        self._redis = redis
        self._keys = keys
        self._defaults = defaults
        self._bucket = redis.register_script(SCRIPT)

    def bucket(self, key_id: str, org: str, kind: LimitKind, cost: int = 1) -> Charge:
        """The charge of ``cost`` to the key's ``kind`` bucket, for a script to take."""
        return Charge(kind, [self._keys.rate_bucket(org, key_id, kind.value), self._keys.org_settings(org)],
                      {"field": kind.org_field, "default": self._defaults.get(kind, 0), "window": kind.window_s,
                       "cost": cost})

    async def charge(self, key_id: str, org: str, kind: LimitKind, cost: int = 1) -> Verdict:
        """Take ``cost`` from the key's ``kind`` bucket if it holds enough; say what is left."""
        charge = self.bucket(key_id, org, kind, cost)
        a = charge.args
        return Verdict.of(kind, await self._bucket(keys=charge.keys,
                                                   args=[a["field"], a["default"], a["window"], a["cost"]]))

    async def configure(self, org: str, quotas: dict[LimitKind, float | None]) -> None:
        """Set the org's quotas (0: unlimited; ``None``: back to the deployment's default)."""
        name = self._keys.org_settings(org)
        async with self._redis.pipeline(transaction=True) as pipe:
            for kind, quota in quotas.items():
                if quota is None:
                    pipe.hdel(name, kind.org_field)
                else:
                    pipe.hset(name, kind.org_field, quota)
            await pipe.execute()
