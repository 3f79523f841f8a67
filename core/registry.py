"""The model registry: a YAML file, validated strictly, naming every model the service offers.

Ray's own Serve config silently ignores misspelt keys; this schema forbids unknown keys, so a
typo in ``max_batch_size`` fails at start-up instead of quietly running unbatched.
Built-in profiles live in ``core/profiles/<name>.yaml``; ``${models_dir}`` in a checkpoint is
replaced by ``Settings.models_dir`` (where ``sightwire models make-tiny`` builds the tiny models).
Zero-shot models carry their prompt sets here (``classes``), so the labels a client sees and the
text they are matched against are reviewed together, in one file. Zero-shot models on the same
checkpoint, revision and precision share one image forward (``ModelSpec.backbone``,
``serving_groups``): nothing to declare. See ``docs/models.md``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

PROFILES_DIR = Path(__file__).parent / "profiles"
BUILTIN_PROFILES = ("tiny", "pretrained", "bench")
# Profiles whose checkpoints are built on this machine (random weights) rather than downloaded.
LOCAL_PROFILES = ("tiny", "bench")
# The Uniform Appraisal Dataset scales (condition C1-C6, quality Q1-Q6): a score is 1..SCORE_LEVELS.
SCORE_LEVELS = 6


class Task(StrEnum):
    OBJECT_DETECTION = "object-detection"
    ZERO_SHOT_IMAGE_CLASSIFICATION = "zero-shot-image-classification"
    SCORING = "scoring"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Batching(Strict):
    max_batch_size: int = Field(8, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(0.01, ge=0.0, le=10.0)


class Autoscaling(Strict):
    """Serve's autoscaling of one model's deployment. ``min_replicas: 0`` scales it to zero when
    idle (its GPU node can then go too); ``downscale_delay_s`` is how long a deployment stays
    over-provisioned before Serve removes replicas (Serve's default, 600 s, when unset);
    ``look_back_period_s`` is the window Serve averages the load over (Serve's 30 s when unset):
    a shorter one lets an idle deployment see that it is idle sooner."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(8.0, gt=0)
    downscale_delay_s: float | None = Field(None, ge=0)
    look_back_period_s: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


class Resources(Strict):
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)


class PromptClass(Strict):
    """One class of a zero-shot model: the label clients see and the prompts that describe it.

    The class's text embedding is the normalised mean of its prompts' embeddings (prompt
    ensembling), computed once when the model loads."""

    label: str = Field(min_length=1, max_length=64)
    prompts: tuple[str, ...] = Field(min_length=1)


ZERO_SHOT_TASKS = frozenset({Task.ZERO_SHOT_IMAGE_CLASSIFICATION, Task.SCORING})


class ModelSpec(Strict):
    """One model: what it does, where its weights are, and how it is batched and scaled."""

    name: str = ""
    task: Task
    checkpoint: str
    revision: str | None = None
    version: str | None = None
    # The side the model reads images at (detection: its square input). Images are decoded with
    # at least this much resolution and no more than a JPEG's DCT scaling saves for free.
    input_size: int = Field(512, ge=16, le=4096)
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    max_detections: int = Field(100, ge=1)
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    batching: Batching = Batching()
    autoscaling: Autoscaling = Autoscaling()
    resources: Resources = Resources()
    # Zero-shot classification and scoring: the classes, in order. For ``scoring`` there are
    # exactly SCORE_LEVELS of them and class i is score i + 1 (C1/Q1 first).
    classes: tuple[PromptClass, ...] = ()
    top_k: int = Field(3, ge=1)
    # scoring: ``argmax`` reports the most probable level; ``expected`` the probability-weighted
    # mean rounded to a level (the float itself is always in the result as ``expected``).
    score: Literal["argmax", "expected"] = "argmax"
    # The processor's deadline for one call of this model (default: Settings.model_timeout_s).
    timeout_s: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _classes_fit_task(self) -> ModelSpec:
        if self.task in ZERO_SHOT_TASKS:
            if not self.classes:
                raise ValueError(f"task {self.task} needs `classes` (labels with their prompts)")
            labels = [c.label for c in self.classes]
            if len(set(labels)) != len(labels):
                raise ValueError(f"class labels must be unique: {labels}")
            if self.task is Task.SCORING and len(self.classes) != SCORE_LEVELS:
                raise ValueError(f"task scoring needs exactly {SCORE_LEVELS} classes (levels 1..{SCORE_LEVELS})")
        elif self.classes:
            raise ValueError(f"`classes` apply to zero-shot tasks only, not {self.task}")
        return self

    @property
    def labels(self) -> list[str]:
        return [c.label for c in self.classes]

    @property
    def is_local(self) -> bool:
        return self.checkpoint.startswith(("/", "./", "../", "~"))

    @property
    def deployment_name(self) -> str:
        return f"model-{self.name}"

    @property
    def backbone(self) -> str | None:
        """What decides this model's image forward, when its result is only a head on it: a
        zero-shot model's answer is its prompt set (a matrix product) on the CLIP image embedding,
        and that embedding depends on the checkpoint, its revision (which fix the weights and the
        image processor's preprocessing) and the precision alone. Models with the same value share
        one forward per image (``serving_groups``); ``None``: the model's forward is its own."""
        if self.task not in ZERO_SHOT_TASKS:
            return None
        return f"{self.checkpoint}@{self.revision or ''}:{self.precision}"


def decode_min_side(specs: Iterable[ModelSpec]) -> int:
    """The shortest side an image must keep when decoded for these models: their largest
    ``input_size`` (0, no bound, for none)."""
    return max((spec.input_size for spec in specs), default=0)


@dataclass(frozen=True)
class ModelGroup:
    """Registry models served by one loaded network: one Serve deployment, one Ray Data stage.

    A model with its own forward is a group of one, named after it (``model-<name>``). Models
    that share a ``backbone`` are one group: one copy of the weights per replica, one forward per
    image, each model a head on it. The group's batching, autoscaling and resources are the
    members' largest (the shortest batch wait): one replica does the work of all of them."""

    specs: tuple[ModelSpec, ...]

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self.specs]

    @property
    def shared(self) -> bool:
        return len(self.specs) > 1

    @property
    def deployment_name(self) -> str:
        """``model-<name>`` for a model alone; ``backbone-<its models' names, joined by +>`` for a
        shared backbone (a model is in one group only, so names never clash)."""
        if not self.shared:
            return self.specs[0].deployment_name
        return "backbone-" + "+".join(self.names)

    @property
    def batching(self) -> Batching:
        return Batching(
            max_batch_size=max(s.batching.max_batch_size for s in self.specs),
            batch_wait_timeout_s=min(s.batching.batch_wait_timeout_s for s in self.specs),
        )

    @property
    def autoscaling(self) -> Autoscaling:
        return Autoscaling(
            min_replicas=max(s.autoscaling.min_replicas for s in self.specs),
            max_replicas=max(s.autoscaling.max_replicas for s in self.specs),
            target_ongoing_requests=max(s.autoscaling.target_ongoing_requests for s in self.specs),
            downscale_delay_s=self._largest_set("downscale_delay_s"),
            look_back_period_s=self._largest_set("look_back_period_s"),
        )

    def _largest_set(self, field: str) -> float | None:
        """The largest of the models' values of an optional autoscaling field (None: Serve's default)."""
        return max((v for s in self.specs if (v := getattr(s.autoscaling, field)) is not None), default=None)

    @property
    def resources(self) -> Resources:
        return Resources(
            num_cpus=max(s.resources.num_cpus for s in self.specs),
            num_gpus=max(s.resources.num_gpus for s in self.specs),
        )


