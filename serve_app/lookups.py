"""Dependencies every route shares: the replica's context, and the resources a path names,
looked up for the caller's organisation. Another org's resource answers 404 like a missing one,
so an id never tells whether it exists elsewhere."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from core.schemas import Delivery, GroupRecord, ImageRecord
from serve_app.auth import Org
from serve_app.context import ApiContext, context
from serve_app.problems import not_found


async def replica_context(request: Request) -> ApiContext:
    """``context`` as a dependency: ``async``, so FastAPI calls it on the event loop (a plain
    function it sends to its thread pool, on every request: ~19 % of the API replica's request
    path in a py-spy profile under load)."""
    return context(request)


Ctx = Annotated[ApiContext, Depends(replica_context)]


async def image_or_404(image_id: str, org: Org, ctx: Ctx) -> ImageRecord:
    record = await ctx.store.images.get(image_id, org)
    if record is None:
        raise not_found(f"image {image_id}")
    return record


async def group_or_404(group_id: str, org: Org, ctx: Ctx) -> GroupRecord:
    """The group's record, without its image ids (reading up to 10,000 ids is not a lookup)."""
    record = await ctx.store.groups.get(group_id, org, image_ids=False)
    if record is None:
        raise not_found(f"group {group_id}")
    return record


async def delivery_or_404(delivery_id: str, org: Org, ctx: Ctx) -> Delivery:
    delivery = await ctx.store.outbox.get(delivery_id)
    if delivery is None or delivery.org_id != org:
        raise not_found(f"delivery {delivery_id}")
    return delivery


FoundImage = Annotated[ImageRecord, Depends(image_or_404)]
FoundGroup = Annotated[GroupRecord, Depends(group_or_404)]
FoundDelivery = Annotated[Delivery, Depends(delivery_or_404)]
