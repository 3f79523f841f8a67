"""Operator keys: the bearer keys of the admin routes (``serve_app.routes.admin``).

An operator key belongs to no organisation: it manages them (their weights). Like an org's keys
it is stored only as a SHA-256 hash, has a public id for listing and revoking, and is shown once.
Minted by ``sightwire operator-keys create``, which needs access to Redis: whoever holds the
store already holds everything an operator key grants.
"""

from __future__ import annotations

import json

from redis.asyncio import Redis

from core.keys import Keys
from core.schemas import utcnow
from core.store.accounts import KeyInfo, key_id_of
from core.tokens import hash_api_key, new_operator_key

OPERATOR = "operator"  # what ``KeyInfo.org`` says of an operator key


class Operators:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def create_key(self) -> str:
        """Mint an operator key; the plaintext is returned once and never stored."""
        key = new_operator_key()
        key_hash = hash_api_key(key)
        key_id = key_id_of(key_hash)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._keys.operator_key(key_hash), key_id)
            pipe.hset(self._keys.operator_keys, key_id,
                      json.dumps({"hash": key_hash, "createdAt": utcnow().isoformat()}))
            await pipe.execute()
        return key

    async def identify(self, key: str) -> str | None:
        """The key's id if it is a live operator key, else ``None``."""
        key_id = await self._redis.get(self._keys.operator_key(hash_api_key(key)))
        return key_id.decode() if key_id is not None else None

    async def list_keys(self) -> list[KeyInfo]:
        rows = await self._redis.hgetall(self._keys.operator_keys)
        keys = [KeyInfo(k.decode(), OPERATOR, json.loads(v)["createdAt"]) for k, v in rows.items()]
        return sorted(keys, key=lambda k: k.created_at)

    async def revoke_key(self, key_id: str) -> bool:
        """Delete the key (its next request is a 401); False when there is no such key."""
        raw = await self._redis.hget(self._keys.operator_keys, key_id)
        if raw is None:
            return False
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._keys.operator_key(json.loads(raw)["hash"]))
            pipe.hdel(self._keys.operator_keys, key_id)
            await pipe.execute()
        return True
