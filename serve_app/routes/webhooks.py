"""Test events: ``POST /v1/webhooks/test`` checks a receiver through the normal delivery path."""

from __future__ import annotations

from fastapi import APIRouter

from core.events import Events
from core.schemas import DeliveryLog
from serve_app.auth import Org
from serve_app.lookups import Ctx
from serve_app.routes.validation import check_urls
from serve_app.schemas import WebhookTest

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


@router.post("/test", status_code=202, response_model=DeliveryLog)
async def send_test_event(body: WebhookTest, org: Org, ctx: Ctx) -> DeliveryLog:
    """Queue a signed ``webhook.test`` event to ``url`` through the same outbox, breaker and
    retries as every webhook (the URL policy applies). Poll ``GET /v1/deliveries/{id}``."""
    check_urls(ctx, url=body.url)
    announcement = Events.from_settings(ctx.settings).test_event(org, body.url)
    async with ctx.store.redis.pipeline(transaction=True) as pipe:
        delivery = ctx.store.outbox.add(pipe, announcement)
        await pipe.execute()
    return (await ctx.store.outbox.log([delivery]))[0]
