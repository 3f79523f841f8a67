"""The task → family table: every registry task has a runner, and the runners share one base."""

from __future__ import annotations

from pathlib import Path

from core.registry import Task, load_registry
from models.base import ModelRunner
from models.families import FAMILIES, load_runner


def test_every_task_has_a_family() -> None:
    assert set(FAMILIES) == set(Task)
    for family in FAMILIES.values():
        assert issubclass(family.runner, ModelRunner)
        assert {"tiny", "bench"} <= set(family.shapes)


def test_load_runner_picks_the_family_of_the_task(tiny_models_dir: Path) -> None:
    registry = load_registry("tiny", tiny_models_dir)
    for name in registry.names():
        spec = registry[name]
        runner = load_runner(spec)
        assert type(runner) is FAMILIES[spec.task].runner
        info = runner.info()
        assert (info.name, info.task, info.version) == (name, spec.task, runner.version)
        assert info.version.startswith(f"{name}@") and info.labels == runner.labels
