"""The one task → family table: which runner serves a registry task, and how its checkpoint is
built locally (random weights) for the ``tiny`` and ``bench`` profiles.

Adding a family is a module with a ``ModelRunner`` subclass and a local builder, one row here,
and its ``Task`` value in the registry schema: the Serve deployment, the bulk pipeline and the
profile builder all look a model up here. A family whose models can share a forward (the
zero-shot CLIP one: ``ModelSpec.backbone``) takes the other models of its group after its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.registry import ModelGroup, ModelSpec, Task
from models import detection, zero_shot
from models.base import ModelRunner

LocalBuilder = Callable[[Path, list[ModelSpec], str], None]


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: one object per family
class Family:
    """A kind of model: its runner, its local builder and the shapes it builds at per size."""

    runner: type[ModelRunner]
    build_local: LocalBuilder  # (checkpoint folder, the models sharing it, size name)
    shapes: Mapping[str, Any]  # size name (tiny, bench) → a dataclass of shapes


DETECTION = Family(detection.Detector, detection.build_local_detector, detection.SHAPES)
# One zero-shot CLIP family serves both classification and 1-6 scoring (prompt sets differ).
ZERO_SHOT = Family(zero_shot.ZeroShotClassifier, zero_shot.build_local_clip, zero_shot.SHAPES)

FAMILIES: dict[Task, Family] = {
    Task.OBJECT_DETECTION: DETECTION,
    Task.ZERO_SHOT_IMAGE_CLASSIFICATION: ZERO_SHOT,
    Task.SCORING: ZERO_SHOT,
}


def load_runner(spec: ModelSpec) -> ModelRunner:
    """The plain (Serve-free) model for ``spec``: for Serve replicas, Ray Data actors and bare
    benchmarks alike."""
    return FAMILIES[spec.task].runner(spec)


def load_group(group: ModelGroup) -> ModelRunner:
    """One runner for every model of a serving group (one network, one forward per image): what
    a Serve replica and a Ray Data model actor hold."""
    own, *shared = group.specs
    return FAMILIES[own.task].runner(own, *shared)
