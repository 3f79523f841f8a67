"""Identifiers and secrets: resource ids, API keys (stored only as hashes), webhook secrets."""

from __future__ import annotations

import base64
import hashlib
import secrets

API_KEY_PREFIX = "sw_"
OPERATOR_KEY_PREFIX = "swop_"  # an operator key (admin routes), never an org's
WEBHOOK_SECRET_PREFIX = "whsec_"


def new_id(prefix: str) -> str:
    """A random, URL-safe resource id such as ``img_4f9c...``; unguessable across orgs."""
    return f"{prefix}_{secrets.token_hex(12)}"


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
