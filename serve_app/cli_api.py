"""CLI commands that call the HTTP API through the light client (``sightwire_client``).

Each prints a one-line summary, or the record as JSON with ``--json``. The key and URL come from
``--api-key``/``--api-url`` or ``SIGHTWIRE_API_KEY``/``SIGHTWIRE_API_URL``, as for the client.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from pydantic import BaseModel

from sightwire_client import Client
from sightwire_client.errors import SightwireError
from sightwire_client.models import WebhookSecret

Result = BaseModel | list[BaseModel]
Call = Callable[[Client, argparse.Namespace], Result]


def _summary(record: BaseModel) -> str:
    if isinstance(record, WebhookSecret):
        until = [p.expires_at.isoformat(timespec="seconds") for p in record.previous if p.expires_at]
        return record.secret + (f"  (older secrets sign too until {max(until)})" if until else "")
    data = record.model_dump(mode="json", by_alias=True)
    counts = data.get("counts")
    tail = f" {counts['total'] - counts['pending']}/{counts['total']} done" if counts else ""
    if data.get("released") is not None:
        tail = f", released {data['released']} held deliveries"
    return f"{data.get('id') or data.get('url')} {data.get('status') or data.get('state')}{tail}"


def _runner(call: Call) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            with Client(args.api_key, base_url=args.api_url) as client:
                record = call(client, args)
        except (SightwireError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        records = record if isinstance(record, list) else [record]
        if args.json:
            print(json.dumps([r.model_dump(mode="json", by_alias=True) for r in records], indent=2)
                  if isinstance(record, list) else record.model_dump_json(by_alias=True, indent=2))
        else:
            print("\n".join(_summary(r) for r in records))
        return 0

    return run


def subcommands(commands: argparse._SubParsersAction, name: str, help_: str) -> argparse._SubParsersAction:
    """The actions of the command group ``name``, made on first use: ``secret`` has actions on the
    store (``show --org``, in cli.py) and over HTTP (``rotate``, here)."""
    group = commands.choices.get(name) or commands.add_parser(name, help=help_)
    made = [action for action in group._actions if isinstance(action, argparse._SubParsersAction)]
    return made[0] if made else group.add_subparsers(dest="action", required=True)


def _command(group: argparse._SubParsersAction, name: str, help_: str, call: Call) -> argparse.ArgumentParser:
    command = group.add_parser(name, help=help_)
    command.add_argument("--json", action="store_true", help="print the record as JSON")
    command.add_argument("--api-key", help="default: $SIGHTWIRE_API_KEY")
    command.add_argument("--api-url", help="default: $SIGHTWIRE_API_URL or http://127.0.0.1:8000")
    command.set_defaults(func=_runner(call))
    return command


def add_commands(commands: argparse._SubParsersAction) -> None:
    """``images submit/get/wait/cancel``, ``groups submit/status/cancel/retry``, ``deliveries list/retry``,
    ``endpoints show/enable``, ``secret rotate``."""
    images = subcommands(commands, "images", "submit and read images")
    submit = _command(images, "submit", "queue an image URL",
                      lambda c, a: c.submit_image(a.url, a.models, webhook_url=a.webhook_url))
    submit.add_argument("url")
    submit.add_argument("--models", nargs="+", required=True)
    submit.add_argument("--webhook-url")
    _command(images, "get", "an image's record", lambda c, a: c.get_image(a.id)).add_argument("id")
    wait = _command(images, "wait", "wait until the image is finished", lambda c, a: c.wait(a.id, timeout=a.timeout))
    wait.add_argument("id")
    wait.add_argument("--timeout", type=float, default=300.0)
    _command(images, "cancel", "stop an image's work not yet done (results so far are kept)",
             lambda c, a: c.cancel_image(a.id)).add_argument("id")

    groups = subcommands(commands, "groups", "submit and follow groups")
    gsubmit = _command(groups, "submit", "queue a group of image URLs",
                       lambda c, a: c.submit_group(a.urls, a.models, webhook_url=a.webhook_url))
    gsubmit.add_argument("urls", nargs="+")
    gsubmit.add_argument("--models", nargs="+", required=True)
    gsubmit.add_argument("--webhook-url")
    status = _command(groups, "status", "a group's record (counts, aggregates)", lambda c, a: c.get_group(a.id))
    status.add_argument("id")
    _command(groups, "cancel", "stop a group's work not yet done (results so far are kept)",
             lambda c, a: c.cancel_group(a.id)).add_argument("id")
    _command(groups, "retry", "run a finished group's failures again",
             lambda c, a: c.retry_group(a.id)).add_argument("id")

    deliveries = subcommands(commands, "deliveries", "webhook deliveries")
    listing = _command(deliveries, "list", "an image's or group's deliveries, newest first",
                       lambda c, a: list(c.deliveries(a.resource_id)))
    listing.add_argument("resource_id", help="img_… or grp_…")
    retry = _command(deliveries, "retry", "send a delivery again now, with the same webhook-id",
                     lambda c, a: c.retry_delivery(a.delivery_id))
    retry.add_argument("delivery_id", help="dlv_… (from `deliveries list`)")
    endpoints = subcommands(commands, "endpoints", "webhook endpoints")
    show = _command(endpoints, "show", "an endpoint's health (breaker state, failures, held deliveries)",
                    lambda c, a: c.endpoint_health(a.url))
    show.add_argument("url")
    enable = _command(endpoints, "enable", "re-enable an endpoint and release the deliveries it holds",
                      lambda c, a: c.enable_endpoint(a.url))
    enable.add_argument("url")

    secret = subcommands(commands, "secret", "webhook signing secrets")
    rotate = _command(secret, "rotate", "a new signing secret; the old one keeps signing for the grace period",
                      lambda c, a: c.rotate_webhook_secret(grace_seconds=a.grace_seconds))
    rotate.add_argument("--grace-seconds", type=float, help="how long the old secret keeps signing "
                        "(default: the server's SIGHTWIRE_WEBHOOK_SECRET_GRACE_S)")
