"""A Sightwire webhook receiver on FastAPI: verify, apply each message once, newest state only.

    SIGHTWIRE_WEBHOOK_SECRET=whsec_... uvicorn fastapi_receiver:from_env --factory --port 3000
"""

from __future__ import annotations

import os
from collections.abc import Callable

from fastapi import FastAPI, Request, Response

from sightwire_client import EventTracker, WebhookEvent, WebhookVerificationError, verify_webhook


def create_app(secrets: list[str], apply: Callable[[WebhookEvent], None]) -> FastAPI:
    app = FastAPI()
    tracker = EventTracker()  # in production: a unique webhook id and a sequence column in your database

    @app.post("/hooks")
    async def hooks(request: Request) -> Response:
        body = await request.body()  # the raw bytes: a re-serialised body would not verify
        try:
            event = verify_webhook(body, request.headers, secrets)
        except WebhookVerificationError as exc:
            return Response(f"{exc}\n", status_code=400)
        if tracker.is_new(event):  # not a retry of a message already applied, nor an older state
            apply(event)  # keep it quick, or queue it: Sightwire waits 10 s for the answer
        return Response(status_code=204)

    return app


def print_event(event: WebhookEvent) -> None:
    if event.thin:  # over the size cap: fetch the record (Client.get_image / get_group)
        print(event.type, event.resource_id, "thin: fetch", event.data["href"])
    else:
        print(event.type, event.resource_id, event.data["status"], "sequence", event.sequence)


def from_env() -> FastAPI:
    """``uvicorn --factory``: the secrets (comma-separated during a rotation) from the environment."""
    return create_app(os.environ["SIGHTWIRE_WEBHOOK_SECRET"].split(","), print_event)
