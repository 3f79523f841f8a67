"""Bearer API keys: each key belongs to one organisation, and every query is scoped to it.

Authenticating also charges the key's request bucket (``core.store.ratelimit``): every route
that needs an org is rate limited, and a refused request is a 429 before the route runs.
The admin routes take an operator key instead (``core.store.operators``): an org's key there is
a 403, so an org can never change what the operator decides for it (its weight).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from fastapi import Depends, Request, Response

from core.store.accounts import Caller
from core.store.ratelimit import Charge, LimitKind, Verdict
from serve_app.context import context
from serve_app.problems import Problem

UNAUTHORIZED = {"WWW-Authenticate": 'Bearer realm="sightwire"'}


def bearer_key(headers: Mapping[str, str]) -> str | None:
    """The API key an ``Authorization: Bearer`` header carries, if any."""
    scheme, _, key = headers.get("authorization", "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" and key.strip() else None


def rate_limited(verdict: Verdict) -> Problem:
    per = "second" if verdict.kind is LimitKind.REQUESTS else "minute"
    return Problem(429, "rate-limited", "Rate limit exceeded",
                   f"this key may make {verdict.quota:g} {verdict.kind.value} per {per}; retry after "
                   f"{verdict.headers()['Retry-After']} s", headers=verdict.headers())


async def charge(request: Request, response: Response, kind: LimitKind, cost: int = 1) -> None:
    """Take ``cost`` from the caller's ``kind`` bucket: 429 when it is empty, else the
    ``RateLimit`` headers go on the response."""
    caller: Caller = request.state.caller
    apply_verdict(response, await context(request).store.limits.charge(caller.key_id, caller.org, kind, cost))


def bucket(request: Request, kind: LimitKind, cost: int = 1) -> Charge:
    """The charge of ``cost`` to the caller's ``kind`` bucket, for a store write that takes it
    in its own script (the verdict then goes to ``apply_verdict``)."""
    caller: Caller = request.state.caller
    return context(request).store.limits.bucket(caller.key_id, caller.org, kind, cost)


def apply_verdict(response: Response, verdict: Verdict) -> None:
    """A refused charge is a 429; an allowed one puts its ``RateLimit`` headers on the response."""
    if not verdict.allowed:
        raise rate_limited(verdict)
    for name, value in verdict.headers().items():  # one list item per policy (requests, images)
        existing = response.headers.get(name)
        response.headers[name] = f"{existing}, {value}" if existing else value


async def current_org(request: Request, response: Response) -> str:
    """The caller's organisation, or a 401 problem for a missing, unknown or revoked key."""
    key = bearer_key(request.headers)
    if key is None:
        raise Problem(401, "unauthorized", "Missing API key", "send Authorization: Bearer <api key>",
                      headers=UNAUTHORIZED)
    caller = await context(request).store.accounts.identify(key)
    if caller is None:
        raise Problem(401, "unauthorized", "Invalid API key", headers=UNAUTHORIZED)
    request.state.caller = caller
    await charge(request, response, LimitKind.REQUESTS)
    return caller.org


async def current_operator(request: Request) -> str:
    """The operator key's id: 401 for a missing or unknown key, 403 for an org's key."""
    key = bearer_key(request.headers)
    if key is None:
        raise Problem(401, "unauthorized", "Missing operator key", "send Authorization: Bearer <operator key>",
                      headers=UNAUTHORIZED)
    store = context(request).store
    key_id = await store.operators.identify(key)
    if key_id is not None:
        return key_id
    if await store.accounts.identify(key) is not None:
        raise Problem(403, "forbidden", "Operator key required", "an organisation's API key cannot use admin routes")
    raise Problem(401, "unauthorized", "Invalid operator key", headers=UNAUTHORIZED)


Org = Annotated[str, Depends(current_org)]
Operator = Annotated[str, Depends(current_operator)]
