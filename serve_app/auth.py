"""Bearer API keys: each key belongs to one organisation, and every query is scoped to it."""

from __future__ import annotations

from fastapi import Request

from core.store import Store
from serve_app.problems import Problem

UNAUTHORIZED = {"WWW-Authenticate": 'Bearer realm="sightwire"'}


async def authenticate(request: Request, store: Store) -> str:
    """The caller's organisation, or a 401 problem for a missing or unknown key."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Problem(401, "unauthorized", "Missing API key", "send Authorization: Bearer <api key>",
                      headers=UNAUTHORIZED)
    org = await store.accounts.org_for_key(key.strip())
    if org is None:
        raise Problem(401, "unauthorized", "Invalid API key", headers=UNAUTHORIZED)
    return org
