"""Locally built profiles (``tiny``, ``bench``): real transformers architectures, random weights.

Nothing is downloaded: configs are written here and weights are randomly initialised from a
fixed seed, then saved with ``save_pretrained`` so they load exactly like hub checkpoints, through
the same ``from_pretrained`` code path. Outputs are meaningless; the demo and tests say so.

What gets built is read from the profile's registry (``core/profiles/<profile>.yaml``): every
checkpoint under ``${models_dir}/<profile>/`` is built for the family of the models that use it.
The CLIP checkpoint gets a real ``CLIPTokenizer`` whose small byte-level BPE vocabulary
(``vocab.json`` + ``merges.txt``, written here) covers every word of the profile's prompts, and a
``CLIPImageProcessor`` config. ``size`` picks the shapes: ``tiny`` for tests (milliseconds per
batch), ``bench`` for benchmarks (tens of milliseconds per batch on a laptop CPU, so serving
overhead shows against real work).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPTokenizer,
    DetrConfig,
    DetrForObjectDetection,
    DetrImageProcessorPil,
    ResNetConfig,
)

from core.registry import LOCAL_PROFILES, ZERO_SHOT_TASKS, ModelSpec, Task, load_registry

DETECTION_LABELS = (
    "person", "chair", "couch", "bed", "dining table", "toilet", "sink", "tv", "oven", "refrigerator",
)
READY_MARKER = ".sightwire-tiny-ready"
# Bump when what a build contains changes: a folder built by an older version (for example one
# with only the detector) has a different marker and is rebuilt by ``ensure_local_profile``.
BUILD_VERSION = 2

START, END = "<|startoftext|>", "<|endoftext|>"
# CLIPTokenizer's pre-tokenizer splits words like this (letters, single digits, punctuation runs).
WORD = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+")


@dataclass(frozen=True)
class Size:
    """Shapes of the locally built models."""

    resnet_hidden: tuple[int, ...]
    resnet_depths: tuple[int, ...]
    detr_dim: int
    detr_layers: int
    detr_heads: int
    detr_queries: int
    clip_image: int
    clip_patch: int
    clip_vision_dim: int
    clip_vision_layers: int
    clip_text_dim: int
    clip_text_layers: int
    clip_heads: int
    clip_projection: int


SIZES = {
    "tiny": Size(
        resnet_hidden=(16, 32, 64, 128), resnet_depths=(1, 1, 1, 1),
        detr_dim=64, detr_layers=2, detr_heads=2, detr_queries=20,
        clip_image=64, clip_patch=16, clip_vision_dim=32, clip_vision_layers=2,
        clip_text_dim=32, clip_text_layers=2, clip_heads=2, clip_projection=32,
    ),
    "bench": Size(
        resnet_hidden=(32, 64, 128, 256), resnet_depths=(1, 1, 1, 1),
        detr_dim=128, detr_layers=2, detr_heads=4, detr_queries=50,
        clip_image=224, clip_patch=32, clip_vision_dim=256, clip_vision_layers=4,
        clip_text_dim=256, clip_text_layers=2, clip_heads=4, clip_projection=256,
    ),
}


def build_tiny_detector(directory: Path, seed: int = 0, size: str = "tiny") -> None:
    shape = SIZES[size]
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


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: every byte as a printable character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(mapping.items()))


def prompt_words(prompts: list[str]) -> list[str]:
    """The words CLIPTokenizer's pre-tokenizer makes of ``prompts`` (lower-cased), sorted."""
    return sorted({word for prompt in prompts for word in WORD.findall(prompt.lower())})


def write_clip_vocabulary(directory: Path, words: list[str]) -> int:
    """Write ``vocab.json`` and ``merges.txt`` of a byte-level BPE covering ``words``.

    The vocabulary holds the 256 byte symbols (alone and word-final, ``</w>``), one merge chain
    per word, and the two special tokens last, as in OpenAI's CLIP. Any text still tokenizes
    (down to bytes); the prompts' words become few tokens. Returns the vocabulary size."""
    alphabet = bytes_to_unicode()
    vocab: dict[str, int] = {}
    for symbol in alphabet.values():
        vocab[symbol] = len(vocab)
    for symbol in alphabet.values():
        vocab[symbol + "</w>"] = len(vocab)
    merges: list[str] = []
    for word in words:
        pieces = ["".join(alphabet[b] for b in char.encode()) for char in word]
        pieces[-1] += "</w>"
        current = pieces[0]
        for piece in pieces[1:]:
            merge = f"{current} {piece}"
            if merge not in merges:
                merges.append(merge)
            current += piece
            vocab.setdefault(current, len(vocab))
    vocab[START] = len(vocab)
    vocab[END] = len(vocab)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return len(vocab)


