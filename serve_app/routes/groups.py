"""``/v1/groups``: many images, one set of models, one webhook with the group's state."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import APIRouter, Request, Response

from core.schemas import GroupCreate, GroupCreateFields, GroupImagesAdd, GroupImagesAddFields, GroupRecord, ModelsAdd
from core.store.groups import GroupFull, RetryRefused
from core.store.ratelimit import LimitKind
from serve_app.auth import Org, charge
from serve_app.group_body import documented_body, group_body
from serve_app.lookups import Ctx, FoundGroup
from serve_app.problems import Problem, invalid, not_found
from serve_app.routes.validation import check_metadata, check_models, check_urls

log = logging.getLogger("sightwire.api")
router = APIRouter(prefix="/v1/groups", tags=["groups"])
# The POST paths whose body is read as a stream (``serve_app.group_body``), and so may take
# ``max_group_body_bytes`` rather than ``max_body_bytes`` (``serve_app.body_limit``).
STREAMED_BODIES = re.compile(r"/v1/groups(/[^/]+/images)?")
RETRY_REFUSED: dict[int | str, dict[str, Any]] = {
    409: {"description": "Nothing to retry: the group is still running, or none of its images failed"}}


@router.post("", status_code=202, response_model=GroupRecord, openapi_extra=documented_body(GroupCreate))
async def create_group(org: Org, ctx: Ctx, request: Request, response: Response) -> GroupRecord:
    """Queue every image of the group; large groups run as one bulk pipeline. Each image counts
    against the key's images-per-minute limit. The body (``GroupCreate``) is read as a stream
    and written in chunks (``serve_app.group_body``)."""
    async with group_body(request, ctx, GroupCreateFields) as upload:
        body = upload.fields
        check_models(ctx, body.models)
        check_urls(ctx, webhookUrl=body.webhook_url)
        check_metadata(ctx, body.metadata)
        await charge(request, response, LimitKind.IMAGES, upload.count)
        record = await ctx.store.groups.create_from(org, body, upload.count, upload.chunks())
    log.info("group %s queued, %d images", record.id, upload.count, extra={"org": org, "group_id": record.id})
    response.headers["Location"] = f"/v1/groups/{record.id}"
    return record


@router.get("/{group_id}", response_model=GroupRecord)
async def get_group(group_id: str, org: Org, ctx: Ctx) -> GroupRecord:
    record = await ctx.store.groups.get(group_id, org)
    if record is None:
        raise not_found(f"group {group_id}")
    return record


@router.post("/{group_id}/images", status_code=202, response_model=GroupRecord,
             openapi_extra=documented_body(GroupImagesAdd))
async def add_images(group_id: str, current: FoundGroup, org: Org, ctx: Ctx, request: Request,
                     response: Response) -> GroupRecord:
    """Grow the group; only the new images run, then the group's webhook fires again. The body
    (``GroupImagesAdd``) is read as ``POST /v1/groups`` reads it; the new images are then held
    to link them under the group's growth check."""
    async with group_body(request, ctx, GroupImagesAddFields, already=current.counts.total) as upload:
        await charge(request, response, LimitKind.IMAGES, upload.count)
        images = [image async for chunk in upload.chunks() for image in chunk]
    try:
        record = await ctx.store.groups.add_images(group_id, org, images, upload.fields.deadline)
    except GroupFull as exc:  # a concurrent add got there first
        raise invalid("images", str(exc)) from exc
    if record is None:
        raise not_found(f"group {group_id}")
    return record


@router.post("/{group_id}/models", status_code=202, response_model=GroupRecord)
async def add_models(group_id: str, body: ModelsAdd, org: Org, ctx: Ctx) -> GroupRecord:
    """Run more models on every image; models already run are not run again."""
    check_models(ctx, body.models)
    outcome = await ctx.store.groups.add_models(group_id, org, body.models, body.deadline)
    if outcome is None:
        raise not_found(f"group {group_id}")
    return outcome[0]


@router.post("/{group_id}/cancel", response_model=GroupRecord)
async def cancel_group(group_id: str, org: Org, ctx: Ctx) -> GroupRecord:
    """Cancel every unfinished image (a bulk group's run is stopped within 0.5 s); results so far are
    kept. The group's webhook fires once with its final state: ``canceled``, or ``partial``
    with ``counts.canceled``. A finished group is answered as it is: a no-op."""
    record = await ctx.store.groups.cancel(group_id, org)
    if record is None:
        raise not_found(f"group {group_id}")
    return record


@router.post("/{group_id}/retry", status_code=202, response_model=GroupRecord, responses=RETRY_REFUSED)
async def retry_group(group_id: str, org: Org, ctx: Ctx) -> GroupRecord:
    """Run again only what failed (failed images, failed models of partial ones); the group
    re-opens and its webhook fires again when it finishes. 409 while it runs or when nothing
    failed."""
    try:
        record = await ctx.store.groups.retry(group_id, org)
    except RetryRefused as exc:
        raise Problem(409, "nothing-to-retry", "Nothing to retry", str(exc)) from exc
    if record is None:
        raise not_found(f"group {group_id}")
    return record
