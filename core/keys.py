"""Redis key names, in one place so every component agrees on the layout.

Python builds every key through ``Keys``; the delivery scripts get the same names, derived from
these methods when they are loaded (``core.delivery.scripts``), so Lua never spells one itself.

Every key carries a hash tag, so every script and transaction touches one Redis Cluster slot.
``P`` is the prefix; ``S`` is ``P:{s<n>}``, the base of shard ``n`` (an org's shard is its hash
modulo the ``store_shards`` setting; its resource ids carry that hash, ``core.tokens.new_id``);
``A`` is ``P:{acct}``, the accounts' tag. One Redis holds every shard as well as a cluster does.

Delivery layout, in the shard of the org it belongs to:

``S:outbox``              ZSET endpoint id → when it next has something to send (the ready index
                          the notifier claims from; open or slowed endpoints are scored at the end
                          of their pause, disabled ones are absent)
``S:outbox:wake``         LIST a single token pushed by every write that makes work due
``S:dlv:{id}``            HASH one delivery (``core.delivery.codec``); ``…:attempts`` LIST its log
``S:res:{id}:deliveries`` LIST every delivery of one image or group, oldest first
``S:ep:{eid}``            HASH an endpoint's breaker state, failure counts, last success/failure
``S:ep:{eid}:due``        ZSET delivery id → due time (every pending delivery of the endpoint; one
                          being sent is scored at the end of its lease)
``S:ep:{eid}:latest``     HASH resource id → newest delivery id (coalescing and ordering)
``S:ep:{eid}:log``        ZSET delivery id → created (every delivery to the endpoint within the
                          retention; ``POST /v1/endpoints/recover`` reads it)
``S:org:{org}:endpoints`` SET the org's endpoint ids

Records (``core.store``), in the org's shard: ``S:img:{id}``, ``S:grp:{id}`` (and its
``:images``, ``:growth``, ``:sums``), ``S:org:{org}:images``, ``S:deadlines`` and the job queues
(``QueueKeys``, ``S:jq:<queue>:…``).

API layout (``serve_app``):

``A:org:{org}:keys``      HASH key id → JSON {hash, createdAt}: the org's API keys
``A:apikey:{hash}``       STRING the org of an API key
``A:keyid:{id}``          STRING the org a key id belongs to (``sightwire keys revoke``)
``A:org:{org}:secrets``   STRING JSON: the org's webhook signing secrets
``A:org-weights``         HASH org → its weight in the engine's fair shares (absent: 1), set by an
                          operator (``core.store.weights``)
``A:opkey:{hash}``        STRING the id of an operator key (``serve_app.routes.admin``)
``A:operator:keys``       HASH operator key id → JSON {hash, createdAt}
``S:org:{org}:settings``  HASH the org's own settings (rate limits, operations webhook)
``S:org:{org}:idem:{h}``  STRING JSON: an Idempotency-Key's state and first response (24 h)
``S:rl:{key id}:{kind}``  HASH a token bucket (tokens, at), beside its org's settings
``P:images:finished``     pub/sub channel: image ids as they reach a finished state
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from core.tokens import org_tag_of

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


def org_hash(org: str) -> int:
    """The 16-bit hash that places an org's data in a shard (``core.tokens.new_id`` writes it
    into the ids of the org's resources, so a key is known from an id alone)."""
    return zlib.crc32(org.encode()) & 0xFFFF


