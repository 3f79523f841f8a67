"""The delivery log and redelivery: ``/v1/{images,groups}/{id}/deliveries``, ``/v1/deliveries``.

A write that makes a delivery due (a retry) wakes the notifier through the outbox itself (the
script pushes a wake token in the same step), so the API needs no handle on the notifier.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from core.delivery import Outbox, RetryResult, endpoint_of
from core.schemas import Delivery, DeliveryLog, utcnow
from serve_app.lookups import Ctx, FoundDelivery, FoundGroup, FoundImage
from serve_app.problems import Problem, not_found, problem_responses
from serve_app.schemas import DeliveryPage

router = APIRouter(tags=["deliveries"])

Limit = Annotated[int, Query(ge=1, le=1000)]
DISABLED_HINT = "re-enable it with POST /v1/endpoints/enable, which also releases what it holds"


async def _log_for(outbox: Outbox, resource_id: str, limit: int) -> DeliveryPage:
    deliveries = await outbox.for_resource(resource_id)
    newest = sorted(deliveries, key=lambda d: (d.created_at, d.sequence), reverse=True)[:limit]
    return DeliveryPage(data=await outbox.log(newest))


@router.get("/v1/images/{image_id}/deliveries", response_model=DeliveryPage)
async def image_deliveries(image: FoundImage, ctx: Ctx, limit: Limit = 100) -> DeliveryPage:
    """The image's webhook deliveries, newest first, each with every attempt (time, status
    code, latency, error)."""
    return await _log_for(ctx.store.outbox, image.id, limit)


@router.get("/v1/groups/{group_id}/deliveries", response_model=DeliveryPage)
async def group_deliveries(group: FoundGroup, ctx: Ctx, limit: Limit = 100) -> DeliveryPage:
    """The group's own webhook deliveries (``group.*`` events), newest first, with attempts."""
    return await _log_for(ctx.store.outbox, group.id, limit)


@router.get("/v1/deliveries/{delivery_id}", response_model=DeliveryLog)
async def get_delivery(delivery: FoundDelivery, ctx: Ctx) -> DeliveryLog:
    return (await ctx.store.outbox.log([delivery]))[0]


def _refusal(result: RetryResult, delivery: Delivery) -> Problem:
    """Why a retry was refused, as the problem the API answers."""
    if result is RetryResult.SUPERSEDED:
        return Problem(409, "delivery-superseded", "This delivery was superseded by a newer update",
                       f"retry {delivery.superseded_by or 'the newest delivery of the resource'} instead")
    if result is RetryResult.IN_FLIGHT:
        return Problem(409, "delivery-in-flight", "This delivery is being sent right now")
    if result is RetryResult.DISABLED:
        return Problem(409, "endpoint-disabled", "The endpoint is disabled", DISABLED_HINT)
    return not_found(f"delivery {delivery.id}")


@router.post("/v1/deliveries/{delivery_id}/retry", status_code=202, response_model=DeliveryLog,
             responses=problem_responses(409))
async def retry_delivery(delivery: FoundDelivery, ctx: Ctx) -> DeliveryLog:
    """Send this delivery again now, with the same ``webhook-id`` (a delivered one too).

    Refused (409) when a newer update of the same resource exists for the endpoint (it would
    arrive after it: retry the newer one), while it is being sent, and while the endpoint is
    disabled (enable it first). An endpoint whose breaker is open is probed at once."""
    outbox = ctx.store.outbox
    newer = [
        d for d in await outbox.for_resource(delivery.resource_id)
        if endpoint_of(d) == endpoint_of(delivery) and d.sequence > delivery.sequence
    ]
    if newer:
        raise Problem(409, "delivery-superseded", "A newer update of this resource exists",
                      f"retry {newer[-1].id} (sequence {newer[-1].sequence}) instead")
    result = await outbox.retry(delivery, utcnow())
    if result is not RetryResult.OK:
        raise _refusal(result, delivery)
    retried = await outbox.get(delivery.id)
    if retried is None:
        raise not_found(f"delivery {delivery.id}")
    return (await outbox.log([retried]))[0]
