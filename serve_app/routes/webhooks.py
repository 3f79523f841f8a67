"""Webhook delivery: the delivery log, redelivery, endpoint health, signing secrets, test events.

Everything is scoped to the caller's organisation: another org's image, group, delivery or
endpoint answers 404. Writes that make a delivery due (retry, enable, test) wake the notifier
through the outbox itself (``Outbox`` pushes a wake token in the same step), so the API needs
no handle on the notifier.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import ConfigDict, Field

from core.schemas import DeliveryLog, EndpointHealth, EventType, Wire, utcnow
from core.store.outbox import Outbox
from core.tokens import new_id
from serve_app.auth import Org
from serve_app.context import ApiContext, context
from serve_app.problems import Problem, not_found
from serve_app.routes.validation import check_urls

router = APIRouter(tags=["webhooks"])
Ctx = Annotated[ApiContext, Depends(context)]

MAX_GRACE_S = 7 * 24 * 3600.0


class DeliveryPage(Wire):
    data: list[DeliveryLog]


class EndpointPage(Wire):
    data: list[EndpointHealth]


class EndpointEnable(Wire):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1)


class EndpointEnabled(EndpointHealth):
    released: int = 0  # held deliveries made due by this call


class SecretInfo(Wire):
    secret: str
    created_at: datetime | None = None
    expires_at: datetime | None = None


class WebhookSecret(Wire):
    """The secret that signs now, and older ones still signing during their grace period."""

    secret: str
    created_at: datetime | None = None
    previous: list[SecretInfo] = Field(default_factory=list)


class SecretRotate(Wire):
    model_config = ConfigDict(extra="forbid")

    grace_seconds: float | None = Field(default=None, ge=0, le=MAX_GRACE_S)


class WebhookTest(Wire):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1)


def _secret_view(entries: list[dict[str, Any]]) -> WebhookSecret:
    current, *older = entries
    return WebhookSecret(
        secret=current["secret"],
        created_at=current.get("createdAt"),
        previous=[SecretInfo(secret=e["secret"], created_at=e.get("createdAt"), expires_at=e.get("expiresAt"))
                  for e in older],
    )


async def _log_for(outbox: Outbox, resource_id: str, limit: int) -> DeliveryPage:
    deliveries = await outbox.for_resource(resource_id)
    newest = sorted(deliveries, key=lambda d: (d.created_at, d.sequence), reverse=True)[:limit]
    return DeliveryPage(data=await outbox.log(newest))


Limit = Annotated[int, Query(ge=1, le=1000)]


@router.get("/v1/images/{image_id}/deliveries", response_model=DeliveryPage)
async def image_deliveries(image_id: str, org: Org, ctx: Ctx, limit: Limit = 100) -> DeliveryPage:
    """The image's webhook deliveries, newest first, each with every attempt (time, status
    code, latency, error)."""
    if await ctx.store.images.get(image_id, org) is None:
        raise not_found(f"image {image_id}")
    return await _log_for(ctx.store.outbox, image_id, limit)


@router.get("/v1/groups/{group_id}/deliveries", response_model=DeliveryPage)
async def group_deliveries(group_id: str, org: Org, ctx: Ctx, limit: Limit = 100) -> DeliveryPage:
    """The group's own webhook deliveries (``group.*`` events), newest first, with attempts."""
    if await ctx.store.groups.ledger.get(group_id, org) is None:
        raise not_found(f"group {group_id}")
    return await _log_for(ctx.store.outbox, group_id, limit)


async def _delivery(ctx: ApiContext, delivery_id: str, org: str) -> DeliveryLog:
    delivery = await ctx.store.outbox.get(delivery_id)
    if delivery is None or delivery.org_id != org:
        raise not_found(f"delivery {delivery_id}")
    return (await ctx.store.outbox.log([delivery]))[0]


@router.get("/v1/deliveries/{delivery_id}", response_model=DeliveryLog)
async def get_delivery(delivery_id: str, org: Org, ctx: Ctx) -> DeliveryLog:
    return await _delivery(ctx, delivery_id, org)


