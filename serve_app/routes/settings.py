"""The organisation's own settings: ``/v1/settings`` (its operations webhook; its rate limits,
which only an operator sets, are shown)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import ConfigDict

from core.schemas import Wire
from core.store.ratelimit import LimitKind
from serve_app.auth import Org
from serve_app.lookups import Ctx
from serve_app.routes.validation import check_urls

router = APIRouter(prefix="/v1/settings", tags=["settings"])


class OrgSettings(Wire):
    operations_webhook_url: str | None = None  # receives ``endpoint.disabled``
    requests_per_second: float | None = None  # per key; None: unlimited
    images_per_minute: float | None = None


class OrgSettingsUpdate(Wire):
    model_config = ConfigDict(extra="forbid")

    operations_webhook_url: str | None


async def _view(org: str, ctx: Ctx) -> OrgSettings:
    own = await ctx.store.accounts.settings(org)
    defaults = {LimitKind.REQUESTS: ctx.settings.rate_limit_requests_per_s,
                LimitKind.IMAGES: ctx.settings.rate_limit_images_per_min}
    quota = {kind: float(own.get(kind.org_field, defaults[kind])) for kind in LimitKind}
    return OrgSettings(
        operations_webhook_url=own.get("operations_webhook_url"),
        requests_per_second=quota[LimitKind.REQUESTS] or None,
        images_per_minute=quota[LimitKind.IMAGES] or None,
    )


@router.get("", response_model=OrgSettings)
async def get_settings(org: Org, ctx: Ctx) -> OrgSettings:
    return await _view(org, ctx)


@router.patch("", response_model=OrgSettings)
async def update_settings(body: OrgSettingsUpdate, org: Org, ctx: Ctx) -> OrgSettings:
    """Set (or, with ``null``, clear) the operations webhook: it gets ``endpoint.disabled``
    events, signed like every webhook, when one of the org's endpoints is disabled."""
    check_urls(ctx, operationsWebhookUrl=body.operations_webhook_url)
    await ctx.store.accounts.set_operations_webhook(org, body.operations_webhook_url)
    return await _view(org, ctx)
