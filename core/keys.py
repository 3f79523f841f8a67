"""Redis key names, in one place so every component agrees on the layout.

Python builds every key through ``Keys``; the delivery scripts get the same names, derived from
these methods when they are loaded (``core.delivery.scripts``), so Lua never spells one itself.

Delivery layout (``P`` is the prefix):

``P:outbox``              ZSET endpoint id → when it next has something to send (the ready index
                          the notifier claims from; open or slowed endpoints are scored at the end
                          of their pause, disabled ones are absent)
``P:outbox:wake``         LIST a single token pushed by every write that makes work due
``P:dlv:{id}``            HASH one delivery (``core.delivery.codec``); ``…:attempts`` LIST its log
``P:res:{id}:deliveries`` LIST every delivery of one image or group, oldest first
``P:ep:{eid}``            HASH an endpoint's breaker state, failure counts, last success/failure
``P:ep:{eid}:due``        ZSET delivery id → due time (every pending delivery of the endpoint; one
                          being sent is scored at the end of its lease)
``P:ep:{eid}:latest``     HASH resource id → newest delivery id (coalescing and ordering)
``P:ep:{eid}:log``        ZSET delivery id → created (every delivery to the endpoint within the
                          retention; ``POST /v1/endpoints/recover`` reads it)
``P:org:{org}:endpoints`` SET the org's endpoint ids

API layout (``serve_app``):

``P:org:{org}:keys``      HASH key id → JSON {hash, createdAt}: the org's API keys
``P:keyid:{id}``          STRING the org a key id belongs to (``sightwire keys revoke``)
``P:org:{org}:settings``  HASH the org's own settings (rate limits, operations webhook)
``P:org-weights``         HASH org → its weight in the engine's fair shares (absent: 1), set by an
                          operator (``core.store.weights``)
``P:opkey:{hash}``        STRING the id of an operator key (``serve_app.routes.admin``)
``P:operator:keys``       HASH operator key id → JSON {hash, createdAt}
``P:org:{org}:idem:{h}``  STRING JSON: an Idempotency-Key's state and first response (24 h)
``P:rl:{key id}:{kind}``  HASH a token bucket (tokens, at)
``P:images:finished``     pub/sub channel: image ids as they reach a finished state
"""

from __future__ import annotations

from dataclasses import dataclass

_HOLE = "\x00"  # stands for the id when a key's layout is handed to the scripts

# Per-entity keys the delivery scripts build (method names of ``Keys``).
SCRIPT_KEYS = (
    "delivery",
    "delivery_attempts",
    "resource_deliveries",
    "endpoint",
    "endpoint_due",
    "endpoint_latest",
    "endpoint_log",
    "org_endpoints",
)


# Per-org and per-job keys the fair queue's scripts build (method names of ``QueueKeys``).
QUEUE_SCRIPT_KEYS = ("org_queue", "job")


