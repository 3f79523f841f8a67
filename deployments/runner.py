"""The interface every model family implements, so Serve deployments and Ray Data actors can
run any registry model the same way.

A model's work is split in two: ``prepare`` is the per-image CPU work (resize, crop) that runs
as each request arrives, concurrently with the batch in flight; ``run`` is the batched tensor
work (one host-to-device transfer, one forward, one device-to-host transfer per batch).
``predict`` is both, for callers that already hold a batch (Ray Data, benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from core.registry import ModelSpec
from core.schemas import ModelInfo
from deployments.images import DecodedImage


@dataclass(frozen=True)
class Prepared:
    """One image at the model's input geometry, plus the original size results refer to."""

    pixels: np.ndarray  # uint8 HxWx3 RGB, the same shape for every image of a model
    width: int
    height: int


class ModelRunner(Protocol):
    """A loaded model: ``predict`` takes a batch of decoded images, returns one result each."""

    spec: ModelSpec
    version: str

    def __init__(self, spec: ModelSpec) -> None: ...

    def info(self) -> ModelInfo: ...

    def prepare(self, image: DecodedImage) -> Prepared: ...

    def run(self, batch: list[Prepared]) -> list[dict[str, Any]]: ...

    def predict(self, images: list[DecodedImage]) -> list[dict[str, Any]]: ...
