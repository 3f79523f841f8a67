"""Runtime settings, read once from the environment (``SIGHTWIRE_*`` and ``REDIS_URL``).

Settings are a plain pydantic model so they can be passed to Ray actors and Serve
deployments as one picklable value: every component sees the same configuration.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ENV_PREFIX = "SIGHTWIRE_"
RAY_NAMESPACE = "sightwire"  # every named actor and Serve app of Sightwire lives here

DEFAULT_RETRY_SCHEDULE_S = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)


class AppendFsync(StrEnum):
    """When the embedded Redis fsyncs its AOF: what a power loss can cost (docs/operations.md)."""

    ALWAYS = "always"  # every write: nothing acknowledged is lost, writes are slowest
    EVERYSEC = "everysec"  # once a second (Redis' default): up to about a second of writes
    NO = "no"  # when the OS flushes (often ~30 s on Linux): that much


class LogFormat(StrEnum):
    """How ``sightwire serve``'s workers write Sightwire's log lines (serve_app/worker_logs.py)."""

    TEXT = "text"
    JSON = "json"  # one object a line, with the record's context fields (request id, org, image id)


class GpuPolicy(StrEnum):
    """What a model's ``num_gpus`` means on a cluster that has no GPU now (core/placement.py)."""

    AUTO = "auto"  # no GPU in the cluster: run on CPU in fp32, with a log line
    REQUIRE = "require"  # keep the ask: wait for GPU nodes (an autoscaler adds them)


class ServeIngress(StrEnum):
    """How HTTP reaches the API replicas when this process starts Ray (serve_app/serve_env.py)."""

    HAPROXY = "haproxy"  # Ray's HAProxy ingress + throughput-optimized Serve: ~10x the requests/s
    PROXY = "proxy"  # Ray's Python proxy actor (Serve's default), one extra hop and body fetch


