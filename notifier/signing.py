"""Standard Webhooks signatures (https://www.standardwebhooks.com), so that receivers can verify
every message with the reference libraries.

The signed content is ``{id}.{timestamp}.{body}``: binding the id and the time to the body stops
replays of an old body under a new id or a fresh timestamp. One signature per secret lets an org
rotate its secret without a window in which its receiver rejects messages.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from core.tokens import WEBHOOK_SECRET_PREFIX

SIGNATURE_VERSION = "v1"


def secret_key(secret: str) -> bytes:
    """The HMAC key a ``whsec_...`` secret stands for: the base64 text after the prefix."""
    return base64.b64decode(secret.removeprefix(WEBHOOK_SECRET_PREFIX))


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    """``v1,<base64 HMAC-SHA256 of "{msg_id}.{timestamp}.{body}">``."""
    content = f"{msg_id}.{timestamp}.{body}".encode()
    digest = hmac.new(secret_key(secret), content, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def signature_headers(secrets: list[str], msg_id: str, timestamp: int, body: str) -> dict[str, str]:
    """The headers of one signed message: one space-separated signature per secret."""
    if not secrets:
        raise ValueError("at least one signing secret is required")
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in secrets),
        "content-type": "application/json",
    }
