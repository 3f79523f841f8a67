"""The zero-shot CLIP family: room classification and 1-6 scoring from prompt sets, and its
random-weight local build.

One family serves two registry tasks. ``zero-shot-image-classification`` answers the most
probable class with its top-k; ``scoring`` reads a 1..6 score (UAD C1-C6 / Q1-Q6) from the
distribution over six ordered classes. Each class's text embedding is the normalised mean of its
prompts' embeddings, computed once at load; after that the text tower is dropped and a batch is
one vision forward; each model is then a head on the image embedding (one matrix product with
its class embeddings). One runner holds every model of a backbone (``ModelSpec.backbone``): the
weights once, the vision forward once per image, however many prompt sets ask about it.

Preparation follows CLIP's own preprocessing (shortest side to the processor's size, bicubic,
centre crop) but crops first, in one Pillow ``resize`` with a source box: the same pixels for a
fraction of the work, and no giant intermediate for a panorama. Every image of a model has the
same shape, so a batch is one stacked uint8 tensor, moved to the device once.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

from core.registry import ModelSpec, Task
from core.schemas import ModelInfo
from imaging import DecodedImage
from models.base import ModelRunner, Prepared
from models.clip_vocabulary import prompt_words, prompts_of, write_clip_vocabulary
from models.loading import model_version, precision_name

RESAMPLING = {int(r): r for r in Image.Resampling}


def crop_box(width: int, height: int, shortest: int, crop_w: int, crop_h: int) -> tuple[float, ...]:
    """The source region that "resize the shortest side to ``shortest``, then centre-crop
    ``crop_w`` x ``crop_h``" keeps, in source pixels."""
    scale = shortest / min(width, height)
    box_w, box_h = min(crop_w / scale, width), min(crop_h / scale, height)
    left, top = (width - box_w) / 2, (height - box_h) / 2
    return (left, top, left + box_w, top + box_h)


@dataclass(frozen=True)
class PromptHead:
    """One zero-shot model on the shared image embedding: its class embeddings' rows in the
    runner's stacked matrix, and how its result reads the probabilities."""

    spec: ModelSpec
    version: str
    rows: slice  # this model's classes in ``ZeroShotClassifier.class_embeds``

    def result(self, logits: np.ndarray) -> dict[str, Any]:
        """The result from this head's logits (one image): softmax, then classify or score."""
        exp = np.exp(logits - logits.max())
        probs = (exp / exp.sum()).tolist()
        if self.spec.task is Task.SCORING:
            return self._score(probs)
        return self._classify(probs)

    def _classify(self, probs: list[float]) -> dict[str, Any]:
        labels = self.spec.labels
        order = sorted(range(len(probs)), key=lambda i: probs[i], reverse=True)
        top = [{"label": labels[i], "confidence": round(probs[i], 6)} for i in order[: self.spec.top_k]]
        return {"label": top[0]["label"], "confidence": top[0]["confidence"], "topK": top}

    def _score(self, probs: list[float]) -> dict[str, Any]:
        expected = sum((level + 1) * p for level, p in enumerate(probs))
        if self.spec.score == "expected":
            index = min(max(round(expected), 1), len(probs)) - 1
        else:
            index = max(range(len(probs)), key=lambda i: probs[i])
        return {
            "score": index + 1,
            "label": self.spec.labels[index],
            "confidence": round(probs[index], 6),
            "expected": round(expected, 4),
            "distribution": [round(p, 6) for p in probs],
        }


