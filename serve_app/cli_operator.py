"""``sightwire orgs weight`` and ``sightwire operator-keys``: what an operator decides for orgs.

Self-contained (one ``add_commands`` call wires it into the CLI), against the store like
``keys`` and ``dead-letters``: whoever runs it holds the Redis, so it needs no operator key.
``orgs weight ORG [N]`` reads or sets the org's weight (``default``: back to 1) exactly as
``PUT /v1/admin/orgs/{org}/weight`` does; ``operator-keys`` mints, lists and revokes the keys
of those admin routes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable

from core.store import Store

Runner = Callable[[Callable[[Store], Awaitable[str]]], str]


class CommandError(Exception):
    """A refused command: its message goes to stderr and the exit status is 1."""


def _weight(value: str | None) -> float | None:
    if value is None or value == "default":
        return None
    try:
        return float(value)
    except ValueError:
        raise CommandError(f"a weight is a number or `default`, not {value!r}") from None


async def org_weight(store: Store, org: str, value: str | None, as_json: bool) -> str:
    """The org's weight, after setting it when ``value`` is given."""
    if not await store.accounts.org_exists(org):
        raise CommandError(f"no org {org} (create one with `sightwire keys create --org {org}`)")
    if value is None:
        weight = await store.weights.get(org)
    else:
        try:
            weight = await store.weights.set(org, _weight(value))
        except ValueError as exc:
            raise CommandError(str(exc)) from None
    return json.dumps({"org": org, "weight": weight}) if as_json else f"{org} weight {weight:g}"


async def create_key(store: Store) -> str:
    return "operator key (shown once; stored hashed):\n" + await store.operators.create_key()


async def list_keys(store: Store) -> str:
    return "\n".join(f"{k.id}  created {k.created_at}" for k in await store.operators.list_keys()) or "no operator keys"


async def revoke_key(store: Store, key_id: str) -> str:
    if not await store.operators.revoke_key(key_id):
        raise CommandError(f"no operator key {key_id}")
    return f"revoked {key_id}"


def _command(with_store: Runner, action: Callable[[argparse.Namespace], Callable[[Store], Awaitable[str]]]
             ) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            print(with_store(action(args)))
        except CommandError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0

    return run


def add_commands(commands: argparse._SubParsersAction, with_store: Runner) -> None:
    """The ``orgs`` and ``operator-keys`` command groups; ``with_store`` runs an action."""
    orgs = commands.add_parser("orgs", help="what an operator sets per org").add_subparsers(
        dest="action", required=True)
    weight = orgs.add_parser("weight", help="show or set an org's share of the engine (default 1)")
    weight.add_argument("org")
    weight.add_argument("weight", nargs="?", help="a number from 1/64 to 64, or default")
    weight.add_argument("--json", action="store_true", help="print {org, weight} as JSON")
    weight.set_defaults(func=_command(with_store, lambda args: lambda store: org_weight(
        store, args.org, args.weight, args.json)))

    keys = commands.add_parser("operator-keys", help="keys of the admin routes").add_subparsers(
        dest="action", required=True)
    keys.add_parser("create", help="mint an operator key; the key is the last line printed").set_defaults(
        func=_command(with_store, lambda args: create_key))
    keys.add_parser("list", help="operator keys (ids only)").set_defaults(
        func=_command(with_store, lambda args: list_keys))
    revoke = keys.add_parser("revoke", help="revoke an operator key by its id")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=_command(with_store, lambda args: lambda store: revoke_key(store, args.key_id)))