def build_tiny_clip(directory: Path, prompts: list[str], seed: int = 0, size: str = "tiny") -> None:
    """A random-weight CLIPModel, a real CLIPTokenizer for ``prompts``, a CLIP image processor."""
    shape = SIZES[size]
    vocab_size = write_clip_vocabulary(directory, prompt_words(prompts))
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


def _plan(models_dir: Path, profile: str) -> dict[Path, list[ModelSpec]]:
    """Each checkpoint folder of ``profile`` under ``models_dir/<profile>``, with its models."""
    root = (Path(models_dir).expanduser() / profile).resolve()
    plan: dict[Path, list[ModelSpec]] = {}
    for spec in load_registry(profile, Path(models_dir).expanduser()).models.values():
        folder = Path(spec.checkpoint).expanduser().resolve()
        if folder.is_relative_to(root):
            plan.setdefault(folder, []).append(spec)
    return plan


def _prompts(specs: list[ModelSpec]) -> list[str]:
    return [prompt for spec in specs for cls in spec.classes for prompt in cls.prompts]


def _fingerprint(models_dir: Path, profile: str) -> str:
    """What a complete build of ``profile`` contains: build version, size, folders, vocabulary."""
    plan = _plan(models_dir, profile)
    content = {
        "build": BUILD_VERSION,
        "size": asdict(SIZES[profile]),
        "checkpoints": {
            str(folder.name): sorted({spec.task.value for spec in specs}) for folder, specs in sorted(plan.items())
        },
        "words": {str(folder.name): prompt_words(_prompts(specs)) for folder, specs in sorted(plan.items())},
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def build_local_profile(models_dir: Path, profile: str = "tiny") -> Path:
    """Build every checkpoint ``profile``'s registry names under ``models_dir/<profile>``."""
    if profile not in LOCAL_PROFILES:
        raise ValueError(f"profile {profile!r} is not built locally; local profiles: {LOCAL_PROFILES}")
    root = Path(models_dir).expanduser() / profile
    (root / READY_MARKER).unlink(missing_ok=True)
    for folder, specs in _plan(models_dir, profile).items():
        if folder.exists():
            shutil.rmtree(folder)  # no stale file of an older build may change the version hash
        tasks = {spec.task for spec in specs}
        if tasks == {Task.OBJECT_DETECTION}:
            build_tiny_detector(folder, size=profile)
        elif tasks <= ZERO_SHOT_TASKS:
            build_tiny_clip(folder, _prompts(specs), size=profile)
        else:
            raise ValueError(f"{folder}: no local builder for tasks {sorted(tasks)}")
    (root / READY_MARKER).write_text(_fingerprint(models_dir, profile) + "\n")
    return root


def ensure_local_profile(models_dir: Path, profile: str = "tiny") -> Path:
    """Build ``profile`` unless a complete build of the same content is there (idempotent).

    The marker holds a fingerprint of the build version, the shapes, the checkpoints and the
    prompt vocabulary, so an older build (or one made before prompts changed) is rebuilt."""
    root = Path(models_dir).expanduser() / profile
    marker = root / READY_MARKER
    if not marker.exists() or marker.read_text().strip() != _fingerprint(models_dir, profile):
        build_local_profile(models_dir, profile)
    return root


def build_tiny_profile(models_dir: Path) -> Path:
    """Build every tiny model under ``models_dir/tiny``; returns that folder."""
    return build_local_profile(models_dir, "tiny")


def ensure_tiny_profile(models_dir: Path) -> Path:
    """Build the tiny profile unless a complete, current build is already there (idempotent)."""
    return ensure_local_profile(models_dir, "tiny")