@dataclass(frozen=True)
class Keys:
    prefix: str = "sw"

    def api_key(self, key_hash: str) -> str:
        return f"{self.prefix}:apikey:{key_hash}"

    def org_keys(self, org: str) -> str:
        return f"{self.prefix}:org:{org}:keys"

    def key_owner(self, key_id: str) -> str:
        return f"{self.prefix}:keyid:{key_id}"

    def org_settings(self, org: str) -> str:
        return f"{self.prefix}:org:{org}:settings"

    def idempotency(self, org: str, key_hash: str) -> str:
        return f"{self.prefix}:org:{org}:idem:{key_hash}"

    def rate_bucket(self, key_id: str, kind: str) -> str:
        return f"{self.prefix}:rl:{key_id}:{kind}"

    @property
    def org_weights(self) -> str:
        """HASH org -> weight (absent: 1): its share in every fair queue and stage limiter."""
        return f"{self.prefix}:org-weights"

    def operator_key(self, key_hash: str) -> str:
        return f"{self.prefix}:opkey:{key_hash}"

    @property
    def operator_keys(self) -> str:
        return f"{self.prefix}:operator:keys"

    @property
    def images_finished(self) -> str:
        return f"{self.prefix}:images:finished"

    @property
    def deadlines(self) -> str:
        """ZSET image or group id -> its deadline (Unix s), swept by the processors."""
        return f"{self.prefix}:deadlines"

    def org_secrets(self, org: str) -> str:
        return f"{self.prefix}:org:{org}:secrets"

    def image(self, image_id: str) -> str:
        return f"{self.prefix}:img:{image_id}"

    def org_images(self, org: str) -> str:
        return f"{self.prefix}:org:{org}:images"

    def group(self, group_id: str) -> str:
        return f"{self.prefix}:grp:{group_id}"

    def group_images(self, group_id: str) -> str:
        return f"{self.prefix}:grp:{group_id}:images"

    def group_growth(self, group_id: str) -> str:
        """STRING bumped by every change of a group's models or image list (what growth watches)."""
        return f"{self.prefix}:grp:{group_id}:growth"

    def group_sums(self, group_id: str) -> str:
        return f"{self.prefix}:grp:{group_id}:sums"

    def job_queue(self, queue: str) -> QueueKeys:
        """The keys of one job queue (``core.store.jobs.QueueName``)."""
        return QueueKeys(self.prefix, queue)

    # -- webhook delivery ----------------------------------------------------------------------

    @property
    def outbox(self) -> str:
        return f"{self.prefix}:outbox"

    @property
    def outbox_wake(self) -> str:
        return f"{self.prefix}:outbox:wake"

    def resource_deliveries(self, resource_id: str) -> str:
        return f"{self.prefix}:res:{resource_id}:deliveries"

    def delivery(self, delivery_id: str) -> str:
        return f"{self.prefix}:dlv:{delivery_id}"

    def delivery_attempts(self, delivery_id: str) -> str:
        return f"{self.prefix}:dlv:{delivery_id}:attempts"

    def endpoint(self, eid: str) -> str:
        return f"{self.prefix}:ep:{eid}"

    def endpoint_due(self, eid: str) -> str:
        return f"{self.prefix}:ep:{eid}:due"

    def endpoint_latest(self, eid: str) -> str:
        return f"{self.prefix}:ep:{eid}:latest"

    def endpoint_log(self, eid: str) -> str:
        return f"{self.prefix}:ep:{eid}:log"

    def org_endpoints(self, org: str) -> str:
        return f"{self.prefix}:org:{org}:endpoints"


@dataclass(frozen=True)
class QueueKeys:
    """One fair job queue's keys (``core.store.fair_queue``). Every key shares the queue's hash
    tag (``{jq:<queue>}``), so each script runs in one Redis Cluster slot; the scripts build the
    per-org and per-job keys from ``base``, which carries it."""

    prefix: str
    queue: str  # "online" or "bulk"; a shard suffix ("online:3") later spreads a queue over slots

    @property
    def base(self) -> str:
        return f"{self.prefix}:{{jq:{self.queue}}}"

    def org_queue(self, org: str) -> str:
        """LIST of the org's queued job ids, oldest first."""
        return f"{self.base}:q:{org}"

    def job(self, job_id: str) -> str:
        """HASH: org, payload (JSON), attempts (claims so far), enq (ms), fence (leases granted),
        owner (the current lease: claimant token and fence)."""
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


def _layout(bare: object, names: tuple[str, ...], base: str = "") -> dict[str, tuple[str, str]]:
    """Each named key method of ``bare`` as the text before and after its id, ``base`` left out."""
    layout = {}
    for name in names:
        before, after = getattr(bare, name)(_HOLE).removeprefix(base).split(_HOLE)
        layout[name] = (before, after)
    return layout


def script_layout() -> dict[str, tuple[str, str]]:
    """Each per-entity key of ``SCRIPT_KEYS`` as the text before and after its id, prefix left
    out: a script's ``K.<name>(id)`` becomes ``P .. before .. id .. after``, what ``Keys`` returns."""
    return _layout(Keys(prefix=""), SCRIPT_KEYS)


def queue_script_layout() -> dict[str, tuple[str, str]]:
    """The fair queue's per-org and per-job keys (``QUEUE_SCRIPT_KEYS``) relative to its base:
    ``K.job(id)`` becomes ``A.base .. before .. id``, what ``QueueKeys.job`` returns."""
    bare = QueueKeys(prefix="", queue="")
    return _layout(bare, QUEUE_SCRIPT_KEYS, base=bare.base)