@dataclass(frozen=True)
class Keys:
    """The key layout of one deployment: ``prefix``, and ``shards`` hash tags its tenants'
    data is spread over (a setting fixed for the life of the data, like a cluster's slots).

    Every key an operation touches shares one hash tag, so each script and transaction lives
    in one Redis Cluster slot: an org's resources, its webhook deliveries and endpoints, and the
    shard's job queues, outbox and deadline sweep are under ``{s<n>}`` (``n`` the org's shard);
    the account keys (API keys, secrets, operator keys, weights) are under ``{acct}``."""

    prefix: str = "sw"
    shards: int = 1

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError(f"shards must be at least 1, not {self.shards}")

    def base(self, shard: int) -> str:
        """What every key of ``shard`` begins with: the prefix and the shard's hash tag."""
        return f"{self.prefix}:{{s{shard}}}"

    def shard_of_org(self, org: str) -> int:
        return org_hash(org) % self.shards

    def shard_of_id(self, resource_id: str) -> int:
        """The shard of a resource id minted for an org (``new_id(kind, org_hash(org))``). An id
        minted without one (from before this layout) names whatever shard its first four hex
        digits give: only ids minted this way may be mixed with their org's keys."""
        tag = org_tag_of(resource_id)
        return 0 if tag is None else tag % self.shards

    @property
    def all_shards(self) -> range:
        return range(self.shards)

    def _of_id(self, resource_id: str) -> str:
        return self.base(self.shard_of_id(resource_id))

    def _of_org(self, org: str) -> str:
        return self.base(self.shard_of_org(org))

    @property
    def _accounts(self) -> str:
        return f"{self.prefix}:{{acct}}"

    # -- accounts: one hash tag for all (rare writes, and the API key lookup precedes the org) --

    def api_key(self, key_hash: str) -> str:
        return f"{self._accounts}:apikey:{key_hash}"

    def org_keys(self, org: str) -> str:
        return f"{self._accounts}:org:{org}:keys"

    def key_owner(self, key_id: str) -> str:
        return f"{self._accounts}:keyid:{key_id}"

    def org_secrets(self, org: str) -> str:
        return f"{self._accounts}:org:{org}:secrets"

    @property
    def org_weights(self) -> str:
        """HASH org -> weight (absent: 1): its share in every fair queue and stage limiter."""
        return f"{self._accounts}:org-weights"

    def operator_key(self, key_hash: str) -> str:
        return f"{self._accounts}:opkey:{key_hash}"

    @property
    def operator_keys(self) -> str:
        return f"{self._accounts}:operator:keys"

    # -- per org, in the org's shard ------------------------------------------------------------

    def org_settings(self, org: str) -> str:
        return f"{self._of_org(org)}:org:{org}:settings"

    def idempotency(self, org: str, key_hash: str) -> str:
        return f"{self._of_org(org)}:org:{org}:idem:{key_hash}"

    def rate_bucket(self, org: str, key_id: str, kind: str) -> str:
        return f"{self._of_org(org)}:rl:{key_id}:{kind}"

    def org_images(self, org: str) -> str:
        return f"{self._of_org(org)}:org:{org}:images"

    def org_endpoints(self, org: str) -> str:
        return f"{self._of_org(org)}:org:{org}:endpoints"

    # -- per resource, in its org's shard (the shard read from the id) --------------------------

    def image(self, image_id: str) -> str:
        return f"{self._of_id(image_id)}:img:{image_id}"

    def group(self, group_id: str) -> str:
        return f"{self._of_id(group_id)}:grp:{group_id}"

    def group_images(self, group_id: str) -> str:
        return f"{self._of_id(group_id)}:grp:{group_id}:images"

    def group_growth(self, group_id: str) -> str:
        """STRING bumped by every change of a group's models or image list (what growth watches)."""
        return f"{self._of_id(group_id)}:grp:{group_id}:growth"

    def group_sums(self, group_id: str) -> str:
        return f"{self._of_id(group_id)}:grp:{group_id}:sums"

    def resource_deliveries(self, resource_id: str) -> str:
        return f"{self._of_id(resource_id)}:res:{resource_id}:deliveries"

    def delivery(self, delivery_id: str) -> str:
        return f"{self._of_id(delivery_id)}:dlv:{delivery_id}"

    def delivery_attempts(self, delivery_id: str) -> str:
        return f"{self._of_id(delivery_id)}:dlv:{delivery_id}:attempts"

    def endpoint(self, eid: str) -> str:
        return f"{self._of_id(eid)}:ep:{eid}"

    def endpoint_due(self, eid: str) -> str:
        return f"{self._of_id(eid)}:ep:{eid}:due"

    def endpoint_latest(self, eid: str) -> str:
        return f"{self._of_id(eid)}:ep:{eid}:latest"

    def endpoint_log(self, eid: str) -> str:
        return f"{self._of_id(eid)}:ep:{eid}:log"

    # -- per shard: what the processors and notifiers consume, shard by shard -----------------

    def job_queue(self, queue: str, shard: int = 0) -> QueueKeys:
        """The keys of one job queue (``core.store.jobs.QueueName``) in ``shard``."""
        return QueueKeys(self.prefix, queue, shard)

    def deadlines(self, shard: int) -> str:
        """ZSET image or group id -> its deadline (Unix s), swept by the processors."""
        return f"{self.base(shard)}:deadlines"

    def outbox(self, shard: int) -> str:
        return f"{self.base(shard)}:outbox"

    def outbox_wake(self, shard: int) -> str:
        return f"{self.base(shard)}:outbox:wake"

    # -- not a key: PUBLISH reaches every node of a cluster ------------------------------------

    @property
    def images_finished(self) -> str:
        return f"{self.prefix}:images:finished"


@dataclass(frozen=True)
class QueueKeys:
    """One fair job queue's keys in one shard (``core.store.fair_queue``). Every key shares the
    shard's hash tag (``{s<n>}``) with the records whose transactions enqueue, so each script
    runs in one Redis Cluster slot; the scripts build the per-org and per-job keys from
    ``base``, which carries it."""

    prefix: str
    queue: str  # "online" or "bulk"
    shard: int = 0

    @property
    def base(self) -> str:
        return f"{self.prefix}:{{s{self.shard}}}:jq:{self.queue}"

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
    """Each per-entity key of ``SCRIPT_KEYS`` as the text before and after its id, the shard's
    base left out: a script's ``K.<name>(id)`` becomes ``P .. before .. id .. after`` (``P`` the
    base of the call's shard, ``Keys.base``), what ``Keys`` returns."""
    bare = Keys(prefix="")
    return _layout(bare, SCRIPT_KEYS, base=bare.base(0))


def queue_script_layout() -> dict[str, tuple[str, str]]:
    """The fair queue's per-org and per-job keys (``QUEUE_SCRIPT_KEYS``) relative to its base:
    ``K.job(id)`` becomes ``A.base .. before .. id``, what ``QueueKeys.job`` returns."""
    bare = QueueKeys(prefix="", queue="")
    return _layout(bare, QUEUE_SCRIPT_KEYS, base=bare.base)
