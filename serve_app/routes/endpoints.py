"""Endpoint health and re-enabling: ``/v1/endpoints``. An endpoint is one (organisation, URL)."""

from __future__ import annotations

from fastapi import APIRouter

from core.delivery import endpoint_id
from core.schemas import EndpointHealth, EndpointState, utcnow
from serve_app.auth import Org
from serve_app.lookups import Ctx
from serve_app.problems import Problem, not_found, problem_responses
from serve_app.schemas import EndpointEnable, EndpointEnabled, EndpointPage, EndpointRecover, EndpointRecovered

router = APIRouter(prefix="/v1/endpoints", tags=["endpoints"])


def _never_sent(url: str) -> Exception:
    return not_found(f"endpoint {url} (nothing was ever sent to it)")


@router.get("", response_model=EndpointHealth | EndpointPage, responses=problem_responses(404))
async def endpoints(org: Org, ctx: Ctx, url: str | None = None) -> EndpointHealth | EndpointPage:
    """One endpoint's health (``?url=``): breaker state, consecutive failures, last success and
    failure, deliveries held; without ``url``, every endpoint of the organisation."""
    if url is None:
        return EndpointPage(data=await ctx.store.endpoints.for_org(org))
    health = await ctx.store.endpoints.health(org, url)
    if health is None:
        raise _never_sent(url)
    return health


@router.post("/enable", response_model=EndpointEnabled, responses=problem_responses(404))
async def enable_endpoint(body: EndpointEnable, org: Org, ctx: Ctx) -> EndpointEnabled:
    """Re-enable a disabled endpoint (or close an open breaker) and release every delivery it
    holds: they are sent at once, in order, newest state per resource."""
    released = await ctx.store.endpoints.enable(org, body.url, utcnow())
    if released is None:
        raise _never_sent(body.url)
    health = await ctx.store.endpoints.health(org, body.url)
    if health is None:
        raise not_found(f"endpoint {body.url}")
    return EndpointEnabled(**health.model_dump(), released=released)


@router.post("/recover", response_model=EndpointRecovered, responses=problem_responses(404, 409))
async def recover_endpoint(body: EndpointRecover, org: Org, ctx: Ctx) -> EndpointRecovered:
    """Re-send every delivery to ``url`` created since ``since`` that failed (its retries used up)
    or that the breaker holds: each is due now, as a manual retry makes it. A disabled endpoint
    answers 409: enable it first (``POST /v1/endpoints/enable`` releases what it holds), then
    recover what failed."""
    health = await ctx.store.endpoints.health(org, body.url)
    if health is None:
        raise _never_sent(body.url)
    if health.state is EndpointState.DISABLED:
        raise Problem(409, "endpoint-disabled", "The endpoint is disabled",
                      f"{body.url} is disabled ({health.disabled_reason}); enable it with POST /v1/endpoints/enable, "
                      "then recover")
    recovered = await ctx.store.outbox.recover(endpoint_id(org, body.url), body.since, utcnow())
    return EndpointRecovered(url=body.url, recovered=recovered)
