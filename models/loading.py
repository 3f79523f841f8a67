"""Where and how a model runs: device choice, precision, and the version string it reports."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from core.registry import ModelSpec

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_device() -> torch.device:
    """CUDA when torch sees a CUDA device; a logical Ray GPU alone is not one."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def pick_dtype(spec: ModelSpec, device: torch.device) -> torch.dtype:
    """Half precision only on CUDA: on CPU it is slower and less accurate."""
    return PRECISIONS[spec.precision] if device.type == "cuda" else torch.float32


def precision_name(dtype: torch.dtype) -> str:
    return next(name for name, known in PRECISIONS.items() if known == dtype)


def checkpoint_source(spec: ModelSpec) -> str:
    return str(Path(spec.checkpoint).expanduser()) if spec.is_local else spec.checkpoint


def model_version(spec: ModelSpec, commit_hash: str | None, config: str = "") -> str:
    """``name@<id>`` naming exactly which weights (and prompts) produced a result.

    The registry's explicit ``version`` wins; a hub checkpoint uses its commit hash; a local
    checkpoint hashes its config and weight files, so two different random tiny builds differ.
    ``config`` is whatever else decides the output besides the weights (a zero-shot model's
    prompt set): its hash is appended, ``name@<weights>-<config>``, so editing a prompt makes a
    new version although the checkpoint is the same.
    """
    if spec.version:
        return f"{spec.name}@{spec.version}"
    suffix = f"-{hashlib.sha256(config.encode()).hexdigest()[:8]}" if config else ""
    if not spec.is_local and commit_hash:
        return f"{spec.name}@{commit_hash[:12]}{suffix}"
    digest = hashlib.sha256()
    for path in sorted(Path(checkpoint_source(spec)).glob("*")):
        if path.suffix in (".json", ".safetensors", ".bin", ".txt"):
            digest.update(path.name.encode())
            with path.open("rb") as handle:
                for chunk in iter(lambda h=handle: h.read(1 << 20), b""):
                    digest.update(chunk)
    return f"{spec.name}@{digest.hexdigest()[:12]}{suffix}"