class Settings(BaseModel):
    """Every knob of a Sightwire deployment; each field maps to ``SIGHTWIRE_<FIELD>``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    redis_url: str = "redis://127.0.0.1:6379/0"
    # Connections one process (an API, processor or notifier replica) opens at most; past them a
    # command waits for a free one, up to the timeout. Far above what the in-flight caps ask
    # (256 jobs a processor replica), so a command that holds one and needs a second never waits.
    redis_max_connections: int = Field(1_000, ge=1)
    redis_pool_timeout_s: float = Field(10.0, gt=0)
    key_prefix: str = "sw"
    # Hash tags the tenants' data is spread over (``core.keys``): on a Redis Cluster, a few per
    # master, so every master holds some orgs' work. Fixed for the life of the data: an org's
    # keys move with it. An idle processor or notifier holds one blocking pop per shard.
    store_shards: int = Field(1, ge=1, le=256)
    models: str = "tiny"
    models_dir: Path = Path.home() / ".cache" / "sightwire" / "models"
    data_dir: Path = Path.home() / ".local" / "share" / "sightwire"
    redis_appendfsync: AppendFsync = AppendFsync.EVERYSEC  # the embedded redis-server only

    allow_private_cidrs: tuple[IPNetwork, ...] = ()
    max_url_length: int = 2048
    max_body_bytes: int = Field(1_048_576, ge=1)  # request body, counted as it arrives (any framing)
    # the body of POST /v1/groups and /v1/groups/{id}/images, read as a stream: 10,000 images with
    # URLs and some metadata each (the API's memory does not grow with it)
    max_group_body_bytes: int = Field(32 * 1_048_576, ge=1)
    max_metadata_bytes: int = 16_384

    max_image_bytes: int = 20 * 1024 * 1024
    # Pillow itself refuses images over ~179 MP, so a higher limit would have no effect.
    max_image_pixels: int = Field(40_000_000, ge=1, le=178_000_000)
    max_image_side: int = 1333
    fetch_timeout_s: float = 15.0  # the whole download of one image, retries included
    fetch_retries: int = Field(2, ge=0)  # more attempts after a 429/503 or a connection error
    fetch_retry_backoff_s: float = Field(0.5, ge=0)  # first pause without Retry-After, doubling
    max_redirects: int = 3

    max_group_images: int = 10_000
    bulk_threshold: int = 500
    group_progress_interval_s: float = 5.0
    webhook_payload_cap_bytes: int = 256 * 1024

    model_timeout_s: float = 120.0
    log_format: LogFormat = LogFormat.TEXT  # sightwire serve's worker log lines: text or json
    serve_ingress: ServeIngress = ServeIngress.HAPROXY  # applied where Sightwire starts Ray itself
    # How long a stopping ingress (proxy or direct-ingress replica) keeps draining, where Sightwire
    # starts Ray itself: no load balancer stands in front of a local stack, and Serve's 30 s
    # default made every stop (tests, sightwire serve, the demo) wait 30 s.
    serve_drain_s: float = Field(2.0, gt=0)
    gpu_policy: GpuPolicy = GpuPolicy.AUTO  # a model's GPU ask on a cluster with none (core/placement.py)
    # The online engine (deployments/engine, docs/engine.md): per processor replica unless said.
    processor_min_replicas: int = Field(1, ge=1)  # >= 1: a replica must be there to report the backlog
    processor_max_replicas: int = Field(4, ge=1)
    engine_max_in_flight: int = Field(256, ge=1)  # jobs a replica holds (claimed, leased) at once
    engine_org_max_in_flight: int = Field(128, ge=1)  # of those, one org's at most
    # while the replica's event loop lags more than this, one org's cap narrows toward two batches
    # of its largest model (deployments/engine/governor.py); 0 keeps the cap fixed
    engine_loop_lag_target_ms: float = Field(10.0, ge=0)
    engine_host_fetches: int = Field(32, ge=1)  # downloads at once to one destination host
    # of those, one org's at most: the rest stay free for other orgs' images on the same host
    engine_org_host_fetches: int = Field(24, ge=1)
    engine_decode_threads: int = Field(0, ge=0)  # 0: one per CPU of the replica
    engine_body_budget_bytes: int = Field(256 * 1024 * 1024, ge=1)  # downloaded bodies not yet decoded
    engine_pixel_budget: int = Field(120_000_000, ge=1)  # decoded pixels not yet handed to the models
    job_lease_s: float = Field(15.0, gt=0)  # a claim expires unless its replica renews it (lease / 3)
    job_reclaim_interval_s: float = Field(1.0, gt=0)  # how often expired leases go back to their queue
    max_job_attempts: int = Field(3, ge=1)  # claims of one job before it goes to the dead letters
    job_retry_delay_s: float = Field(5.0, ge=0)  # a job that failed unexpectedly is claimed again after this
    max_bulk_runs: int = Field(2, ge=1)  # bulk group runs (Ray Data) one processor replica holds at once
    queue_quantum: int = Field(1, ge=1)  # jobs one org may take per round-robin visit (x its weight)

    webhook_timeout_s: float = 10.0
    retry_schedule_s: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE_S
    retry_jitter: float = Field(0.1, ge=0.0, le=1.0)
    delivery_lease_s: float = 60.0
    notifier_poll_s: float = 0.5
    # Webhook delivery: isolation, circuit breaker, slow-down, retention, secret rotation.
    notifier_max_in_flight: int = Field(256, ge=1)  # sends at once, all endpoints together
    endpoint_concurrency: int = Field(8, ge=1)  # sends at once to one endpoint
    notifier_org_max_in_flight: int = Field(64, ge=1)  # sends at once for one org, all its endpoints
    notifier_host_max_in_flight: int = Field(64, ge=1)  # sends at once to one destination host, all orgs
    breaker_failure_threshold: int = Field(5, ge=1)  # consecutive failures that open the breaker
    breaker_cooldown_s: float = Field(30.0, gt=0)  # open → half-open probe; doubles per failed probe
    breaker_max_cooldown_s: float = Field(600.0, gt=0)
    endpoint_disable_after_s: float = Field(5 * 24 * 3600.0, gt=0)  # failing continuously this long
    slowdown_s: float = Field(5.0, ge=0)  # pause after 429/502/503/504 without Retry-After
    retry_after_min_s: float = Field(1.0, ge=0)  # Retry-After is clamped to this range
    retry_after_max_s: float = Field(3600.0, ge=0)
    webhook_response_read_bytes: int = Field(65_536, ge=0)  # read (and drop) this much of a reply
    delivery_retention_s: float = Field(30 * 24 * 3600.0, ge=0)  # finished deliveries; 0 keeps them
    webhook_secret_grace_s: float = Field(24 * 3600.0, ge=0)  # old secret still signs after rotation

    # The API contract (docs/api.md): rate limits per key (0: unlimited; an org's own setting
    # overrides), Idempotency-Key retention and how long a duplicate waits for the first request.
    rate_limit_requests_per_s: float = Field(0.0, ge=0)
    rate_limit_images_per_min: float = Field(0.0, ge=0)
    idempotency_ttl_s: int = Field(24 * 3600, ge=1)
    idempotency_wait_s: float = Field(10.0, ge=0)

    readiness_interval_s: float = Field(1.0, gt=0)  # how often each API replica refreshes /readyz's snapshot

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.delivery_lease_s <= self.webhook_timeout_s:
            raise ValueError(
                f"delivery_lease_s ({self.delivery_lease_s}) must exceed webhook_timeout_s "
                f"({self.webhook_timeout_s}), or a slow send is claimed twice"
            )
        if self.retry_after_min_s > self.retry_after_max_s:
            raise ValueError("retry_after_min_s cannot exceed retry_after_max_s")
        if self.breaker_cooldown_s > self.breaker_max_cooldown_s:
            raise ValueError("breaker_cooldown_s cannot exceed breaker_max_cooldown_s")
        if self.processor_min_replicas > self.processor_max_replicas:
            raise ValueError("processor_min_replicas cannot exceed processor_max_replicas")
        if self.engine_org_max_in_flight > self.engine_max_in_flight:
            raise ValueError("engine_org_max_in_flight cannot exceed engine_max_in_flight")
        if self.job_reclaim_interval_s >= self.job_lease_s:
            raise ValueError("job_reclaim_interval_s must be shorter than job_lease_s")
        return self

    @field_validator("allow_private_cidrs", mode="before")
    @classmethod
    def _parse_cidrs(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in value.replace(" ", ",").split(",") if part]
        return tuple(ipaddress.ip_network(v, strict=False) for v in value)

    @field_validator("retry_schedule_s", mode="before")
    @classmethod
    def _parse_floats(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(float(part) for part in value.split(",") if part.strip())
        return value

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``SIGHTWIRE_*`` variables (and ``REDIS_URL``), then ``overrides``."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is not None:
                values[name] = raw
        if "redis_url" not in values and env.get("REDIS_URL"):
            values["redis_url"] = env["REDIS_URL"]
        values.update(overrides)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, tuple):
                value = ",".join(str(v) for v in value)
            env[ENV_PREFIX + name.upper()] = str(value)
        env["REDIS_URL"] = self.redis_url
        return env