class ZeroShotClassifier(ModelRunner):
    """A CLIP checkpoint plus the registry's prompt sets; plain Python, for Serve and bare loops.

    ``spec`` is the runner's own model; ``shared`` are other zero-shot models on the same
    backbone (``ModelSpec.backbone``): one copy of the weights and one vision forward per image
    serve them all, each a head (a matrix product with its class embeddings) on the embedding."""

    def __init__(self, spec: ModelSpec, *shared: ModelSpec) -> None:
        super().__init__(spec)
        specs = (spec, *shared)
        if len({s.backbone for s in specs}) != 1:
            raise ValueError(f"models {[s.name for s in specs]} do not share one CLIP backbone")
        model = self.pretrained(CLIPModel).eval()
        tokenizer = self.pretrained(CLIPTokenizer)
        processor = self.pretrained(CLIPImageProcessorPil)

        size, crop = processor.size, processor.crop_size
        self.shortest = int(size.get("shortest_edge") or min(size["height"], size["width"]))
        self.crop = (int(crop["width"]), int(crop["height"]))
        self.resample = RESAMPLING.get(int(processor.resample), Image.Resampling.BICUBIC)
        self.normalise(processor.image_mean, processor.image_std)

        commit = getattr(model.config, "_commit_hash", None)
        model.to(self.device)
        embeds = [self._class_embeddings(model, tokenizer, s) for s in specs]
        self.logit_scale = float(model.logit_scale.detach().exp())
        # Only the image tower runs per batch; the text tower is no longer needed.
        self.vision = model.vision_model.to(self.device, self.dtype)
        self.projection = model.visual_projection.to(self.device, self.dtype)
        del model

        # Every head's class embeddings in one matrix: one product answers all of an image's heads.
        self.class_embeds = torch.cat(embeds).cpu().numpy()  # fp32 [all classes, dim]
        self.heads: dict[str, PromptHead] = {}
        start = 0
        for s, e in zip(specs, embeds, strict=True):
            config = json.dumps({"classes": [c.model_dump() for c in s.classes], "score": s.score})
            self.heads[s.name] = PromptHead(s, model_version(s, commit, config), slice(start, start + len(e)))
            start += len(e)
        self.labels = spec.labels
        self.version = self.heads[spec.name].version

    @torch.inference_mode()
    def _class_embeddings(self, model: CLIPModel, tokenizer: CLIPTokenizer, spec: ModelSpec) -> torch.Tensor:
        """One unit vector per class: the normalised mean of its prompts' unit embeddings."""
        embeds = []
        for cls in spec.classes:
            tokens = tokenizer(list(cls.prompts), padding=True, truncation=True, return_tensors="pt")
            text = model.get_text_features(**tokens.to(self.device)).pooler_output.float()
            mean = torch.nn.functional.normalize(text, dim=-1).mean(0)
            embeds.append(torch.nn.functional.normalize(mean, dim=-1))
        return torch.stack(embeds)

    @property
    def names(self) -> list[str]:
        return list(self.heads)

    def version_of(self, name: str) -> str:
        return self.heads[name].version

    def info(self, name: str | None = None) -> ModelInfo:
        spec = self.heads[name or self.spec.name].spec
        return ModelInfo(
            name=spec.name, task=spec.task, version=self.version_of(spec.name), labels=spec.labels,
            device=str(self.device), precision=precision_name(self.dtype),
        )

    def prepare(self, image: DecodedImage) -> Prepared:
        height, width = image.pixels.shape[:2]
        box = crop_box(width, height, self.shortest, *self.crop)
        pixels = Image.fromarray(image.pixels).resize(self.crop, self.resample, box=box)
        return Prepared(np.asarray(pixels), image.width, image.height)

    @torch.inference_mode()
    def embeddings(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 NHWC on the host → unit image embeddings [batch, dim] (fp32) on the host."""
        features = self.projection(self.vision(pixel_values=self.tensors(pixels)).pooler_output).float()
        features = torch.nn.functional.normalize(features, dim=-1)
        return features.cpu().numpy()  # the batch's only device-to-host copy and sync

    def features(self, batch: list[Prepared]) -> list[np.ndarray]:
        return list(self.embeddings(np.stack([p.pixels for p in batch])))

    def answer(self, features: np.ndarray, names: Collection[str]) -> dict[str, dict[str, Any]]:
        """Each of ``names``' result from one image embedding: every head's logits in one product."""
        logits = self.logit_scale * (self.class_embeds @ features)
        return {name: self.heads[name].result(logits[self.heads[name].rows]) for name in names}


# --- the local (random-weight) build -------------------------------------------------------------


@dataclass(frozen=True)
class ClipShape:
    """Shapes of a locally built CLIP (both towers)."""

    clip_image: int
    clip_patch: int
    clip_vision_dim: int
    clip_vision_layers: int
    clip_text_dim: int
    clip_text_layers: int
    clip_heads: int
    clip_projection: int


SHAPES = {
    "tiny": ClipShape(
        clip_image=64, clip_patch=16, clip_vision_dim=32, clip_vision_layers=2,
        clip_text_dim=32, clip_text_layers=2, clip_heads=2, clip_projection=32,
    ),
    "bench": ClipShape(
        clip_image=224, clip_patch=32, clip_vision_dim=256, clip_vision_layers=4,
        clip_text_dim=256, clip_text_layers=2, clip_heads=4, clip_projection=256,
    ),
}


def build_local_clip(directory: Path, specs: list[ModelSpec], size: str, seed: int = 0) -> None:
    """A random-weight CLIPModel at ``size``, a real CLIPTokenizer whose vocabulary covers the
    prompts of ``specs``, and a CLIP image processor config, in ``directory``."""
    shape = SHAPES[size]
    vocab_size = write_clip_vocabulary(directory, prompt_words(prompts_of(specs)))
    tokenizer = CLIPTokenizer(vocab=str(directory / "vocab.json"), merges=str(directory / "merges.txt"))
    tokenizer.save_pretrained(directory)
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "vocab_size": vocab_size, "hidden_size": shape.clip_text_dim,
            "intermediate_size": 4 * shape.clip_text_dim, "num_hidden_layers": shape.clip_text_layers,
            "num_attention_heads": shape.clip_heads, "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "image_size": shape.clip_image, "patch_size": shape.clip_patch,
            "hidden_size": shape.clip_vision_dim, "intermediate_size": 4 * shape.clip_vision_dim,
            "num_hidden_layers": shape.clip_vision_layers, "num_attention_heads": shape.clip_heads,
        },
        projection_dim=shape.clip_projection,
    )
    CLIPModel(config).eval().save_pretrained(directory)
    CLIPImageProcessorPil(
        size={"shortest_edge": shape.clip_image},
        crop_size={"height": shape.clip_image, "width": shape.clip_image},
    ).save_pretrained(directory)
