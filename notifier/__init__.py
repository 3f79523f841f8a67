"""Webhook delivery: the notifier actor, Standard Webhooks signing and the retry schedule."""

from notifier.actor import NAMESPACE, NOTIFIER_NAME, Notifier, notifier_handle
from notifier.retry import next_attempt_delay
from notifier.sender import send_attempt
from notifier.signing import sign, signature_headers

__all__ = [
    "NAMESPACE",
    "NOTIFIER_NAME",
    "Notifier",
    "next_attempt_delay",
    "notifier_handle",
    "send_attempt",
    "sign",
    "signature_headers",
]
