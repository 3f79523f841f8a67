"""A Sightwire webhook receiver on Flask: verify, apply each message once, newest state only.

    SIGHTWIRE_WEBHOOK_SECRET=whsec_... flask --app 'flask_receiver:from_env()' run --port 3000
"""

from __future__ import annotations

import os
from collections.abc import Callable

from flask import Flask, request

from sightwire_client import EventTracker, WebhookEvent, WebhookVerificationError, verify_webhook


def create_app(secrets: list[str], apply: Callable[[WebhookEvent], None]) -> Flask:
    app = Flask(__name__)
    tracker = EventTracker()  # in production: a unique webhook id and a sequence column in your database

    @app.post("/hooks")
    def hooks() -> tuple[str, int]:
        try:
            event = verify_webhook(request.get_data(), request.headers, secrets)  # the raw bytes
        except WebhookVerificationError as exc:
            return f"{exc}\n", 400
        if tracker.is_new(event):  # not a retry of a message already applied, nor an older state
            apply(event)  # keep it quick, or queue it: Sightwire waits 10 s for the answer
        return "", 204

    return app


def from_env() -> Flask:
    """The secrets (comma-separated during a rotation) from the environment."""
    return create_app(os.environ["SIGHTWIRE_WEBHOOK_SECRET"].split(","), lambda event: print(event.type, event.data))
