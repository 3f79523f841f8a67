"""The registry rejects what Ray's own config would silently ignore."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from core.registry import (
    Autoscaling,
    Batching,
    Registry,
    Resources,
    Task,
    decode_min_side,
    load_registry,
    serving_groups,
)


def test_builtin_profiles_load(tmp_path: Path) -> None:
    tiny = load_registry("tiny", tmp_path)
    spec = tiny["object_detection"]
    assert spec.task is Task.OBJECT_DETECTION
    assert spec.checkpoint == f"{tmp_path}/tiny/object_detection"
    assert spec.is_local
    pretrained = load_registry("pretrained", tmp_path)
    assert not pretrained["object_detection"].is_local


def test_decode_min_side_is_the_largest_input_size_of_the_models_run(tmp_path: Path) -> None:
    bench = load_registry("bench", tmp_path)
    detector, room = bench["object_detection"], bench["room_classification"]
    assert (detector.input_size, room.input_size) == (320, 512)  # room: the field's default
    assert decode_min_side([detector]) == 320
    assert decode_min_side([detector, room]) == 512
    assert decode_min_side([]) == 0  # no models: no bound beyond max_image_side


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


def test_profiles_carry_prompt_sets(tmp_path: Path) -> None:
    for profile in ("tiny", "pretrained", "bench"):
        registry = load_registry(profile, tmp_path)
        assert registry.names() == ["object_detection", "room_classification", "condition_score", "quality_score"]
        room = registry["room_classification"]
        assert room.task is Task.ZERO_SHOT_IMAGE_CLASSIFICATION
        assert {"kitchen", "bathroom", "bedroom", "living_room", "dining_room", "exterior", "other"} <= set(room.labels)
        assert registry["condition_score"].labels == [f"C{i}" for i in range(1, 7)]
        assert registry["quality_score"].labels == [f"Q{i}" for i in range(1, 7)]
        assert all(c.prompts for c in room.classes)
    assert load_registry("pretrained", tmp_path)["room_classification"].checkpoint == "openai/clip-vit-base-patch32"


def zero_shot(**fields: object) -> dict:
    return {"models": {"m": {"task": "zero-shot-image-classification", "checkpoint": "x/y", **fields}}}


def test_zero_shot_fields_are_strict() -> None:
    classes = [{"label": "a", "prompts": ["a photo of a"]}, {"label": "b", "prompts": ["a photo of b"]}]
    assert Registry.model_validate(zero_shot(classes=classes, top_k=2))["m"].labels == ["a", "b"]
    with pytest.raises(ValidationError, match="needs `classes`"):
        Registry.model_validate(zero_shot())
    with pytest.raises(ValidationError, match="prompt"):
        Registry.model_validate(zero_shot(classes=[{"label": "a", "prompt": ["x"]}]))
    with pytest.raises(ValidationError, match="prompts"):
        Registry.model_validate(zero_shot(classes=[{"label": "a", "prompts": []}]))
    with pytest.raises(ValidationError, match="unique"):
        Registry.model_validate(zero_shot(classes=[classes[0], classes[0]]))
    with pytest.raises(ValidationError, match="exactly 6"):
        Registry.model_validate({"models": {"m": {"task": "scoring", "checkpoint": "x/y", "classes": classes}}})
    with pytest.raises(ValidationError, match="zero-shot tasks only"):
        Registry.model_validate(
            {"models": {"m": {"task": "object-detection", "checkpoint": "x/y", "classes": classes}}}
        )
    with pytest.raises(ValidationError, match="score"):
        Registry.model_validate(zero_shot(classes=classes, score="median"))


def test_zero_shot_models_on_one_checkpoint_share_a_backbone(tmp_path: Path) -> None:
    """The registry says which models share one forward: same checkpoint, revision, precision."""
    for profile in ("tiny", "bench", "pretrained"):
        registry = load_registry(profile, tmp_path)
        groups = serving_groups(registry.models.values())
        assert [g.names for g in groups] == [
            ["object_detection"], ["room_classification", "condition_score", "quality_score"]]
        detector, clip = groups
        assert not detector.shared and detector.deployment_name == "model-object_detection"
        assert clip.shared and clip.deployment_name == "backbone-room_classification+condition_score+quality_score"
        assert registry.deployment_of("quality_score") == clip.deployment_name
        assert registry.deployment_of("object_detection") == "model-object_detection"
    room = load_registry("tiny", tmp_path)["room_classification"]
    assert load_registry("tiny", tmp_path)["object_detection"].backbone is None
    other = {"revision": room.model_copy(update={"name": "b", "revision": "v2"}),
             "precision": room.model_copy(update={"name": "c", "precision": "fp16"}),
             "checkpoint": room.model_copy(update={"name": "d", "checkpoint": "/elsewhere"})}
    for field, spec in other.items():
        assert [g.names for g in serving_groups([room, spec])] == [[room.name], [spec.name]], field
    twin = room.model_copy(update={"name": "e", "top_k": 1, "input_size": 256})  # a head's own settings
    [group] = serving_groups([room, twin])
    assert group.names == [room.name, "e"]


def test_a_shared_backbone_is_served_with_its_models_largest_settings(tmp_path: Path) -> None:
    room = load_registry("tiny", tmp_path)["room_classification"]
    big = room.model_copy(update={
        "name": "big", "batching": Batching(max_batch_size=32, batch_wait_timeout_s=0.05),
        "autoscaling": Autoscaling(min_replicas=2, max_replicas=3, target_ongoing_requests=4, downscale_delay_s=30),
        "resources": Resources(num_cpus=0.5, num_gpus=0.25),
    })
    small = room.model_copy(update={
        "batching": Batching(max_batch_size=8, batch_wait_timeout_s=0.002),
        "autoscaling": Autoscaling(min_replicas=1, max_replicas=4, target_ongoing_requests=16, look_back_period_s=5),
        "resources": Resources(num_cpus=1, num_gpus=0),
    })
    [group] = serving_groups([small, big])
    assert group.batching == Batching(max_batch_size=32, batch_wait_timeout_s=0.002)
    assert group.autoscaling == Autoscaling(min_replicas=2, max_replicas=4, target_ongoing_requests=16,
                                            downscale_delay_s=30, look_back_period_s=5)
    assert group.resources == Resources(num_cpus=1, num_gpus=0.25)


def test_only_the_autoscaling_settings_given_reach_serve(tmp_path: Path) -> None:
    """Serve's own defaults (600 s before a scale-down) stay unless the registry sets them."""
    room = load_registry("tiny", tmp_path)["room_classification"]
    assert room.autoscaling.model_dump(exclude_none=True) == {
        "min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 8.0}
    on_demand = Autoscaling(min_replicas=0, max_replicas=2, downscale_delay_s=2, look_back_period_s=1)
    assert on_demand.model_dump(exclude_none=True) == {
        "min_replicas": 0, "max_replicas": 2, "target_ongoing_requests": 8.0, "downscale_delay_s": 2,
        "look_back_period_s": 1}
    [group] = serving_groups([room.model_copy(update={"autoscaling": on_demand})])
    assert group.autoscaling.min_replicas == 0
