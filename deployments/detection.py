"""The ``object-detection`` model family: a DETR-style detector behind a batched Serve deployment.

Each image is resized to the registry's square ``input_size`` (``prepare``, CPU, per request)
and the batch is normalised as one stacked tensor (``run``), so an image gets the same answer
alone or in any batch (no padding effects), and the batch moves to the device once, as uint8.
Boxes come back normalised and in pixels of the original image.
"""

from __future__ import annotations

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
from deployments.runner import Prepared
from deployments.serving import BatchedModel

BOX_KEYS = ("xmin", "ymin", "xmax", "ymax")


def as_box(values: torch.Tensor, ndigits: int) -> dict[str, float]:
    return {key: round(v, ndigits) for key, v in zip(BOX_KEYS, values.tolist(), strict=True)}


def square(image: DecodedImage, size: int) -> np.ndarray:
    """The image resized to a ``size`` square (bilinear): uint8 HWC."""
    return np.asarray(Image.fromarray(image.pixels).resize((size, size), Image.Resampling.BILINEAR))


def square_batch(images: list[DecodedImage], size: int) -> np.ndarray:
    """Resize each image to a ``size`` square (bilinear) and stack: uint8, NHWC."""
    return np.stack([square(img, size) for img in images])


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

    def prepare(self, image: DecodedImage) -> Prepared:
        return Prepared(square(image, self.spec.input_size), image.width, image.height)

    def run(self, batch: list[Prepared]) -> list[dict[str, Any]]:
        scores, labels, boxes = self.forward(self.tensors(np.stack([p.pixels for p in batch])))
        scores, labels, boxes = scores.cpu(), labels.cpu(), boxes.cpu()  # one sync per batch
        return [self._result(p, scores[i], labels[i], boxes[i]) for i, p in enumerate(batch)]

    def predict(self, images: list[DecodedImage]) -> list[dict[str, Any]]:
        return self.run([self.prepare(img) for img in images])

    def _result(
        self, image: Prepared, scores: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor
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
class ObjectDetection(BatchedModel):
    """Serve deployment: requests for single images are gathered into batches by ``@serve.batch``."""

    def __init__(self, spec: ModelSpec) -> None:
        self._serve(Detector(spec), spec)
