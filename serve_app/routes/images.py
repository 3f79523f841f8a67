"""``/v1/images``: submit an image, read its record."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends, Response

from core.schemas import ImageCreate, ImageRecord
from core.urlpolicy import UrlRejected
from serve_app.auth import Org
from serve_app.context import ApiContext, context
from serve_app.problems import invalid, not_found

router = APIRouter(prefix="/v1/images", tags=["images"])
Ctx = Annotated[ApiContext, Depends(context)]


def check_models(ctx: ApiContext, models: list[str]) -> None:
    unknown = [m for m in models if m not in ctx.registry]
    if unknown:
        raise invalid("models", f"unknown model(s) {unknown}; available: {ctx.registry.names()}")


def check_urls(ctx: ApiContext, **urls: str | None) -> None:
    """Each URL against the policy; a rejection names its field (422)."""
    for name, url in urls.items():
        if url is None:
            continue
        try:
            ctx.policy.check_url(url)
        except UrlRejected as exc:
            raise invalid(name, exc.message) from None


def check_metadata(ctx: ApiContext, metadata: dict | None, field: str = "metadata") -> None:
    if metadata is not None and len(json.dumps(metadata)) > ctx.settings.max_metadata_bytes:
        raise invalid(field, f"metadata is larger than {ctx.settings.max_metadata_bytes} bytes")


@router.post("", status_code=202, response_model=ImageRecord)
async def create_image(body: ImageCreate, org: Org, ctx: Ctx, response: Response) -> ImageRecord:
    """Queue an image for the named models; answers at once with the queued record."""
    check_models(ctx, body.models)
    check_urls(ctx, url=body.url, webhookUrl=body.webhook_url)
    check_metadata(ctx, body.metadata)
    record = await ctx.store.images.create(org, body)
    response.headers["Location"] = f"/v1/images/{record.id}"
    return record


@router.get("/{image_id}", response_model=ImageRecord)
async def get_image(image_id: str, org: Org, ctx: Ctx) -> ImageRecord:
    record = await ctx.store.images.get(image_id, org)
    if record is None:
        raise not_found(f"image {image_id}")
    return record
