"""Webhook endpoints: one per (organisation, URL), each with its own queue and circuit breaker.

Two orgs posting to one URL have separate endpoints, so one org's failures never hold another's
deliveries. The breaker's state is written only by the delivery scripts (``core.delivery.scripts``:
``record`` moves it, ``enable`` resets it); this module reads it and re-enables endpoints.
"""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlsplit

from redis.asyncio import Redis

from core.delivery import scripts
from core.delivery.codec import health_from_hash
from core.keys import Keys, org_hash
from core.schemas import Delivery, EndpointHealth
from core.tokens import ORG_TAG_HEX, short_hash


def endpoint_id(org: str, url: str) -> str:
    """Stable for an org and URL, and in the org's shard (it carries the org's hash, as ids do)."""
    return f"ep_{org_hash(org):0{ORG_TAG_HEX}x}" + short_hash(f"{org}\n{url}")[ORG_TAG_HEX:]


def destination_host(url: str) -> str:
    """The host a URL's requests go to, as the per-host in-flight cap counts it: every port,
    path and query of one host name are one destination."""
    return (urlsplit(url).hostname or url).rstrip(".")


def endpoint_of(delivery: Delivery) -> str:
    """The endpoint a delivery goes to (recorded with it; derived for records that predate it)."""
    return delivery.endpoint_id or endpoint_id(delivery.org_id, delivery.url)


class Endpoints:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._scripts = scripts.Scripts(redis, keys)

    async def get(self, eid: str) -> EndpointHealth | None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._keys.endpoint(eid))
            pipe.zcard(self._keys.endpoint_due(eid))
            raw, pending = await pipe.execute()
        return health_from_hash(eid, raw, int(pending)) if raw else None

    async def health(self, org: str, url: str) -> EndpointHealth | None:
        """The endpoint's health, or ``None`` when ``org`` never sent anything to ``url``."""
        return await self.get(endpoint_id(org, url))

    async def for_org(self, org: str) -> list[EndpointHealth]:
        eids = sorted(e.decode() for e in await self._redis.smembers(self._keys.org_endpoints(org)))
        found = [await self.get(eid) for eid in eids]
        return sorted((h for h in found if h is not None), key=lambda h: h.url)

    async def enable(self, org: str, url: str, now: datetime) -> int | None:
        """Close the breaker and release every held delivery; ``None`` for an unknown endpoint.

        Returns how many deliveries were released (made due now)."""
        call = scripts.Call(self._keys.shard_of_org(org), {"eid": endpoint_id(org, url), "now": now.timestamp()})
        released = int(await self._scripts.run(scripts.ENABLE, call))
        return None if released < 0 else released
