"""The model registry: a YAML file, validated strictly, naming every model the service offers.

Ray's own Serve config silently ignores misspelt keys; this schema forbids unknown keys, so a
typo in ``max_batch_size`` fails at start-up instead of quietly running unbatched.
Built-in profiles live in ``core/profiles/<name>.yaml``; ``${models_dir}`` in a checkpoint is
replaced by ``Settings.models_dir`` (where ``sightwire models make-tiny`` builds the tiny models).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

PROFILES_DIR = Path(__file__).parent / "profiles"
BUILTIN_PROFILES = ("tiny", "pretrained")


class Task(StrEnum):
    OBJECT_DETECTION = "object-detection"
    IMAGE_CLASSIFICATION = "image-classification"
    ZERO_SHOT_IMAGE_CLASSIFICATION = "zero-shot-image-classification"
    SCORING = "scoring"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Batching(Strict):
    max_batch_size: int = Field(8, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(0.01, ge=0.0, le=10.0)


class Autoscaling(Strict):
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(8.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


class Resources(Strict):
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)


class ModelSpec(Strict):
    """One model: what it does, where its weights are, and how it is batched and scaled."""

    name: str = ""
    task: Task
    checkpoint: str
    revision: str | None = None
    version: str | None = None
    input_size: int = Field(512, ge=16, le=4096)
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    max_detections: int = Field(100, ge=1)
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    batching: Batching = Batching()
    autoscaling: Autoscaling = Autoscaling()
    resources: Resources = Resources()

    @property
    def is_local(self) -> bool:
        return self.checkpoint.startswith(("/", "./", "../", "~"))

    @property
    def deployment_name(self) -> str:
        return f"model-{self.name}"


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
