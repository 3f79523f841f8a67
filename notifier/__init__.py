"""Webhook delivery's sending half: the notifier actor, its loop, one HTTP attempt, signing.

The durable half (outbox, endpoints, breaker, policy) is ``core.delivery``.
"""

from notifier.actor import NAMESPACE, NOTIFIER_NAME, Notifier, notifier_handle, notifier_name, start_notifier
from notifier.sender import send_attempt
from notifier.signing import sign, signature_headers

__all__ = [
    "NAMESPACE",
    "NOTIFIER_NAME",
    "Notifier",
    "notifier_handle",
    "notifier_name",
    "send_attempt",
    "sign",
    "signature_headers",
    "start_notifier",
]
