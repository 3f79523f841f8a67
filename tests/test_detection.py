"""The detector on the tiny profile: output format, and the same answer alone or batched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.registry import load_registry
from imaging import DecodedImage
from models.detection import DETECTION_LABELS, Detector
from models.tiny import ensure_tiny_profile


@pytest.fixture(scope="module")
def detector(tiny_models_dir: Path) -> Detector:
    return Detector(load_registry("tiny", tiny_models_dir)["object_detection"])


def image(seed: int, width: int, height: int) -> DecodedImage:
    pixels = np.random.default_rng(seed).integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    return DecodedImage(pixels=pixels, width=width * 2, height=height * 2)


def test_result_format(detector: Detector) -> None:
    [result] = detector.predict([image(0, 120, 80)])
    assert 0 < len(result["detections"]) <= detector.spec.max_detections
    scores = [d["score"] for d in result["detections"]]
    assert scores == sorted(scores, reverse=True)
    for det in result["detections"]:
        assert det["label"] in DETECTION_LABELS
        assert det["score"] >= detector.spec.threshold
        box, norm = det["box"], det["boxNormalized"]
        assert 0 <= norm["xmin"] <= norm["xmax"] <= 1 and 0 <= norm["ymin"] <= norm["ymax"] <= 1
        # pixel boxes are in the ORIGINAL image's coordinates (here twice the decoded size)
        assert box["xmax"] == pytest.approx(norm["xmax"] * 240, abs=0.02)
        assert box["ymax"] == pytest.approx(norm["ymax"] * 160, abs=0.02)


def test_same_answer_alone_or_in_a_batch(detector: Detector) -> None:
    images = [image(seed, 60 + 20 * seed, 90 - 10 * seed) for seed in range(5)]
    batched = detector.predict(images)
    alone = [detector.predict([img])[0] for img in images]
    for one, many in zip(alone, batched, strict=True):
        assert [d["label"] for d in one["detections"]] == [d["label"] for d in many["detections"]]
        for a, b in zip(one["detections"], many["detections"], strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-4)
            assert a["boxNormalized"] == pytest.approx(b["boxNormalized"], abs=1e-4)


def test_version_names_the_weights(detector: Detector, tmp_path: Path) -> None:
    assert detector.version.startswith("object_detection@")
    ensure_tiny_profile(tmp_path)  # a second build from the same seed: same weights, same version
    again = Detector(load_registry("tiny", tmp_path)["object_detection"])
    assert again.version == detector.version
    info = detector.info()
    assert info.labels == list(DETECTION_LABELS) and info.device == "cpu"
