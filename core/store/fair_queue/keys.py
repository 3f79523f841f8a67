"""The fair queue's key names, in one place (to move into the store's key module).

Every key of one queue shares its hash tag (``{<queue>}``), so every script runs in one
Redis Cluster slot; scripts build the per-org and per-job keys from ``base``, which carries it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QueueKeys:
    prefix: str
    queue: str  # "online" or "bulk"; a shard suffix ("online:3") later spreads a queue over slots

    @property
    def base(self) -> str:
        return f"{self.prefix}:{{jq:{self.queue}}}"

    def org_queue(self, org: str) -> str:
        """LIST of the org's queued job ids, oldest first."""
        return f"{self.base}:q:{org}"

    def job(self, job_id: str) -> str:
        """HASH: org, payload (JSON), attempts (claims so far), enq (ms), owner (lease token)."""
        return f"{self.base}:job:{job_id}"

    @property
    def ring(self) -> str:
        """LIST of the orgs with queued jobs, in round-robin order; the head is on its visit."""
        return f"{self.base}:ring"

    @property
    def visiting(self) -> str:
        """STRING: the org whose visit has begun (its quantum is already credited)."""
        return f"{self.base}:visiting"

    @property
    def deficits(self) -> str:
        """HASH org -> credit left in the round (deficit round-robin)."""
        return f"{self.base}:deficit"

    @property
    def weights(self) -> str:
        """HASH org -> weight (absent: 1), set by an operator."""
        return f"{self.base}:weights"

    @property
    def leases(self) -> str:
        """ZSET job id -> lease expiry (ms, Redis clock)."""
        return f"{self.base}:leases"

    @property
    def wake(self) -> str:
        """LIST holding one token while there may be work for an idle replica."""
        return f"{self.base}:wake"

    @property
    def dead(self) -> str:
        """STREAM of dead letters: jobs that used up their attempts."""
        return f"{self.base}:dead"
