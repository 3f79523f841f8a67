"""The zero-shot CLIP family on the tiny profile: output formats, the same answer alone or in a
batch, agreement with transformers' own CLIP forward, versions, and the offline tiny build."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

from core.registry import SCORE_LEVELS, load_registry, serving_groups
from imaging import DecodedImage
from models.clip_vocabulary import prompt_words
from models.families import load_group
from models.tiny import READY_MARKER, ensure_tiny_profile
from models.zero_shot import ZeroShotClassifier, crop_box
from tests.support.answers import assert_same_answer

CLIP_MODELS = ("room_classification", "condition_score", "quality_score")


@pytest.fixture(scope="module")
def runners(tiny_models_dir: Path) -> dict[str, ZeroShotClassifier]:
    registry = load_registry("tiny", tiny_models_dir)
    return {name: ZeroShotClassifier(registry[name]) for name in CLIP_MODELS}


def image(seed: int, width: int, height: int) -> DecodedImage:
    pixels = np.random.default_rng(seed).integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    return DecodedImage(pixels=pixels, width=width * 2, height=height * 2)


def test_room_classification_format(runners: dict[str, ZeroShotClassifier]) -> None:
    runner = runners["room_classification"]
    [result] = runner.predict([image(0, 120, 80)])
    assert set(result) == {"label", "confidence", "topK"}
    top = result["topK"]
    assert len(top) == runner.spec.top_k
    assert [t["confidence"] for t in top] == sorted((t["confidence"] for t in top), reverse=True)
    assert (result["label"], result["confidence"]) == (top[0]["label"], top[0]["confidence"])
    assert {t["label"] for t in top} <= set(runner.spec.labels)
    assert "kitchen" in runner.spec.labels and 0 < result["confidence"] <= 1


@pytest.mark.parametrize("name", ["condition_score", "quality_score"])
def test_score_format(runners: dict[str, ZeroShotClassifier], name: str) -> None:
    runner = runners[name]
    for result in runner.predict([image(seed, 90, 70) for seed in range(6)]):
        assert isinstance(result["score"], int) and 1 <= result["score"] <= SCORE_LEVELS
        distribution = result["distribution"]
        assert len(distribution) == SCORE_LEVELS and sum(distribution) == pytest.approx(1, abs=1e-4)
        assert result["confidence"] == distribution[result["score"] - 1]
        assert result["label"] == runner.spec.labels[result["score"] - 1]
        expected = sum((i + 1) * p for i, p in enumerate(distribution))
        assert result["expected"] == pytest.approx(expected, abs=1e-3)
        if runner.spec.score == "expected":  # quality_score in the tiny profile
            assert result["score"] == round(result["expected"])
        else:
            assert result["confidence"] == max(distribution)


@pytest.mark.parametrize("name", CLIP_MODELS)
def test_same_answer_alone_or_in_a_batch(runners: dict[str, ZeroShotClassifier], name: str) -> None:
    runner = runners[name]
    shapes = [(60, 90), (200, 40), (33, 33), (640, 480), (7, 300)]  # incl. extreme aspect ratios
    images = [image(seed, w, h) for seed, (w, h) in enumerate(shapes)]
    batched = runner.predict(images)
    alone = [runner.predict([img])[0] for img in images]
    for one, many in zip(alone, batched, strict=True):
        key = "topK" if "topK" in one else "distribution"
        a = [t["confidence"] for t in one[key]] if key == "topK" else one[key]
        b = [t["confidence"] for t in many[key]] if key == "topK" else many[key]
        assert a == pytest.approx(b, abs=1e-5)
        assert one.get("label") == many.get("label") and one.get("score") == many.get("score")


def test_matches_transformers_clip_forward(runners: dict[str, ZeroShotClassifier], tiny_models_dir: Path) -> None:
    """With one prompt per class the class embedding is that prompt's: our fast path (text
    embedded once, vision tower only per batch) must give CLIPModel's own probabilities."""
    runner = runners["condition_score"]
    checkpoint = runner.spec.checkpoint
    model = CLIPModel.from_pretrained(checkpoint).eval()
    tokenizer = CLIPTokenizer.from_pretrained(checkpoint)
    processor = CLIPImageProcessorPil.from_pretrained(checkpoint)
    side = runner.crop[0]
    img = image(3, side, side)  # already the model's size: both preprocessings are the identity
    prompts = [cls.prompts[0] for cls in runner.spec.classes]
    inputs = tokenizer(prompts, padding=True, return_tensors="pt")
    pixels = processor(images=[img.pixels], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        reference = model(**inputs, pixel_values=pixels).logits_per_image.softmax(-1)[0].tolist()
    [ours] = runner.predict([img])
    assert ours["distribution"] == pytest.approx(reference, abs=1e-4)


def test_a_shared_backbone_answers_as_the_separate_models(
    runners: dict[str, ZeroShotClassifier], tiny_models_dir: Path
) -> None:
    """One runner for the three models (one vision tower, one forward per image, a head each)
    gives each model the answer its own runner gives, alone and batched, whichever heads an
    image asks for."""
    [group] = [g for g in serving_groups(load_registry("tiny", tiny_models_dir).models.values()) if g.shared]
    shared = load_group(group)
    assert shared.names == list(CLIP_MODELS)
    assert {name: shared.version_of(name) for name in CLIP_MODELS} == {n: r.version for n, r in runners.items()}
    assert shared.info("quality_score") == runners["quality_score"].info()
    images = [image(seed, w, h) for seed, (w, h) in enumerate([(60, 90), (200, 40), (640, 480), (33, 33)])]
    wanted = [set(CLIP_MODELS), {"quality_score"}, {"room_classification", "condition_score"}, set(CLIP_MODELS)]
    features = shared.features([shared.prepare(img) for img in images])
    batched = [shared.answer(f, names) for f, names in zip(features, wanted, strict=True)]
    alone = [shared.answer(shared.features([shared.prepare(img)])[0], names)
             for img, names in zip(images, wanted, strict=True)]
    for img, names, many, one in zip(images, wanted, batched, alone, strict=True):
        assert set(many) == set(one) == names
        for name in names:
            [separate] = runners[name].predict([img])
            assert_same_answer(many[name], separate)
            assert_same_answer(one[name], separate)
    with pytest.raises(ValueError, match="do not share"):
        ZeroShotClassifier(group.specs[0], group.specs[1].model_copy(update={"revision": "other"}))


def test_crop_box_is_clips_resize_then_centre_crop() -> None:
    # 640x480 → shortest side 224 → 298.67x224 → centre 224x224 crop = the central 480x480
    assert crop_box(640, 480, 224, 224, 224) == pytest.approx((80, 0, 560, 480))
    assert crop_box(100, 400, 50, 50, 50) == pytest.approx((0, 150, 100, 250))


def test_version_names_weights_and_prompts(runners: dict[str, ZeroShotClassifier], tiny_models_dir: Path) -> None:
    versions = {name: runner.version for name, runner in runners.items()}
    weights = {v.split("@")[1].split("-")[0] for v in versions.values()}
    assert len(weights) == 1  # one shared checkpoint ...
    assert len({v.split("-")[-1] for v in versions.values()}) == 3  # ... three prompt sets
    spec = runners["room_classification"].spec
    edited = spec.model_copy(update={"classes": spec.classes[:-1]})
    assert ZeroShotClassifier(edited).version != versions["room_classification"]
    info = runners["condition_score"].info()
    assert info.labels == ["C1", "C2", "C3", "C4", "C5", "C6"] and info.device == "cpu"


def test_tiny_tokenizer_covers_the_prompt_words(tiny_models_dir: Path) -> None:
    registry = load_registry("tiny", tiny_models_dir)
    clip_dir = Path(registry["room_classification"].checkpoint)
    tokenizer = CLIPTokenizer.from_pretrained(clip_dir)
    vocab = json.loads((clip_dir / "vocab.json").read_text())
    prompts = [p for name in CLIP_MODELS for c in registry[name].classes for p in c.prompts]
    assert all(word + "</w>" in vocab for word in prompt_words(prompts))
    for prompt in prompts:
        ids = tokenizer(prompt)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == prompt.lower().replace(" ", "")


def test_old_tiny_build_is_rebuilt(tmp_path: Path) -> None:
    """A build from before the CLIP models (detector only, old marker) is completed on ensure."""
    root = ensure_tiny_profile(tmp_path)
    version = ZeroShotClassifier(load_registry("tiny", tmp_path)["quality_score"]).version
    (root / READY_MARKER).write_text("ok\n")  # what the first tiny builder wrote
    for path in (root / "clip").iterdir():
        path.unlink()
    (root / "clip").rmdir()
    ensure_tiny_profile(tmp_path)
    assert (root / "clip" / "tokenizer.json").exists()
    # the same seed and vocabulary: the rebuilt checkpoint is the same model, same version
    assert ZeroShotClassifier(load_registry("tiny", tmp_path)["quality_score"]).version == version
