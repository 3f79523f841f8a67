"""The fair job queue (per-org queues, deficit round-robin, leases, dead letters) in Redis."""

from core.keys import QueueKeys
from core.store.fair_queue.dead_letters import DeadLetter, DeadLetters
from core.store.fair_queue.queue import Depth, FairQueue, Lease, QueuedJob, Reclaimed, new_token
from core.store.fair_queue.sharded import ShardedDeadLetters, ShardedQueue

__all__ = [
    "DeadLetter", "DeadLetters", "Depth", "FairQueue", "Lease", "QueueKeys", "QueuedJob", "Reclaimed",
    "ShardedDeadLetters", "ShardedQueue", "new_token",
]
