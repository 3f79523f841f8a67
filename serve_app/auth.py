"""Bearer API keys: each key belongs to one organisation, and every query is scoped to it."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from serve_app.context import context
from serve_app.problems import Problem

UNAUTHORIZED = {"WWW-Authenticate": 'Bearer realm="sightwire"'}


async def current_org(request: Request) -> str:
    """The caller's organisation, or a 401 problem for a missing or unknown key."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Problem(401, "unauthorized", "Missing API key", "send Authorization: Bearer <api key>",
                      headers=UNAUTHORIZED)
    org = await context(request).store.accounts.org_for_key(key.strip())
    if org is None:
        raise Problem(401, "unauthorized", "Invalid API key", headers=UNAUTHORIZED)
    return org


Org = Annotated[str, Depends(current_org)]
