"""Organisations' API keys (stored only as SHA-256 hashes) and webhook signing secrets."""

from __future__ import annotations

import json

from redis.asyncio import Redis

from core.store.keys import Keys
from core.tokens import hash_api_key, new_api_key, new_webhook_secret


class Accounts:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def create_api_key(self, org: str) -> str:
        """Mint a key for ``org``; the plaintext is returned once and never stored."""
        key = new_api_key()
        await self._redis.set(self._keys.api_key(hash_api_key(key)), org)
        await self.webhook_secrets(org)
        return key

    async def org_for_key(self, key: str) -> str | None:
        org = await self._redis.get(self._keys.api_key(hash_api_key(key)))
        return org.decode() if org is not None else None

    async def webhook_secrets(self, org: str) -> list[str]:
        """The org's signing secrets, newest first; created on first use."""
        key = self._keys.org_secrets(org)
        raw = await self._redis.get(key)
        if raw is None:
            await self._redis.set(key, json.dumps([new_webhook_secret()]), nx=True)
            raw = await self._redis.get(key)
        return list(json.loads(raw))
