"""Receiving webhooks: Standard Webhooks verification and in-order, once-only handling.

The rules (https://www.standardwebhooks.com): the signed content is
``{webhook-id}.{webhook-timestamp}.{body}``; ``webhook-signature`` holds space-separated
``v1,<base64 HMAC-SHA256>`` entries (two during a secret rotation); the key is the base64 text of
a ``whsec_`` secret; a timestamp outside the tolerance is refused, so an old message cannot be
replayed. Verify the raw body bytes: a re-serialised JSON body would not match.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping

from pydantic import ValidationError

from sightwire_client.errors import VerificationFailure, WebhookVerificationError
from sightwire_client.models import WebhookEvent

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_S = 300.0


def secret_key(secret: str | bytes) -> bytes:
    """The HMAC key of a secret: the base64 text after ``whsec_`` (raw bytes pass through)."""
    if isinstance(secret, bytes):
        return secret
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not a webhook secret: expected whsec_ followed by base64") from None
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


def _lowered(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    """Header names are case-insensitive; a dict, httpx, Starlette or Werkzeug headers all work."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return {name.lower(): value for name, value in pairs}


def _signatures(header: str) -> list[bytes]:
    """The ``v1`` signatures of the header; other versions and malformed entries are skipped."""
    found = []
    for entry in header.split():
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    return found


def verify_webhook(
    body: bytes | str,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    secret: str | bytes | Iterable[str | bytes],
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> WebhookEvent:
    """The verified event, or ``WebhookVerificationError`` (answer 400) saying why not.

    ``secret`` may be several secrets (``WebhookSecret.all``): the message is valid when any of
    its signatures matches any of them. Comparisons are constant-time."""
    raw = body.encode() if isinstance(body, str) else bytes(body)
    fields = _lowered(headers)
    msg_id, stamp, signed = (fields.get(n) for n in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not (msg_id and stamp and signed):
        raise WebhookVerificationError(
            VerificationFailure.MISSING_HEADER, "webhook-id, webhook-timestamp and webhook-signature are required"
        )
    if not stamp.strip().isdigit():
        raise WebhookVerificationError(VerificationFailure.BAD_TIMESTAMP, f"webhook-timestamp {stamp!r} is not seconds")
    skew = (time.time() if now is None else now) - int(stamp)
    if abs(skew) > tolerance_s:
        raise WebhookVerificationError(
            VerificationFailure.TIMESTAMP_OUT_OF_TOLERANCE,
            f"webhook-timestamp is {abs(skew):.0f}s {'old' if skew > 0 else 'in the future'}; "
            f"the tolerance is {tolerance_s:g}s",
        )
    secrets = [secret] if isinstance(secret, str | bytes) else list(secret)
    content = f"{msg_id}.{stamp.strip()}.".encode() + raw
    expected = [hmac.new(secret_key(s), content, hashlib.sha256).digest() for s in secrets]
    # Every pair is compared (no early exit), so timing says nothing about which one matched.
    matched = False
    for candidate in _signatures(signed):
        for digest in expected:
            matched |= hmac.compare_digest(candidate, digest)
    if not matched:
        raise WebhookVerificationError(VerificationFailure.NO_MATCHING_SIGNATURE, "no signature matches the secret")
    try:
        payload = json.loads(raw)
        return WebhookEvent.model_validate({**payload, "id": msg_id})
    except (ValueError, TypeError, ValidationError) as exc:
        raise WebhookVerificationError(VerificationFailure.BAD_BODY, f"signed, but not a webhook: {exc}") from None


class EventTracker:
    """Which events to apply: each ``webhook-id`` once, and per resource only a newer ``sequence``.

    In memory and bounded (the oldest ids are forgotten first) — what your database does in
    production, where a unique key on the webhook id and a ``sequence`` column do the same."""

    def __init__(self, max_ids: int = 100_000) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._latest: dict[str, int] = {}
        self._max_ids = max_ids
        self._lock = threading.Lock()

    def is_new(self, event: WebhookEvent) -> bool:
        """True once per event id, and only when it is newer than what was applied for its resource."""
        with self._lock:
            if event.id in self._ids:
                return False
            self._ids[event.id] = None
            if len(self._ids) > self._max_ids:
                self._ids.popitem(last=False)
            if event.sequence <= self._latest.get(event.resource_id, 0):
                return False
            self._latest[event.resource_id] = event.sequence
            return True

    def latest(self, resource_id: str) -> int:
        return self._latest.get(resource_id, 0)
