"""Each stage's bound in one processor replica, all fair by org (``core.limits.FairLimiter``).

What a replica can hold at once, and so its worst-case memory, follows from these and the
settings (``docs/engine.md``, "Memory bounds"):

* ``fetch``: downloads in flight, one per held job at most (``engine_max_in_flight``), at most
  ``engine_org_max_in_flight`` of one org and ``engine_host_fetches`` to one destination host,
  so a slow host of one org cannot take every slot;
* ``bodies``: bytes of downloaded bodies not yet decoded (``engine_body_budget_bytes``);
* ``decode``: decodes running at once, one per thread of the decode pool;
* ``pixels``: pixels of decoded images not yet handed to every model
  (``engine_pixel_budget``), the seam the decode-memory bound of the hardening issue shares;
* ``models[name]``: images in flight to each model, enough to fill every replica's batches
  twice over (one batch running, one gathering): ``2 x max_batch_size x max_replicas``.

Every stage shares its capacity by the org weights the queue's claim uses (``OrgWeights``, the
replica's copy of ``core.store.weights``), so an org of weight 2 gets twice the share at each
stage, not only twice the claims.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from core.limits import FairLimiter
from core.registry import ModelSpec
from core.settings import Settings
from core.store.weights import DEFAULT_WEIGHT, Weights
from deployments.engine.governor import OrgCapGovernor

BODY_QUANTUM = 1024 * 1024  # a typical photo: an org's credit per visit at the byte budget
PIXEL_QUANTUM = 2_000_000  # a typical decoded photo (e.g. 1333 x 1000)


def decode_threads(settings: Settings) -> int:
    """The decode pool: ``engine_decode_threads``, or one per CPU this process may use."""
    return settings.engine_decode_threads or len(os.sched_getaffinity(0))


def model_in_flight(spec: ModelSpec) -> int:
    """Images in flight to a model that keep all its replicas' batches full."""
    return 2 * spec.batching.max_batch_size * spec.autoscaling.max_replicas


def org_cap_governor(settings: Settings, specs: Iterable[ModelSpec]) -> OrgCapGovernor | None:
    """The online intake's per-org cap under loop lag (None: ``engine_loop_lag_target_ms`` 0):
    never below two batches of the largest model, one running and one gathering, so a capped org
    still fills its batches."""
    if not settings.engine_loop_lag_target_ms:
        return None
    floor = 2 * max((spec.batching.max_batch_size for spec in specs), default=1)
    return OrgCapGovernor(ceiling=settings.engine_org_max_in_flight, floor=floor,
                          target_lag_s=settings.engine_loop_lag_target_ms / 1000)


class OrgWeights:
    """The operator's per-org weights (``core.store.weights``) as one replica uses them: a stage
    limiter decides inside a synchronous dispatch and every claim passes them to the queue's
    script, so both read this copy, which ``refresh`` renews from Redis (the processor does,
    with its metrics, every ``core.metrics.REFRESH_S``); an org not set has weight 1."""

    def __init__(self) -> None:
        self.current: dict[str, float] = {}

    def __call__(self, org: str) -> float:
        return self.current.get(org, DEFAULT_WEIGHT)

    async def refresh(self, weights: Weights) -> None:
        self.current = await weights.all()


@dataclass(frozen=True)
class StageLimits:
    fetch: FairLimiter
    bodies: FairLimiter
    decode: FairLimiter
    pixels: FairLimiter
    models: dict[str, FairLimiter]

    @classmethod
    def build(cls, settings: Settings, specs: Mapping[str, ModelSpec],
              weight: Callable[[str], float] | None = None) -> StageLimits:
        """From the settings and the registry; ``weight(org)`` is the queue's per-org weight."""
        org_cap = settings.engine_org_max_in_flight
        return cls(
            fetch=FairLimiter(settings.engine_max_in_flight, flow_cap=org_cap, key_cap=settings.engine_host_fetches,
                              flow_key_cap=settings.engine_org_host_fetches, weight=weight),
            bodies=FairLimiter(settings.engine_body_budget_bytes, quantum=BODY_QUANTUM, weight=weight),
            decode=FairLimiter(decode_threads(settings), weight=weight),
            pixels=FairLimiter(settings.engine_pixel_budget, quantum=PIXEL_QUANTUM, weight=weight),
            models={name: FairLimiter(model_in_flight(spec), weight=weight) for name, spec in specs.items()},
        )
