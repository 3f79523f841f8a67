"""``sightwire_client.verify_webhook`` against signatures made by the reference
``standardwebhooks`` library and by the server's own signer, and ``EventTracker``."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from core.tokens import new_webhook_secret
from notifier.signing import signature_headers
from sightwire_client import EventTracker, VerificationFailure, WebhookVerificationError, verify_webhook
from sightwire_client.models import WebhookEvent

NOW = 1_767_225_600
BODY = json.dumps({
    "type": "image.completed", "timestamp": "2026-01-01T00:00:00Z",
    "data": {"id": "img_1", "object": "image", "status": "complete", "sequence": 3},
})


def reference_headers(secret: str, body: str = BODY, msg_id: str = "msg_ref", at: int = NOW) -> dict[str, str]:
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(at, tz=UTC), body)
    return {"webhook-id": msg_id, "webhook-timestamp": str(at), "webhook-signature": signature}


def reason(body: str | bytes, headers: dict[str, str], secret: object, **kwargs: object) -> VerificationFailure:
    with pytest.raises(WebhookVerificationError) as caught:
        verify_webhook(body, headers, secret, now=NOW, **kwargs)  # type: ignore[arg-type]
    return caught.value.reason


def test_verifies_the_reference_library_signature() -> None:
    secret = new_webhook_secret()
    event = verify_webhook(BODY.encode(), reference_headers(secret), secret, now=NOW)
    assert isinstance(event, WebhookEvent)
    assert event.id == "msg_ref" and event.type == "image.completed"
    assert event.resource_id == "img_1" and event.sequence == 3 and not event.thin
    assert event.data == json.loads(BODY)["data"]


def test_verifies_the_server_signer_and_every_rotation_secret() -> None:
    old, new = new_webhook_secret(), new_webhook_secret()
    headers = signature_headers([new, old], "msg_srv", NOW, BODY)  # two signatures, as during a rotation
    for accepted in (old, new, [new_webhook_secret(), old]):
        assert verify_webhook(BODY, headers, accepted, now=NOW).id == "msg_srv"
    assert reason(BODY, headers, new_webhook_secret()) is VerificationFailure.NO_MATCHING_SIGNATURE


def test_header_names_are_case_insensitive_and_pairs_work() -> None:
    secret = new_webhook_secret()
    headers = {k.upper(): v for k, v in reference_headers(secret).items()}
    assert verify_webhook(BODY, headers, secret, now=NOW).id == "msg_ref"
    assert verify_webhook(BODY, list(headers.items()), secret, now=NOW).id == "msg_ref"


def test_raw_secret_bytes_and_unprefixed_base64_work() -> None:
    key = b"k" * 32
    secret = "whsec_" + base64.b64encode(key).decode()
    headers = reference_headers(secret)
    assert verify_webhook(BODY, headers, key, now=NOW).id == "msg_ref"
    assert verify_webhook(BODY, headers, secret.removeprefix("whsec_"), now=NOW).id == "msg_ref"


def test_tampered_body_id_or_timestamp_fails() -> None:
    secret = new_webhook_secret()
    headers = reference_headers(secret)
    assert reason(BODY.replace("complete", "failed"), headers, secret) is VerificationFailure.NO_MATCHING_SIGNATURE
    assert reason(BODY, {**headers, "webhook-id": "msg_other"}, secret) is VerificationFailure.NO_MATCHING_SIGNATURE
    moved = {**headers, "webhook-timestamp": str(NOW + 1)}
    assert reason(BODY, moved, secret) is VerificationFailure.NO_MATCHING_SIGNATURE


def test_timestamp_outside_the_tolerance_fails() -> None:
    secret = new_webhook_secret()
    old = reference_headers(secret, at=NOW - 301)
    assert reason(BODY, old, secret) is VerificationFailure.TIMESTAMP_OUT_OF_TOLERANCE
    future = reference_headers(secret, at=NOW + 301)
    assert reason(BODY, future, secret) is VerificationFailure.TIMESTAMP_OUT_OF_TOLERANCE
    assert verify_webhook(BODY, old, secret, now=NOW, tolerance_s=600).id == "msg_ref"
    assert reason(BODY, {**old, "webhook-timestamp": "yesterday"}, secret) is VerificationFailure.BAD_TIMESTAMP


def test_default_tolerance_uses_the_clock() -> None:
    secret = new_webhook_secret()
    assert verify_webhook(BODY, reference_headers(secret, at=int(time.time())), secret).id == "msg_ref"
    with pytest.raises(WebhookVerificationError):
        verify_webhook(BODY, reference_headers(secret), secret)  # NOW is long past


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_fails(missing: str) -> None:
    secret = new_webhook_secret()
    headers = reference_headers(secret)
    del headers[missing]
    assert reason(BODY, headers, secret) is VerificationFailure.MISSING_HEADER


def test_other_versions_and_malformed_entries_are_skipped() -> None:
    secret = new_webhook_secret()
    good = reference_headers(secret)["webhook-signature"]
    noisy = f"v1a,{good[3:]} v2,abc v1,not*base64 garbage {good}"
    assert verify_webhook(BODY, {**reference_headers(secret), "webhook-signature": noisy}, secret, now=NOW)
    only_other = f"v1a,{good[3:]} v1,not*base64"
    assert reason(BODY, {**reference_headers(secret), "webhook-signature": only_other}, secret) is (
        VerificationFailure.NO_MATCHING_SIGNATURE
    )


def test_signed_but_not_a_webhook_is_a_bad_body() -> None:
    secret = new_webhook_secret()
    for body in ("not json", json.dumps({"hello": "world"})):
        assert reason(body, reference_headers(secret, body), secret) is VerificationFailure.BAD_BODY


def test_a_bad_secret_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="whsec_"):
        verify_webhook(BODY, reference_headers(new_webhook_secret()), "whsec_***", now=NOW)


def event(msg_id: str, resource: str, sequence: int) -> WebhookEvent:
    return WebhookEvent(id=msg_id, type="image.updated", timestamp=datetime.now(UTC),
                        data={"id": resource, "sequence": sequence})


def test_tracker_applies_each_id_once_and_only_newer_sequences() -> None:
    tracker = EventTracker(max_ids=3)
    assert tracker.is_new(event("msg_1", "img_a", 2))
    assert not tracker.is_new(event("msg_1", "img_a", 2))  # a retry of the same message
    assert not tracker.is_new(event("msg_2", "img_a", 1))  # an older state, arriving late
    assert tracker.is_new(event("msg_3", "img_b", 1))  # another resource
    assert tracker.is_new(event("msg_4", "img_a", 5)) and tracker.latest("img_a") == 5
    assert tracker.is_new(event("msg_5", "img_c", 1))
    # Only the newest three ids are remembered: msg_1 is forgotten, but its state is old anyway.
    assert not tracker.is_new(event("msg_1", "img_a", 2))
