"""``/v1/images``: submit an image, read it, list images."""

from __future__ import annotations

import base64
import logging
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from core.schemas import ImageCreate, ImageRecord, ImageStatus, ModelsAdd, Wire
from core.store.ratelimit import LimitKind
from serve_app.auth import Org, apply_verdict, bucket
from serve_app.lookups import Ctx, FoundImage, group_or_404
from serve_app.problems import Problem, not_found, problem_responses
from serve_app.routes.validation import check_metadata, check_models, check_urls

log = logging.getLogger("sightwire.api")
router = APIRouter(prefix="/v1/images", tags=["images"])


class ImagePage(Wire):
    data: list[ImageRecord]
    next_cursor: str | None = None


class Cursor(BaseModel):
    """Where a listing page ends. Opaque to clients (base64 JSON); both values go to Redis as
    numbers, so a forged cursor with anything else is refused before it reaches the store."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    before: Annotated[float, Field(allow_inf_nan=False)] | None = None  # newest-first: older than this
    offset: Annotated[int, Field(ge=0, le=2**53)] | None = None  # a group's images: from this index

    def encode(self) -> str:
        return base64.urlsafe_b64encode(self.model_dump_json(exclude_none=True).encode()).decode()

    @classmethod
    def decode(cls, cursor: str | None) -> Cursor:
        if not cursor:
            return cls()
        try:
            return cls.model_validate_json(base64.urlsafe_b64decode(cursor.encode()))
        except (ValueError, TypeError):  # not base64, not JSON, or not our fields and numbers
            raise Problem(400, "invalid-cursor", "Invalid cursor",
                          "not a cursor returned by this API; start again without one",
                          errors=[{"field": "cursor", "message": "not a cursor returned by this API"}]) from None


MAX_WAIT_S = 60


def preferred_wait(prefer: str | None) -> int | None:
    """The ``wait=N`` of a ``Prefer`` header (RFC 7240), capped at 60 s; ``None`` without one."""
    for preference in (prefer or "").split(","):
        name, _, value = preference.strip().partition("=")
        if name.strip().lower() == "wait" and value.strip().isdigit():
            return min(int(value.strip()), MAX_WAIT_S)
    return None


@router.post("", status_code=202, response_model=ImageRecord, responses={200: {"model": ImageRecord}})
async def create_image(
    body: ImageCreate, org: Org, ctx: Ctx, request: Request, response: Response,
    prefer: Annotated[str | None, Header()] = None,
) -> ImageRecord:
    """Queue an image for the named models; answers at once with the queued record (202).

    With ``Prefer: wait=N`` (N up to 60) the request is held until the image finishes: 200 with
    the finished record and ``Preference-Applied``, or, after N seconds, the usual 202."""
    check_models(ctx, body.models)
    check_urls(ctx, url=body.url, webhookUrl=body.webhook_url)
    check_metadata(ctx, body.metadata)
    # the image's charge and its record in one script: refused, nothing is written
    created, verdict = await ctx.store.images.create_charged(org, body, bucket(request, LimitKind.IMAGES))
    apply_verdict(response, verdict)  # refused: a 429
    assert created is not None
    record = created
    log.info("image %s queued", record.id, extra={"org": org, "image_id": record.id})
    response.headers["Location"] = f"/v1/images/{record.id}"
    wait_s = preferred_wait(prefer)
    if wait_s:
        waited = await ctx.waiters.wait(record.id, lambda: ctx.store.images.get(record.id, org), wait_s)
        record = waited or record
        if record.status.is_terminal:
            response.status_code = 200
            response.headers["Preference-Applied"] = f"wait={wait_s}"
    return record


@router.get("", response_model=ImagePage, responses=problem_responses(400, 404))
async def list_images(
    org: Org,
    ctx: Ctx,
    group_id: Annotated[str | None, Query(alias="groupId")] = None,
    status: ImageStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> ImagePage:
    """Newest first (or a group's images in order); follow ``nextCursor`` for the next page."""
    position = Cursor.decode(cursor)
    if group_id is not None:
        await group_or_404(group_id, org, ctx)
        start = position.offset or 0
        ids = await ctx.store.groups.image_ids(group_id, start, start + limit - 1)
        following = Cursor(offset=start + limit) if len(ids) == limit else None
    else:
        rows = await ctx.store.images.page(org, position.before, limit)
        ids = [image_id for image_id, _ in rows]
        following = Cursor(before=rows[-1][1]) if len(rows) == limit else None
    records = await ctx.store.images.get_many(ids)
    if status is not None:
        records = [r for r in records if r.status is status]
    return ImagePage(data=records, next_cursor=following.encode() if following else None)


@router.get("/{image_id}", response_model=ImageRecord)
async def get_image(record: FoundImage) -> ImageRecord:
    return record


@router.post("/{image_id}/models", status_code=202, response_model=ImageRecord, responses=problem_responses(409))
async def add_models(image_id: str, body: ModelsAdd, record: FoundImage, org: Org, ctx: Ctx) -> ImageRecord:
    """Run more models on an image. Only models it does not have yet run (in one transaction
    with their job); when they finish, the webhook fires again as ``image.updated`` with every
    result. An image that could not be loaded, or was canceled, answers 409."""
    check_models(ctx, body.models)
    if record.error is not None or record.status is ImageStatus.CANCELED:
        if record.status is ImageStatus.CANCELED:
            reason = "was canceled" + (f" ({record.error.code})" if record.error is not None else "")
        else:
            reason = f"failed to load ({record.error.code})"  # type: ignore[union-attr]
        raise Problem(409, "image-not-runnable", "The image cannot run more models",
                      f"image {image_id} {reason}; submit it again")
    outcome = await ctx.store.images.add_models(image_id, org, body.models, body.deadline)
    if outcome is None:
        raise not_found(f"image {image_id}")
    return outcome[0]


@router.post("/{image_id}/cancel", response_model=ImageRecord)
async def cancel_image(image_id: str, org: Org, ctx: Ctx) -> ImageRecord:
    """Cancel an image: queued work never starts, running work stops before its next model,
    results already written are kept; the webhook fires once with the ``canceled`` record. An
    image that already finished (or was canceled) is answered as it is: a no-op."""
    record = await ctx.store.images.cancel(image_id, org)
    if record is None:
        raise not_found(f"image {image_id}")
    return record
