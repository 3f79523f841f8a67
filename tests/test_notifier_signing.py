"""Standard Webhooks signatures verified by the reference library; the retry schedule."""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from core.delivery.policy import next_attempt_delay
from core.tokens import new_webhook_secret
from notifier.signing import sign, signature_headers

BODY = json.dumps({"type": "image.completed", "timestamp": "2026-01-01T00:00:00Z", "data": {"id": "img_1"}})


def headers_now(secrets: list[str], body: str = BODY) -> dict[str, str]:
    return signature_headers(secrets, "msg_1", int(time.time()), body)


def test_signature_verifies_with_reference_library() -> None:
    secret = new_webhook_secret()
    headers = headers_now([secret])
    assert headers["webhook-id"] == "msg_1"
    assert headers["content-type"] == "application/json"
    assert Webhook(secret).verify(BODY, headers) == json.loads(BODY)


def test_sign_matches_reference_library() -> None:
    secret = new_webhook_secret()
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    expected = Webhook(secret).sign("msg_x", moment, BODY)
    assert sign(secret, "msg_x", int(moment.timestamp()), BODY) == expected


def test_tampered_body_or_wrong_secret_fails() -> None:
    secret = new_webhook_secret()
    headers = headers_now([secret])
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace("img_1", "img_2"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_webhook_secret()).verify(BODY, headers)


def test_tampered_id_or_timestamp_fails() -> None:
    secret = new_webhook_secret()
    headers = headers_now([secret])
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, {**headers, "webhook-id": "msg_2"})
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) + 1)})


def test_one_signature_per_secret_for_rotation() -> None:
    new, old = new_webhook_secret(), new_webhook_secret()
    headers = headers_now([new, old])
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(new).verify(BODY, headers)
    Webhook(old).verify(BODY, headers)


def test_no_secret_is_an_error() -> None:
    with pytest.raises(ValueError):
        signature_headers([], "msg_1", 0, BODY)


SCHEDULE = (0.0, 5.0, 300.0, 1800.0)


def test_schedule_without_jitter_and_exhaustion() -> None:
    rng = random.Random(1)
    assert [next_attempt_delay(n, SCHEDULE, 0.0, rng) for n in range(5)] == [0.0, 5.0, 300.0, 1800.0, None]
    assert next_attempt_delay(0, (), 0.1, rng) is None


def test_jitter_stays_within_bounds_and_varies() -> None:
    rng = random.Random(7)
    delays = [next_attempt_delay(2, SCHEDULE, 0.2, rng) for _ in range(500)]
    assert all(d is not None and 240.0 <= d <= 360.0 for d in delays)
    assert len(set(delays)) > 400
    assert min(delays) < 250.0 and max(delays) > 350.0
    assert next_attempt_delay(0, SCHEDULE, 0.5, rng) == 0.0


def test_negative_attempts_rejected() -> None:
    with pytest.raises(ValueError):
        next_attempt_delay(-1, SCHEDULE, 0.0, random.Random())
