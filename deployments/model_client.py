"""How the processor calls a model: single-image calls, coalesced into multi-image requests.

Every Serve request costs CPU on both ends whatever it carries (routing with a slot reservation,
argument and result objects, the replica's request bookkeeping): measured on a 2-CPU machine,
about 8 ms of CPU per request in all, as much as a mid-size CLIP forward of one image. So the
processor does not send one request per image and model. ``ModelClient`` keeps at most
``max_in_flight`` requests outstanding per model; images that arrive meanwhile wait and leave
together, up to ``max_images`` per request, as soon as a request returns (Nagle's algorithm,
``core.coalesce`` with no wait). Under light load each image goes alone at once (no added
latency); under load the requests grow to full batches and the per-request cost is shared by the
whole batch. The replica's own ``Batcher`` merges requests from every client into model batches
either way.

Images are passed as ``ObjectRef``s (``ray.put`` once per image by the caller), so an image sent
to four models is copied into the object store once, not four times.
"""

from __future__ import annotations

from typing import Any

from ray.serve.handle import DeploymentHandle

from core.coalesce import Coalescer


class ModelError(Exception):
    """The model itself failed on this image (the replica is fine): not worth a retry."""


class ModelClient:
    def __init__(self, handle: DeploymentHandle, max_images: int, max_in_flight: int) -> None:
        self.handle = handle
        self._requests: Coalescer[Any, dict[str, Any]] = Coalescer(
            self._predict_many, max_items=max(1, max_images), max_in_flight=max(1, max_in_flight)
        )

    async def predict(self, image: Any) -> dict[str, Any]:
        """The model's answer for one image (``{"version", "result"}``); raises what the request
        raised (``RayActorError`` when the replica died: the caller may retry) or ``ModelError``."""
        return await self._requests.submit(image)

    async def _predict_many(self, images: list[Any]) -> list[dict[str, Any] | ModelError]:
        answers = await self.handle.predict_many.remote(images)
        return [ModelError(answer["error"]) if "error" in answer else answer for answer in answers]

    def stats(self) -> dict[str, float]:
        stats = self._requests.stats
        return {"requests": stats.calls, "images": stats.items, "images_per_request": stats.mean_items}
