"""The organisation's webhook signing secret: ``/v1/webhook-secret``."""

from __future__ import annotations

from fastapi import APIRouter

from serve_app.auth import Org
from serve_app.lookups import Ctx
from serve_app.schemas import SecretRotate, WebhookSecret

router = APIRouter(prefix="/v1/webhook-secret", tags=["webhook secret"])


@router.get("", response_model=WebhookSecret)
async def webhook_secret(org: Org, ctx: Ctx) -> WebhookSecret:
    """The ``whsec_`` secret your receiver verifies with; ``previous`` lists secrets that still
    sign too (after a rotation, until ``expiresAt``)."""
    return WebhookSecret.from_entries(await ctx.store.accounts.secret_entries(org))


@router.post("/rotate", response_model=WebhookSecret)
async def rotate_webhook_secret(org: Org, ctx: Ctx, body: SecretRotate | None = None) -> WebhookSecret:
    """A new secret signs from now on. The old one keeps signing (a second signature in
    ``webhook-signature``) for the grace period — ``graceSeconds``, default from settings —
    so the receiver can switch without rejecting anything."""
    grace = ctx.settings.webhook_secret_grace_s
    if body is not None and body.grace_seconds is not None:
        grace = body.grace_seconds
    return WebhookSecret.from_entries(await ctx.store.accounts.rotate_webhook_secret(org, grace))
