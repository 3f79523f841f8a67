"""The engine's and the models' metrics, exported by Ray's metrics agent for Prometheus to scrape.

The notifier's are in ``notifier.metrics``; docs/operations.md lists them all. Names as
Prometheus sees them (Ray adds the ``ray_`` prefix, and labels each series with the worker that
reports it: ``WorkerId``, ``NodeAddress``, …):

From each processor replica (``deployments.processor``):

- ``ray_sightwire_queue_depth{queue,org}``: jobs waiting in the ``online`` / ``bulk`` queue, per
  org (the whole queue, as this replica last read it: every replica reports the same figure, so
  aggregate with ``max``); an org whose queue emptied reads 0
- ``ray_sightwire_dead_letters{queue}``: jobs buried after using up their attempts
- ``ray_sightwire_jobs_in_flight{queue}``: jobs this replica holds (aggregate with ``sum``)
- ``ray_sightwire_fetch_errors_total{code}``: images failed before any model ran (fetch, size
  limits, decode), by error code
- ``ray_sightwire_decode_ms``: histogram, one image's decode
- ``ray_sightwire_model_latency_ms{model}``: histogram, one model call as the processor sees it
  (queueing, coalescing and the batch included)

From each model replica (``deployments.serving``):

- ``ray_sightwire_model_batch_ms{model}``: histogram, one batch in the model
- ``ray_sightwire_model_batch_size{model}``: histogram, images per batch

Outside a Ray worker or driver (plain unit tests, benchmarks) every call is a no-op.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray

from core.schemas import ErrorCode
from core.store.jobs import Jobs, QueueName

REFRESH_S = 5.0  # how often a processor replica reads the queues for the gauges
MS_BOUNDARIES = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128]


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000


class EngineMetrics:
    """What a processor replica reports; ``refresh`` is its periodic step (``REFRESH_S``)."""

    def __init__(self) -> None:
        self._ray = ray.is_initialized()
        self._seen: dict[QueueName, set[str]] = {name: set() for name in QueueName}  # orgs with a series
        if not self._ray:
            return
        from ray.util.metrics import Counter, Gauge, Histogram

        self._depth: Any = Gauge("sightwire_queue_depth", description="Jobs waiting, per queue and org.",
                                 tag_keys=("queue", "org"))
        self._dead: Any = Gauge("sightwire_dead_letters", description="Dead-lettered jobs, per queue.",
                                tag_keys=("queue",))
        self._in_flight: Any = Gauge("sightwire_jobs_in_flight", description="Jobs this replica holds, per queue.",
                                     tag_keys=("queue",))
        self._org_cap: Any = Gauge(
            "sightwire_engine_org_cap", tag_keys=("queue",),
            description="Jobs one org may hold in this replica now, per queue (narrowed while its loop lags).",
        )
        self._fetch_errors: Any = Counter(
            "sightwire_fetch_errors_total", tag_keys=("code",),
            description="Images failed before any model ran (fetch, size limits, decode), by error code.",
        )
        self._decode: Any = Histogram("sightwire_decode_ms", description="One image's decode (ms).",
                                      boundaries=MS_BOUNDARIES)
        self._model: Any = Histogram(
            "sightwire_model_latency_ms", description="One model call from the processor, batching included (ms).",
            boundaries=MS_BOUNDARIES, tag_keys=("model",),
        )

    def claimed(self, queue: QueueName, org: str) -> None:
        """An org had a job: it gets a depth series at the next refresh even if its queue is
        already empty by then (a fast drain would otherwise never show)."""
        if self._ray:
            self._seen[queue].add(org)

    async def refresh(self, jobs: Jobs, in_flight: dict[QueueName, int], org_cap: dict[QueueName, int]) -> None:
        """Queue depths per org (0 for orgs seen before and now drained), dead letters, in flight,
        and the per-org cap."""
        if not self._ray:
            return
        for name, queue in jobs.queues.items():
            seen, self._seen[name] = self._seen[name], set()
            queued = (await queue.depth()).queued
            for org in seen | set(queued):
                self._depth.set(queued.get(org, 0), tags={"queue": name.value, "org": org})
            self._seen[name] |= set(queued)  # a drained org keeps its 0 and is not set again
            self._dead.set(await jobs.dead[name].count(), tags={"queue": name.value})
            self._in_flight.set(in_flight.get(name, 0), tags={"queue": name.value})
            if name in org_cap:
                self._org_cap.set(org_cap[name], tags={"queue": name.value})

    def fetch_error(self, code: ErrorCode) -> None:
        if self._ray:
            self._fetch_errors.inc(tags={"code": code.value})

    @contextmanager
    def decoding(self) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if self._ray:
            self._decode.observe(_ms_since(start))

    @contextmanager
    def model_call(self, model: str) -> Iterator[None]:
        """Times the call whether it answers or fails (a timeout shows as the deadline)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            if self._ray:
                self._model.observe(_ms_since(start), tags={"model": model})


class ModelMetrics:
    """What a model replica reports, per batch."""

    def __init__(self, model: str) -> None:
        self._ray = ray.is_initialized()
        if not self._ray:
            return
        from ray.util.metrics import Histogram

        tags = {"model": model}
        self._ms: Any = Histogram("sightwire_model_batch_ms", description="One batch in the model (ms).",
                                  boundaries=MS_BOUNDARIES, tag_keys=("model",)).set_default_tags(tags)
        self._size: Any = Histogram("sightwire_model_batch_size", description="Images per batch.",
                                    boundaries=BATCH_BOUNDARIES, tag_keys=("model",)).set_default_tags(tags)

    @contextmanager
    def batch(self, size: int) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if self._ray:
            self._ms.observe(_ms_since(start))
            self._size.observe(size)
