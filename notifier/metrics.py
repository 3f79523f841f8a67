"""The notifier's metrics, exported by Ray's metrics agent for Prometheus to scrape.

Names as Prometheus sees them (Ray adds the ``ray_`` prefix):

- ``ray_sightwire_webhook_deliveries_total{outcome}``: every attempt's outcome (``delivered``,
  ``retrying``, ``held``, ``failed``, ``superseded``, ``stale``), plus ``superseded`` for updates
  replaced before they were sent
- ``ray_sightwire_webhook_attempt_latency_ms``: histogram, request start to response headers
- ``ray_sightwire_webhook_held_deliveries{endpoint}``: deliveries an open or disabled breaker holds
- ``ray_sightwire_webhook_breaker_state{endpoint}``: 0 closed, 1 half-open, 2 open, 3 disabled
- ``ray_sightwire_webhook_in_flight``: sends in progress

``endpoint`` is the endpoint id (``ep_…``, per org and URL, as ``GET /v1/endpoints`` shows it),
so a URL never becomes a label. Outside a Ray worker (the benchmark runs the loop in a plain
process) the same calls only update the in-process ``counts``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import ray

from core.delivery import Outcome
from core.schemas import EndpointState

# Breaker state as a number, for the gauge.
STATE_VALUE = {EndpointState.CLOSED: 0, EndpointState.HALF_OPEN: 1, EndpointState.OPEN: 2, EndpointState.DISABLED: 3}
LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]


class NotifierMetrics:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._ray = ray.is_initialized()
        if self._ray:
            from ray.util.metrics import Counter as RayCounter
            from ray.util.metrics import Gauge, Histogram

            self._deliveries: Any = RayCounter(
                "sightwire_webhook_deliveries_total",
                description="Webhook delivery attempts and supersessions, by outcome.",
                tag_keys=("outcome",),
            )
            self._latency: Any = Histogram(
                "sightwire_webhook_attempt_latency_ms",
                description="Webhook attempt latency, request start to response headers (ms).",
                boundaries=LATENCY_BOUNDARIES_MS,
            )
            self._held: Any = Gauge(
                "sightwire_webhook_held_deliveries",
                description="Deliveries held for an endpoint whose breaker is open or that is disabled.",
                tag_keys=("endpoint",),
            )
            self._breaker: Any = Gauge(
                "sightwire_webhook_breaker_state",
                description="Endpoint circuit breaker: 0 closed, 1 half-open, 2 open, 3 disabled.",
                tag_keys=("endpoint",),
            )
            self._in_flight: Any = Gauge(
                "sightwire_webhook_in_flight", description="Webhook sends in progress."
            )

    def outcome(self, outcome: Outcome, n: int = 1) -> None:
        if n <= 0:
            return
        self.counts[outcome.value] += n
        if self._ray:
            self._deliveries.inc(n, tags={"outcome": outcome.value})

    def latency(self, latency_ms: float) -> None:
        if self._ray:
            self._latency.observe(latency_ms)

    def endpoint(self, eid: str, state: EndpointState, held: int) -> None:
        if self._ray:
            self._breaker.set(STATE_VALUE[state], tags={"endpoint": eid})
            self._held.set(held, tags={"endpoint": eid})

    def in_flight(self, n: int) -> None:
        if self._ray:
            self._in_flight.set(n)
