"""What every model runner is, so Serve deployments and Ray Data actors run any registry model
the same way, and a new family writes only what is its own.

A model's work is split in three: ``prepare`` is the per-image CPU work (resize, crop) that runs
as each request arrives, concurrently with the batch in flight; ``features`` is the batched
tensor work (one host-to-device transfer, one forward, one device-to-host transfer per batch),
whatever the models' heads read, per image, on the host; ``answer`` is a head: one model's
result from an image's features. A runner may answer several registry models from one forward
(zero-shot prompt sets on one CLIP image embedding: ``core.registry.ModelGroup``), so Serve and
Ray Data run the forward once per image and ask ``answer`` for each model the image wants. A
runner of one model answers that model, and its features are its results.
``run`` and ``predict`` are the runner's own model (``spec``) on a batch, for callers that
already hold one (benchmarks, tests).

The base class holds the set-up every family shares: where the checkpoint is, the device and
dtype, the processor's mean/std normalisation (applied on the device to the uint8 batch), the
labels and version a result names, and ``info``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from core.registry import ModelSpec
from core.schemas import ModelInfo
from imaging import DecodedImage
from models.loading import checkpoint_source, pick_device, pick_dtype, precision_name


@dataclass(frozen=True)
class Prepared:
    """One image at the model's input geometry, plus the original size results refer to."""

    pixels: np.ndarray  # uint8 HxWx3 RGB, the same shape for every image of a model
    width: int
    height: int


class ModelRunner(ABC):
    """A loaded model: ``predict`` takes a batch of decoded images, returns one result each.

    Subclasses call ``super().__init__(spec)``, load their weights with ``pretrained``, call
    ``normalise`` with their processor's mean and std, and set ``labels`` and ``version``."""

    labels: list[str]
    version: str
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.source = checkpoint_source(spec)
        self.device = pick_device()
        self.dtype = pick_dtype(spec, self.device)

    def pretrained(self, kind: Any) -> Any:
        """``kind.from_pretrained`` (a transformers model, processor or tokenizer class) on this
        model's checkpoint and revision."""
        return kind.from_pretrained(self.source, revision=self.spec.revision)

    def normalise(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """The processor's per-channel mean/std, scaled to uint8 pixels, kept on the device."""
        shape = (1, 3, 1, 1)
        self.mean = torch.tensor(mean, device=self.device).view(shape) * 255.0
        self.std = torch.tensor(std, device=self.device).view(shape) * 255.0

    def tensors(self, pixels: np.ndarray) -> torch.Tensor:
        """uint8 NHWC on the host → normalised NCHW on the device, in one transfer."""
        batch = torch.from_numpy(pixels).to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        return ((batch - self.mean) / self.std).to(self.dtype)

    @property
    def names(self) -> list[str]:
        """The registry models this runner answers (its own ``spec`` first)."""
        return [self.spec.name]

    def version_of(self, name: str) -> str:
        return self.version

    def info(self, name: str | None = None) -> ModelInfo:
        """What ``GET /v1/models`` says of model ``name`` (default: the runner's own)."""
        return ModelInfo(
            name=self.spec.name, task=self.spec.task, version=self.version,
            labels=self.labels, device=str(self.device), precision=precision_name(self.dtype),
        )

    def answer(self, features: Any, names: Collection[str]) -> dict[str, dict[str, Any]]:
        """Each of ``names``' result for one image from its ``features``; a runner of one model
        computed its result in ``features`` already."""
        return {self.spec.name: features}

    def run(self, batch: list[Prepared]) -> list[dict[str, Any]]:
        """The runner's own model's result for each prepared image."""
        own = [self.spec.name]
        return [self.answer(features, own)[self.spec.name] for features in self.features(batch)]

    def predict(self, images: list[DecodedImage]) -> list[dict[str, Any]]:
        return self.run([self.prepare(img) for img in images])

    @abstractmethod
    def prepare(self, image: DecodedImage) -> Prepared:
        """The image at this model's input geometry (CPU, one image)."""

    @abstractmethod
    def features(self, batch: list[Prepared]) -> list[Any]:
        """Per prepared image, on the host, what ``answer`` reads (tensor work, one batch)."""
