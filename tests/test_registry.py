"""The registry rejects what Ray's own config would silently ignore."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from core.registry import Registry, Task, load_registry


def test_builtin_profiles_load(tmp_path: Path) -> None:
    tiny = load_registry("tiny", tmp_path)
    spec = tiny["object_detection"]
    assert spec.task is Task.OBJECT_DETECTION
    assert spec.checkpoint == f"{tmp_path}/tiny/object_detection"
    assert spec.is_local
    pretrained = load_registry("pretrained", tmp_path)
    assert not pretrained["object_detection"].is_local


def test_unknown_key_is_an_error() -> None:
    with pytest.raises(ValidationError, match="max_batch_sise"):
        Registry.model_validate(
            {"models": {"m": {"task": "object-detection", "checkpoint": "x/y",
                              "batching": {"max_batch_sise": 8}}}}
        )


def test_bad_values_are_errors() -> None:
    with pytest.raises(ValidationError, match="min_replicas"):
        Registry.model_validate(
            {"models": {"m": {"task": "object-detection", "checkpoint": "x/y",
                              "autoscaling": {"min_replicas": 3, "max_replicas": 1}}}}
        )
    with pytest.raises(ValidationError, match="task"):
        Registry.model_validate({"models": {"m": {"task": "segmentation", "checkpoint": "x/y"}}})


def test_registry_file_path(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text("models:\n  det:\n    task: object-detection\n    checkpoint: ${models_dir}/det\n")
    registry = load_registry(str(path), Path("/srv/models"))
    assert registry["det"].checkpoint == "/srv/models/det"
    assert registry["det"].name == "det"
