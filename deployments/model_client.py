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
to four models is copied into the object store once, not four times. Models on one shared
backbone (``core.registry.serving_groups``) are one deployment and one client: their calls for
an image that wait together travel as that image once with the models it wants, and the replica
runs the image's forward once even when they come in different requests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ray.serve.handle import DeploymentHandle

from core.coalesce import Coalescer
from core.registry import ModelSpec, serving_groups


class ModelError(Exception):
    """The model itself failed on this image (the replica is fine): not worth a retry."""


class ModelClient:
    """Calls of one deployment, which may serve several models (a shared backbone): each call
    is one image for one model; a request carries each image once, with the models it wants."""

    def __init__(self, handle: DeploymentHandle, max_images: int, max_in_flight: int) -> None:
        self.handle = handle
        self._requests: Coalescer[tuple[Any, str], dict[str, Any]] = Coalescer(
            self._predict_many, max_items=max(1, max_images), max_in_flight=max(1, max_in_flight)
        )

    async def predict(self, image: Any, model: str) -> dict[str, Any]:
        """``model``'s answer for one image (``{"version", "result"}``); raises what the request
        raised (``RayActorError`` when the replica died: the caller may retry) or ``ModelError``."""
        return await self._requests.submit((image, model))

    async def _predict_many(self, calls: list[tuple[Any, str]]) -> list[dict[str, Any] | ModelError]:
        slots: dict[int, int] = {}  # id(image) -> its place in the request
        images: list[Any] = []
        wanted: list[list[str]] = []
        for image, model in calls:
            slot = slots.setdefault(id(image), len(images))
            if slot == len(images):
                images.append(image)
                wanted.append([])
            wanted[slot].append(model)
        answers = await self.handle.predict_many.remote(images, wanted)
        out: list[dict[str, Any] | ModelError] = []
        for image, model in calls:
            answer = answers[slots[id(image)]][model]
            out.append(ModelError(answer["error"]) if "error" in answer else answer)
        return out

    def stats(self) -> dict[str, float]:
        stats = self._requests.stats
        return {"requests": stats.calls, "images": stats.items, "images_per_request": stats.mean_items}


def model_clients(specs: Mapping[str, ModelSpec], handles: Mapping[str, DeploymentHandle]) -> dict[str, ModelClient]:
    """A coalescing client per model: requests of up to a batch (a batch of every model of a
    shared backbone: its models' calls share one client, so an image's calls for them can leave
    as one request), two in flight per replica. A model with no spec gets a batch of 8."""
    known = [specs[name] for name in handles if name in specs]
    clients: dict[str, ModelClient] = {}
    for group in serving_groups(known):
        batch, replicas = group.batching.max_batch_size, group.autoscaling.max_replicas
        client = ModelClient(handles[group.names[0]], max_images=batch * len(group.names), max_in_flight=2 * replicas)
        clients.update(dict.fromkeys(group.names, client))
    for name, handle in handles.items():
        if name not in clients:
            clients[name] = ModelClient(handle, max_images=8, max_in_flight=2)
    return clients
