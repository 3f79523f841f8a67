"""Organisations' API keys (stored only as SHA-256 hashes) and webhook signing secrets.

Each key has a public id (``key_`` + the start of its hash) that lists and revokes it without
the plaintext; revoking deletes the hash, so the next request with it is a 401.

An org's secrets are one JSON list, newest first. The newest signs every message; after a
rotation the previous one keeps signing too (a second signature) until its grace period ends,
so a receiver can switch secrets without rejecting anything in between.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from core.delivery.outbox import OPERATIONS_WEBHOOK_FIELD
from core.keys import Keys
from core.schemas import utcnow
from core.store.transactions import watched
from core.tokens import hash_api_key, new_api_key, new_webhook_secret


def _entries(raw: bytes | None) -> list[dict[str, Any]]:
    """Stored secrets as ``{secret, createdAt, expiresAt}`` (a plain string is a secret kept
    forever: the format before rotation existed)."""
    if raw is None:
        return []
    return [{"secret": item} if isinstance(item, str) else item for item in json.loads(raw)]


def _expiry(entry: dict[str, Any]) -> datetime | None:
    return datetime.fromisoformat(entry["expiresAt"]) if entry.get("expiresAt") else None


def _live(entries: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    return [e for e in entries if (_expiry(e) or now + timedelta(days=1)) > now]


def key_id_of(key_hash: str) -> str:
    return "key_" + key_hash[:16]


@dataclass(frozen=True)
class Caller:
    """Who a valid API key is: its organisation and the key's public id."""

    org: str
    key_id: str


@dataclass(frozen=True)
class KeyInfo:
    id: str
    org: str
    created_at: str


class Accounts:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def create_api_key(self, org: str) -> str:
        """Mint a key for ``org``; the plaintext is returned once and never stored."""
        key = new_api_key()
        key_hash = hash_api_key(key)
        key_id = key_id_of(key_hash)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._keys.api_key(key_hash), org)
            info = {"hash": key_hash, "createdAt": utcnow().isoformat()}
            pipe.hset(self._keys.org_keys(org), key_id, json.dumps(info))
            pipe.set(self._keys.key_owner(key_id), org)
            await pipe.execute()
        await self.webhook_secrets(org)
        return key

    async def org_for_key(self, key: str) -> str | None:
        caller = await self.identify(key)
        return caller.org if caller else None

    async def identify(self, key: str) -> Caller | None:
        """The caller a key stands for, or ``None`` for an unknown or revoked key."""
        key_hash = hash_api_key(key)
        org = await self._redis.get(self._keys.api_key(key_hash))
        return Caller(org.decode(), key_id_of(key_hash)) if org is not None else None

    async def list_keys(self, org: str) -> list[KeyInfo]:
        """The org's live keys, oldest first (ids and dates only: the plaintext is never kept)."""
        rows = await self._redis.hgetall(self._keys.org_keys(org))
        keys = [KeyInfo(k.decode(), org, json.loads(v)["createdAt"]) for k, v in rows.items()]
        return sorted(keys, key=lambda k: k.created_at)

    async def revoke_key(self, key_id: str) -> KeyInfo | None:
        """Delete the key (its next request is a 401); ``None`` when no such key exists."""
        owner = await self._redis.get(self._keys.key_owner(key_id))
        if owner is None:
            return None
        org = owner.decode()
        raw = await self._redis.hget(self._keys.org_keys(org), key_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            if raw is not None:
                pipe.delete(self._keys.api_key(json.loads(raw)["hash"]))
            pipe.hdel(self._keys.org_keys(org), key_id)
            pipe.delete(self._keys.key_owner(key_id))
            await pipe.execute()
        return KeyInfo(key_id, org, json.loads(raw)["createdAt"] if raw else "")

    async def settings(self, org: str) -> dict[str, str]:
        """The org's own settings (``Keys.org_settings``): rate limits, operations webhook."""
        return {k.decode(): v.decode() for k, v in (await self._redis.hgetall(self._keys.org_settings(org))).items()}

    async def set_operations_webhook(self, org: str, url: str | None) -> None:
        """Where ``endpoint.disabled`` goes (``None``: nowhere)."""
        if url is None:
            await self._redis.hdel(self._keys.org_settings(org), OPERATIONS_WEBHOOK_FIELD)
        else:
            await self._redis.hset(self._keys.org_settings(org), OPERATIONS_WEBHOOK_FIELD, url)

    async def org_exists(self, org: str) -> bool:
        """Whether ``org`` was ever given a key (every such org has a signing secret)."""
        return bool(await self._redis.exists(self._keys.org_secrets(org), self._keys.org_keys(org)))

    async def webhook_secrets(self, org: str) -> list[str]:
        """The org's signing secrets still valid, newest first; created on first use."""
        return [e["secret"] for e in await self.secret_entries(org)]

    async def secret_entries(self, org: str) -> list[dict[str, Any]]:
        """Valid secrets with their dates (``createdAt``, ``expiresAt``), newest first."""
        key = self._keys.org_secrets(org)
        raw = await self._redis.get(key)
        if raw is None:
            first = {"secret": new_webhook_secret(), "createdAt": utcnow().isoformat()}
            await self._redis.set(key, json.dumps([first]), nx=True)
            raw = await self._redis.get(key)
        return _live(_entries(raw), utcnow())

    async def signing_secrets(self, orgs: list[str]) -> dict[str, list[str]]:
        """Every org's valid secrets in one round trip (the notifier signs a batch with them)."""
        if not orgs:
            return {}
        now = utcnow()
        raws = await self._redis.mget([self._keys.org_secrets(org) for org in orgs])
        found = {org: [e["secret"] for e in _live(_entries(raw), now)] for org, raw in zip(orgs, raws, strict=True)}
        for org, secrets in found.items():
            if not secrets:
                found[org] = await self.webhook_secrets(org)
        return found

    async def rotate_webhook_secret(self, org: str, grace_s: float) -> list[dict[str, Any]]:
        """A new secret signs from now on; the current one also signs for ``grace_s`` more
        seconds (at once gone if 0). Expired secrets are dropped. Returns the valid entries."""
        key = self._keys.org_secrets(org)
        await self.webhook_secrets(org)  # the org has a current secret to rotate

        async def rotate(pipe: Pipeline) -> list[dict[str, Any]]:
            now = utcnow()
            entries = _live(_entries(await pipe.get(key)), now)
            until = now + timedelta(seconds=grace_s)
            kept = [{**e, "expiresAt": min(_expiry(e) or until, until).isoformat()} for e in entries if grace_s > 0]
            fresh = {"secret": new_webhook_secret(), "createdAt": now.isoformat()}
            pipe.multi()
            pipe.set(key, json.dumps([fresh, *kept]))
            return [fresh, *kept]

        return await watched(self._redis, [key], rotate)
