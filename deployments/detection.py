"""The ``object-detection`` model family: a DETR-style detector behind a batched Serve deployment.

Each image is resized to the registry's square ``input_size`` and normalised as one stacked
tensor, so an image gets the same answer alone or in any batch (no padding effects), and the
batch moves to the device once. Boxes come back normalised and in pixels of the original image.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import torch
from PIL import Image
from ray import serve
from transformers import AutoConfig, AutoImageProcessor, AutoModelForObjectDetection

from core.registry import ModelSpec
from core.schemas import ModelInfo
from deployments.images import DecodedImage
from deployments.loading import checkpoint_source, model_version, pick_device, pick_dtype

BOX_KEYS = ("xmin", "ymin", "xmax", "ymax")


def as_box(values: torch.Tensor, ndigits: int) -> dict[str, float]:
    return {key: round(v, ndigits) for key, v in zip(BOX_KEYS, values.tolist(), strict=True)}


def square_batch(images: list[DecodedImage], size: int) -> np.ndarray:
    """Resize each image to a ``size`` square (bilinear) and stack: uint8, NHWC."""
    return np.stack(
        [np.asarray(Image.fromarray(img.pixels).resize((size, size), Image.Resampling.BILINEAR))
         for img in images]
    )


class Detector:
    """A detector loaded with ``from_pretrained``; plain Python so it can also run bare (benchmarks)."""

    def __init__(self, spec: ModelSpec) -> None:
        source = checkpoint_source(spec)
        self.spec = spec
        self.device = pick_device()
        self.dtype = pick_dtype(spec, self.device)
        self.model = AutoModelForObjectDetection.from_pretrained(source, revision=spec.revision)
        self.model.to(self.device, self.dtype).eval()
        processor = AutoImageProcessor.from_pretrained(source, revision=spec.revision)
        shape = (1, 3, 1, 1)
        self.mean = torch.tensor(processor.image_mean, device=self.device).view(shape) * 255.0
        self.std = torch.tensor(processor.image_std, device=self.device).view(shape) * 255.0
        self.labels = [self.model.config.id2label[i] for i in range(len(self.model.config.id2label))]
        commit = getattr(AutoConfig.from_pretrained(source, revision=spec.revision), "_commit_hash", None)
        self.version = model_version(spec, commit)

    def info(self) -> ModelInfo:
        return ModelInfo(
            name=self.spec.name, task=self.spec.task, version=self.version,
            labels=self.labels, device=str(self.device),
        )

    def tensors(self, pixels: np.ndarray) -> torch.Tensor:
        """uint8 NHWC on the host → normalised NCHW on the device, in one transfer."""
        batch = torch.from_numpy(pixels).to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        return ((batch - self.mean) / self.std).to(self.dtype)

    @torch.inference_mode()
    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores, labels and normalised xyxy boxes for a batch, all still on the device."""
        outputs = self.model(pixel_values=pixel_values)
        probs = outputs.logits.float().softmax(-1)[..., :-1]  # the last class is "no object"
        scores, labels = probs.max(-1)
        cx, cy, w, h = outputs.pred_boxes.float().unbind(-1)
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1).clamp(0.0, 1.0)
        return scores, labels, boxes

    def predict(self, images: list[DecodedImage]) -> list[dict[str, Any]]:
        scores, labels, boxes = self.forward(self.tensors(square_batch(images, self.spec.input_size)))
        scores, labels, boxes = scores.cpu(), labels.cpu(), boxes.cpu()  # one sync per batch
        return [self._result(img, scores[i], labels[i], boxes[i]) for i, img in enumerate(images)]

    def _result(
        self, image: DecodedImage, scores: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor
    ) -> dict[str, Any]:
        keep = (scores >= self.spec.threshold).nonzero().flatten()
        keep = keep[scores[keep].argsort(descending=True)][: self.spec.max_detections]
        scale = torch.tensor([image.width, image.height, image.width, image.height], dtype=torch.float32)
        detections = [
            {
                "label": self.labels[int(labels[i])],
                "score": round(float(scores[i]), 6),
                "box": as_box(boxes[i] * scale, 2),
                "boxNormalized": as_box(boxes[i], 6),
            }
            for i in keep.tolist()
        ]
        return {"detections": detections}


@serve.deployment(max_ongoing_requests=64)
class ObjectDetection:
    """Serve deployment: requests for single images are gathered into batches by ``@serve.batch``."""

    def __init__(self, spec: ModelSpec) -> None:
        self.detector = Detector(spec)
        self.predict.set_max_batch_size(spec.batching.max_batch_size)
        self.predict.set_batch_wait_timeout_s(spec.batching.batch_wait_timeout_s)

    def info(self) -> ModelInfo:
        return self.detector.info()

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def predict(self, images: list[DecodedImage]) -> list[dict[str, Any]]:
        # Inference runs in a thread so the replica keeps accepting requests for the next batch.
        results = await asyncio.to_thread(self.detector.predict, images)
        return [{"version": self.detector.version, "result": r} for r in results]
