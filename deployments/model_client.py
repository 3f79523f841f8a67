"""How the processor calls a model: single-image calls, coalesced into multi-image requests.

Every Serve request costs CPU on both ends whatever it carries (routing with a slot reservation,
argument and result objects, the replica's request bookkeeping): measured on a 2-CPU machine,
about 8 ms of CPU per request in all, as much as a mid-size CLIP forward of one image. So the
processor does not send one request per image and model. ``ModelClient`` keeps at most
``max_in_flight`` requests outstanding per model; images that arrive meanwhile wait and leave
together, up to ``max_images`` per request, as soon as a request returns (Nagle's algorithm).
Under light load each image goes alone at once (no added latency); under load the requests grow
to full batches and the per-request cost is shared by the whole batch. The replica's own
``Batcher`` merges requests from every client into model batches either way.

Images are passed as ``ObjectRef``s (``ray.put`` once per image by the caller), so an image sent
to four models is copied into the object store once, not four times.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray.serve.handle import DeploymentHandle


class ModelError(Exception):
    """The model itself failed on this image (the replica is fine): not worth a retry."""


class ModelClient:
    def __init__(self, handle: DeploymentHandle, max_images: int, max_in_flight: int) -> None:
        self.handle = handle
        self.max_images = max(1, max_images)
        self.max_in_flight = max(1, max_in_flight)
        self._waiting: list[tuple[Any, asyncio.Future[dict[str, Any]]]] = []
        self._in_flight = 0
        self.requests = 0
        self.images = 0

    async def predict(self, image: Any) -> dict[str, Any]:
        """The model's answer for one image (``{"version", "result"}``); raises what the request
        raised (``RayActorError`` when the replica died: the caller may retry) or ``ModelError``."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting.append((image, future))
        self._pump()
        return await future

    def _pump(self) -> None:
        while self._waiting and self._in_flight < self.max_in_flight:
            group = [entry for entry in self._waiting[: self.max_images] if not entry[1].done()]
            del self._waiting[: self.max_images]
            if group:
                self._in_flight += 1
                asyncio.get_running_loop().create_task(self._send(group))

    async def _send(self, group: list[tuple[Any, asyncio.Future[dict[str, Any]]]]) -> None:
        self.requests += 1
        self.images += len(group)
        try:
            answers = await self.handle.predict_many.remote([image for image, _ in group])
        except BaseException as exc:  # the request failed: every image of it fails the same way
            for _, future in group:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
            if not isinstance(exc, Exception):
                raise
        else:
            for (_, future), answer in zip(group, answers, strict=True):
                if future.done():  # the caller gave up (its deadline passed)
                    continue
                if "error" in answer:
                    future.set_exception(ModelError(answer["error"]))
                else:
                    future.set_result(answer)
        finally:
            self._in_flight -= 1
            self._pump()

    def stats(self) -> dict[str, float]:
        return {"requests": self.requests, "images": self.images,
                "images_per_request": self.images / self.requests if self.requests else 0.0}