def serving_groups(specs: Iterable[ModelSpec]) -> list[ModelGroup]:
    """``specs`` as the groups they are served in, in order of their first model: models with
    the same ``backbone`` together, every other model alone."""
    groups: dict[tuple[bool, str], list[ModelSpec]] = {}
    for spec in specs:
        key = (True, spec.backbone) if spec.backbone else (False, spec.name)
        groups.setdefault(key, []).append(spec)
    return [ModelGroup(tuple(members)) for members in groups.values()]


class Registry(Strict):
    models: dict[str, ModelSpec]

    @model_validator(mode="after")
    def _named(self) -> Registry:
        for name, spec in self.models.items():
            if spec.name and spec.name != name:
                raise ValueError(f"model {name!r} declares a different name {spec.name!r}")
        named = {name: spec.model_copy(update={"name": name}) for name, spec in self.models.items()}
        object.__setattr__(self, "models", named)
        return self

    def __contains__(self, name: str) -> bool:
        return name in self.models

    def __getitem__(self, name: str) -> ModelSpec:
        return self.models[name]

    def names(self) -> list[str]:
        return list(self.models)

    def group_of(self, name: str) -> ModelGroup:
        """The serving group of model ``name`` (the models served by the same network)."""
        return next(g for g in serving_groups(self.models.values()) if name in g.names)

    def scales_to_zero(self, name: str) -> bool:
        """Whether model ``name``'s deployment may have no replica (``min_replicas: 0``): then
        only a request for it brings one up (and, on an autoscaling cluster, its node)."""
        return self.group_of(name).autoscaling.min_replicas == 0

    def deployment_of(self, name: str) -> str:
        """The Serve deployment that serves model ``name``: its serving group's."""
        return self.group_of(name).deployment_name


def registry_path(models: str) -> Path:
    """The YAML for ``--models``: a built-in profile name or a path to a registry file."""
    if models in BUILTIN_PROFILES:
        return PROFILES_DIR / f"{models}.yaml"
    return Path(models).expanduser()


def load_registry(models: str, models_dir: Path) -> Registry:
    """Read and validate a registry; errors name the offending key."""
    path = registry_path(models)
    text = path.read_text().replace("${models_dir}", str(models_dir))
    return Registry.model_validate(yaml.safe_load(text))
