"""Webhook delivery's durable half: the outbox, the endpoints and their breakers, the policy.

| module | owns |
|---|---|
| ``outbox`` | queueing an announcement, claiming with a lease, recording attempts, retry, reads |
| ``endpoints`` | endpoint ids (per org and URL), health reads, re-enabling |
| ``scripts``, ``lua/`` | the Lua scripts every durable decision runs as, and how they are called |
| ``policy`` | the numbers and statuses: retry schedule, breaker, slow-down, gone |
| ``outcomes`` | what the scripts answer (enums both sides share) |
| ``codec`` | the delivery and endpoint hashes |

The sending half is the notifier (``notifier/``); what to announce is ``core.events``.
"""

from core.delivery.endpoints import Endpoints, destination_host, endpoint_id, endpoint_of
from core.delivery.outbox import AttemptRecord, Claim, Outbox, Recorded, SharedRoom
from core.delivery.outcomes import Outcome, RetryResult
from core.delivery.policy import BreakerPolicy, DeliveryPolicy, RetryPolicy, SlowdownPolicy

__all__ = [
    "AttemptRecord",
    "BreakerPolicy",
    "Claim",
    "DeliveryPolicy",
    "Endpoints",
    "Outbox",
    "Outcome",
    "Recorded",
    "RetryPolicy",
    "RetryResult",
    "SharedRoom",
    "SlowdownPolicy",
    "destination_host",
    "endpoint_id",
    "endpoint_of",
]
