"""The ``tiny`` profile: real transformers architectures with random weights, built offline.

Nothing is downloaded: configs are written here and weights are randomly initialised from a
fixed seed, then saved with ``save_pretrained`` so they load exactly like hub checkpoints.
Outputs are meaningless; the demo and tests say so.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessorPil, ResNetConfig

DETECTION_LABELS = (
    "person", "chair", "couch", "bed", "dining table", "toilet", "sink", "tv", "oven", "refrigerator",
)
READY_MARKER = ".sightwire-tiny-ready"


def build_tiny_detector(directory: Path, seed: int = 0) -> None:
    torch.manual_seed(seed)
    backbone = ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], out_features=["stage4"]
    )
    config = DetrConfig(
        backbone_config=backbone,
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        num_queries=20,
        id2label=dict(enumerate(DETECTION_LABELS)),
        label2id={label: i for i, label in enumerate(DETECTION_LABELS)},
    )
    DetrForObjectDetection(config).eval().save_pretrained(directory)
    DetrImageProcessorPil(size={"height": 256, "width": 256}, do_pad=False).save_pretrained(directory)


def build_tiny_profile(models_dir: Path) -> Path:
    """Build every tiny model under ``models_dir/tiny``; returns that folder."""
    root = Path(models_dir).expanduser() / "tiny"
    build_tiny_detector(root / "object_detection")
    (root / READY_MARKER).write_text("ok\n")
    return root


def ensure_tiny_profile(models_dir: Path) -> Path:
    """Build the tiny profile unless a complete build is already there (idempotent)."""
    root = Path(models_dir).expanduser() / "tiny"
    if not (root / READY_MARKER).exists():
        build_tiny_profile(models_dir)
    return root
