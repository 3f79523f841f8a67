"""Comparing zero-shot answers: the shared-backbone path against each model's own runner."""

from __future__ import annotations

from typing import Any

import pytest


def confidences(result: dict[str, Any]) -> list[float]:
    """A classification's top-k confidences, or a score's distribution."""
    return [t["confidence"] for t in result["topK"]] if "topK" in result else result["distribution"]


def assert_same_answer(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    """The same labels, score and (to float rounding) probabilities."""
    assert ours.keys() == theirs.keys()
    assert ours.get("label") == theirs.get("label") and ours.get("score") == theirs.get("score")
    assert confidences(ours) == pytest.approx(confidences(theirs), abs=1e-5)
