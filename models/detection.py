"""The ``object-detection`` family: a DETR-style detector, and its random-weight local build.

Each image is resized to the registry's square ``input_size`` (``prepare``, CPU, per request)
and the batch is normalised as one stacked tensor (``run``), so an image gets the same answer
alone or in any batch (no padding effects), and the batch moves to the device once, as uint8.
Boxes come back normalised and in pixels of the original image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForObjectDetection,
    DetrConfig,
    DetrForObjectDetection,
    DetrImageProcessorPil,
    ResNetConfig,
)

from core.registry import ModelSpec
from imaging import DecodedImage
from models.base import ModelRunner, Prepared
from models.loading import model_version

BOX_KEYS = ("xmin", "ymin", "xmax", "ymax")
# The labels of the locally built (random-weight) detector.
DETECTION_LABELS = (
    "person", "chair", "couch", "bed", "dining table", "toilet", "sink", "tv", "oven", "refrigerator",
)


def as_box(values: torch.Tensor, ndigits: int) -> dict[str, float]:
    return {key: round(v, ndigits) for key, v in zip(BOX_KEYS, values.tolist(), strict=True)}


def square(image: DecodedImage, size: int) -> np.ndarray:
    """The image resized to a ``size`` square (bilinear): uint8 HWC."""
    return np.asarray(Image.fromarray(image.pixels).resize((size, size), Image.Resampling.BILINEAR))


class Detector(ModelRunner):
    """A detector loaded with ``from_pretrained``; plain Python so it can also run bare (benchmarks)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.model = self.pretrained(AutoModelForObjectDetection)
        self.model.to(self.device, self.dtype).eval()
        processor = self.pretrained(AutoImageProcessor)
        self.normalise(processor.image_mean, processor.image_std)
        self.labels = [self.model.config.id2label[i] for i in range(len(self.model.config.id2label))]
        commit = getattr(self.pretrained(AutoConfig), "_commit_hash", None)
        self.version = model_version(spec, commit)

    @torch.inference_mode()
    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scores, labels and normalised xyxy boxes for a batch, all still on the device."""
        outputs = self.model(pixel_values=pixel_values)
        probs = outputs.logits.float().softmax(-1)[..., :-1]  # the last class is "no object"
        scores, labels = probs.max(-1)
        cx, cy, w, h = outputs.pred_boxes.float().unbind(-1)
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1).clamp(0.0, 1.0)
        return scores, labels, boxes

    def prepare(self, image: DecodedImage) -> Prepared:
        return Prepared(square(image, self.spec.input_size), image.width, image.height)

    def features(self, batch: list[Prepared]) -> list[dict[str, Any]]:
        scores, labels, boxes = self.forward(self.tensors(np.stack([p.pixels for p in batch])))
        scores, labels, boxes = scores.cpu(), labels.cpu(), boxes.cpu()  # one sync per batch
        return [self._result(p, scores[i], labels[i], boxes[i]) for i, p in enumerate(batch)]

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



# --- the local (random-weight) build -------------------------------------------------------------


@dataclass(frozen=True)
class DetrShape:
    """Shapes of a locally built detector (a ResNet backbone under a small DETR)."""

    resnet_hidden: tuple[int, ...]
    resnet_depths: tuple[int, ...]
    detr_dim: int
    detr_layers: int
    detr_heads: int
    detr_queries: int


SHAPES = {
    "tiny": DetrShape(
        resnet_hidden=(16, 32, 64, 128), resnet_depths=(1, 1, 1, 1),
        detr_dim=64, detr_layers=2, detr_heads=2, detr_queries=20,
    ),
    "bench": DetrShape(
        resnet_hidden=(32, 64, 128, 256), resnet_depths=(1, 1, 1, 1),
        detr_dim=128, detr_layers=2, detr_heads=4, detr_queries=50,
    ),
}


def build_local_detector(directory: Path, specs: list[ModelSpec], size: str, seed: int = 0) -> None:
    """A random-weight DETR checkpoint at ``size`` in ``directory`` (the same for any ``specs``)."""
    shape = SHAPES[size]
    torch.manual_seed(seed)
    backbone = ResNetConfig(
        embedding_size=shape.resnet_hidden[0], hidden_sizes=list(shape.resnet_hidden),
        depths=list(shape.resnet_depths), out_features=["stage4"],
    )
    config = DetrConfig(
        backbone_config=backbone,
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        d_model=shape.detr_dim,
        encoder_layers=shape.detr_layers,
        decoder_layers=shape.detr_layers,
        encoder_attention_heads=shape.detr_heads,
        decoder_attention_heads=shape.detr_heads,
        encoder_ffn_dim=2 * shape.detr_dim,
        decoder_ffn_dim=2 * shape.detr_dim,
        num_queries=shape.detr_queries,
        id2label=dict(enumerate(DETECTION_LABELS)),
        label2id={label: i for i, label in enumerate(DETECTION_LABELS)},
    )
    DetrForObjectDetection(config).eval().save_pretrained(directory)
    DetrImageProcessorPil(size={"height": 256, "width": 256}, do_pad=False).save_pretrained(directory)
