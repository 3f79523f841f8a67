"""The interface every model family implements, so Serve deployments and Ray Data actors can
run any registry model the same way."""

from __future__ import annotations

from typing import Any, Protocol

from core.registry import ModelSpec
from core.schemas import ModelInfo
from deployments.images import DecodedImage


class ModelRunner(Protocol):
    """A loaded model: ``predict`` takes a batch of decoded images, returns one result each."""

    spec: ModelSpec
    version: str

    def __init__(self, spec: ModelSpec) -> None: ...

    def info(self) -> ModelInfo: ...

    def predict(self, images: list[DecodedImage]) -> list[dict[str, Any]]: ...
