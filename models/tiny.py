"""Locally built profiles (``tiny``, ``bench``): real transformers architectures, random weights.

Nothing is downloaded: configs are written here and weights are randomly initialised from a
fixed seed, then saved with ``save_pretrained`` so they load exactly like hub checkpoints, through
the same ``from_pretrained`` code path. Outputs are meaningless; the demo and tests say so.

What gets built is read from the profile's registry (``core/profiles/<profile>.yaml``): every
checkpoint under ``${models_dir}/<profile>/`` is built by the family (``models.families``) of the
models that use it. The CLIP checkpoint gets a real ``CLIPTokenizer`` whose small byte-level BPE
vocabulary covers every word of the profile's prompts (``models.clip_vocabulary``). The profile
name picks the shapes: ``tiny`` for tests (milliseconds per batch), ``bench`` for benchmarks
(tens of milliseconds per batch on a laptop CPU, so serving overhead shows against real work).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from core.registry import LOCAL_PROFILES, ModelSpec, load_registry
from models.clip_vocabulary import prompt_words, prompts_of
from models.families import FAMILIES

READY_MARKER = ".sightwire-tiny-ready"
# Bump when what a build contains changes: a folder built by an older version (for example one
# with only the detector) has a different marker and is rebuilt by ``ensure_local_profile``.
BUILD_VERSION = 2


def _plan(models_dir: Path, profile: str) -> dict[Path, list[ModelSpec]]:
    """Each checkpoint folder of ``profile`` under ``models_dir/<profile>``, with its models."""
    root = (Path(models_dir).expanduser() / profile).resolve()
    plan: dict[Path, list[ModelSpec]] = {}
    for spec in load_registry(profile, Path(models_dir).expanduser()).models.values():
        folder = Path(spec.checkpoint).expanduser().resolve()
        if folder.is_relative_to(root):
            plan.setdefault(folder, []).append(spec)
    return plan


def _shapes(profile: str) -> dict[str, Any]:
    """Every family's shapes at ``profile``'s size, as one flat mapping."""
    families = set(FAMILIES.values())
    return {key: value for family in families for key, value in asdict(family.shapes[profile]).items()}


def _fingerprint(models_dir: Path, profile: str) -> str:
    """What a complete build of ``profile`` contains: build version, size, folders, vocabulary."""
    plan = _plan(models_dir, profile)
    content = {
        "build": BUILD_VERSION,
        "size": _shapes(profile),
        "checkpoints": {
            str(folder.name): sorted({spec.task.value for spec in specs}) for folder, specs in sorted(plan.items())
        },
        "words": {str(folder.name): prompt_words(prompts_of(specs)) for folder, specs in sorted(plan.items())},
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
        families = {FAMILIES[spec.task] for spec in specs}
        if len(families) != 1:
            tasks = sorted({spec.task for spec in specs})
            raise ValueError(f"{folder}: no local builder for tasks {tasks} (one checkpoint, several families)")
        families.pop().build_local(folder, specs, profile)
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


def ensure_tiny_profile(models_dir: Path) -> Path:
    """Build the tiny profile unless a complete, current build is already there (idempotent)."""
    return ensure_local_profile(models_dir, "tiny")