@router.post("/v1/deliveries/{delivery_id}/retry", status_code=202, response_model=DeliveryLog)
async def retry_delivery(delivery_id: str, org: Org, ctx: Ctx) -> DeliveryLog:
    """Send this delivery again now, with the same ``webhook-id`` (a delivered one too).

    Refused (409) when a newer update of the same resource exists for the endpoint (it would
    arrive after it: retry the newer one), while it is being sent, and while the endpoint is
    disabled (enable it first). An endpoint whose breaker is open is probed at once."""
    outbox = ctx.store.outbox
    delivery = await outbox.get(delivery_id)
    if delivery is None or delivery.org_id != org:
        raise not_found(f"delivery {delivery_id}")
    newer = [
        d for d in await outbox.for_resource(delivery.resource_id)
        if d.endpoint_id == delivery.endpoint_id and d.sequence > delivery.sequence
    ]
    if newer:
        raise Problem(409, "delivery-superseded", "A newer update of this resource exists",
                      f"retry {newer[-1].id} (sequence {newer[-1].sequence}) instead")
    result = await outbox.retry(delivery, utcnow())
    if result == "superseded":
        raise Problem(409, "delivery-superseded", "This delivery was superseded by a newer update",
                      f"retry {delivery.superseded_by or 'the newest delivery of the resource'} instead")
    if result == "in_flight":
        raise Problem(409, "delivery-in-flight", "This delivery is being sent right now")
    if result == "disabled":
        raise Problem(409, "endpoint-disabled", "The endpoint is disabled",
                      "re-enable it with POST /v1/endpoints/enable, which also releases what it holds")
    if result == "missing":
        raise not_found(f"delivery {delivery_id}")
    return await _delivery(ctx, delivery_id, org)


@router.get("/v1/endpoints", response_model=EndpointHealth | EndpointPage)
async def endpoints(org: Org, ctx: Ctx, url: str | None = None) -> EndpointHealth | EndpointPage:
    """One endpoint's health (``?url=``): breaker state, consecutive failures, last success and
    failure, deliveries held; without ``url``, every endpoint of the organisation."""
    if url is None:
        return EndpointPage(data=await ctx.store.outbox.endpoints.for_org(org))
    health = await ctx.store.outbox.endpoints.health(org, url)
    if health is None:
        raise not_found(f"endpoint {url} (nothing was ever sent to it)")
    return health


@router.post("/v1/endpoints/enable", response_model=EndpointEnabled)
async def enable_endpoint(body: EndpointEnable, org: Org, ctx: Ctx) -> EndpointEnabled:
    """Re-enable a disabled endpoint (or close an open breaker) and release every delivery it
    holds: they are sent at once, in order, newest state per resource."""
    released = await ctx.store.outbox.endpoints.enable(org, body.url, utcnow())
    if released is None:
        raise not_found(f"endpoint {body.url} (nothing was ever sent to it)")
    health = await ctx.store.outbox.endpoints.health(org, body.url)
    if health is None:
        raise not_found(f"endpoint {body.url}")
    return EndpointEnabled(**health.model_dump(), released=released)


@router.get("/v1/webhook-secret", response_model=WebhookSecret)
async def webhook_secret(org: Org, ctx: Ctx) -> WebhookSecret:
    """The ``whsec_`` secret your receiver verifies with; ``previous`` lists secrets that still
    sign too (after a rotation, until ``expiresAt``)."""
    return _secret_view(await ctx.store.accounts.secret_entries(org))


@router.post("/v1/webhook-secret/rotate", response_model=WebhookSecret)
async def rotate_webhook_secret(org: Org, ctx: Ctx, body: SecretRotate | None = None) -> WebhookSecret:
    """A new secret signs from now on. The old one keeps signing (a second signature in
    ``webhook-signature``) for the grace period — ``graceSeconds``, default from settings —
    so the receiver can switch without rejecting anything."""
    grace = ctx.settings.webhook_secret_grace_s
    if body is not None and body.grace_seconds is not None:
        grace = body.grace_seconds
    return _secret_view(await ctx.store.accounts.rotate_webhook_secret(org, grace))


@router.post("/v1/webhooks/test", status_code=202, response_model=DeliveryLog)
async def send_test_event(body: WebhookTest, org: Org, ctx: Ctx) -> DeliveryLog:
    """Queue a signed ``webhook.test`` event to ``url`` through the same outbox, breaker and
    retries as every webhook (the URL policy applies). Poll ``GET /v1/deliveries/{id}``."""
    check_urls(ctx, url=body.url)
    test_id = new_id("tst")
    data = {"id": test_id, "object": "test", "sequence": 1, "message": "Sightwire test event"}
    async with ctx.store.redis.pipeline(transaction=True) as pipe:
        delivery = ctx.store.outbox.add(
            pipe, org=org, url=body.url, event=EventType.TEST, resource_id=test_id, sequence=1, data=data
        )
        await pipe.execute()
    return (await ctx.store.outbox.log([delivery]))[0]
