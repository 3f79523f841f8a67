"""The Redis store: accounts, operator keys, org weights, image records, groups, the job queue,
the webhook outbox and endpoints (``core.delivery``), and the API's idempotency keys and rate
limits.

``Store`` bundles them over one asyncio Redis connection pool. Every key name comes from
``core.keys``; writes that must commit together share one transaction.
"""

from __future__ import annotations

from redis.asyncio import Redis

from core.delivery import Endpoints, Outbox
from core.events import Events
from core.keys import Keys
from core.settings import Settings
from core.store.accounts import Accounts
from core.store.connect import redis_client
from core.store.deadlines import Deadlines
from core.store.groups import GroupStore
from core.store.idempotency import IdempotencyStore
from core.store.images import ImageStore
from core.store.jobs import Job, Jobs
from core.store.ledger import GroupLedger
from core.store.operators import Operators
from core.store.ratelimit import LimitKind, RateLimiter
from core.store.weights import Weights


class Store:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.keys = Keys(settings.key_prefix, settings.store_shards)
        self.accounts = Accounts(redis, self.keys)
        self.operators = Operators(redis, self.keys)
        self.weights = Weights(redis, self.keys)
        self.jobs = Jobs(redis, self.keys, settings)
        self.outbox = Outbox(redis, self.keys, settings.delivery_retention_s)
        self.endpoints = Endpoints(redis, self.keys)
        events = Events.from_settings(settings)
        ledger = GroupLedger(redis, self.keys, self.outbox, events)
        self.images = ImageStore(redis, self.keys, self.jobs, self.outbox, ledger, events)
        self.groups = GroupStore(
            redis, self.keys, self.jobs, self.images, ledger, settings.bulk_threshold, settings.max_group_images
        )
        self.deadlines = Deadlines(redis, self.keys, self.images, self.groups)
        self.idempotency = IdempotencyStore(redis, self.keys, settings.idempotency_ttl_s)
        self.limits = RateLimiter(redis, self.keys, {LimitKind.REQUESTS: settings.rate_limit_requests_per_s,
                                                     LimitKind.IMAGES: settings.rate_limit_images_per_min})

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        # One Redis (a blocking pool, retrying connection errors) or, for a redis+cluster:// URL,
        # a RedisCluster over its seeds: core.store.connect says why each is built as it is.
        return cls(redis_client(settings), settings)  # type: ignore[arg-type]

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def close(self) -> None:
        await self.redis.aclose()


__all__ = ["Job", "Keys", "Store"]
