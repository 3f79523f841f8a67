"""Identifiers and secrets: resource ids, API keys (stored only as hashes), webhook secrets."""

from __future__ import annotations

import base64
import hashlib
import secrets

API_KEY_PREFIX = "sw_"
OPERATOR_KEY_PREFIX = "swop_"  # an operator key (admin routes), never an org's
WEBHOOK_SECRET_PREFIX = "whsec_"


ORG_TAG_HEX = 4  # the leading hex digits of an org's resource id: its org's hash


def new_id(prefix: str, org_hash: int | None = None) -> str:
    """A random, URL-safe resource id such as ``img_4f9c...``; unguessable across orgs (80
    random bits, 96 without ``org_hash``). An org's resources carry its 16-bit hash
    (``core.keys.org_hash``) in their first four hex digits, so their keys, in the org's shard,
    follow from the id alone."""
    if org_hash is None:
        return f"{prefix}_{secrets.token_hex(12)}"
    return f"{prefix}_{org_hash:0{ORG_TAG_HEX}x}{secrets.token_hex(10)}"


def org_tag_of(resource_id: str) -> int | None:
    """The org hash an id carries (``new_id``), or ``None`` for an id without one."""
    token = resource_id.partition("_")[2]
    if len(token) < ORG_TAG_HEX:
        return None
    try:
        return int(token[:ORG_TAG_HEX], 16)
    except ValueError:
        return None


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def new_operator_key() -> str:
    return OPERATOR_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """SHA-256 of the key. Keys carry 256 bits of entropy, so a slow KDF would add nothing."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` + base64 of 32 random bytes."""
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def short_hash(text: str) -> str:
    """A stable short key for an arbitrary string (an endpoint URL, say) in Redis key names."""
    return hashlib.sha256(text.encode()).hexdigest()[:24]
