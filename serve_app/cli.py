"""The ``sightwire`` command line.

Every command honours ``REDIS_URL``; when it is unset, commands other than ``serve`` use the
Redis of the ``sightwire serve`` running on this machine (recorded in its runtime file).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from core.settings import Settings
from core.store import Store
from core.store.accounts import KeyInfo, key_id_of
from core.tokens import hash_api_key
from serve_app.cli_api import add_commands as add_api_commands
from serve_app.cli_api import subcommands as api_subcommands
from serve_app.cli_bulk import add_commands as add_bulk_commands
from serve_app.cli_operator import add_commands as add_operator_commands
from serve_app.dead_letters import add_commands as add_dead_letter_commands
from serve_app.local import runtime_file
from serve_app.render import add_commands as add_render_commands
from sightwire_client.listen import add_arguments as add_listen_arguments

T = TypeVar("T")


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "models", None):
        overrides["models"] = args.models
    return Settings.from_env(**overrides)


def _store_settings() -> Settings:
    """Settings whose ``redis_url`` points at the Redis to use: ``REDIS_URL`` or the local serve's."""
    settings = Settings.from_env()
    if os.environ.get("REDIS_URL") or os.environ.get("SIGHTWIRE_REDIS_URL"):
        return settings
    path = runtime_file(settings)
    if not path.exists():
        sys.exit("error: REDIS_URL is not set and no `sightwire serve` is running on this machine")
    return settings.model_copy(update={"redis_url": json.loads(path.read_text())["redis_url"]})


def _with_store(action: Callable[[Store], Awaitable[T]]) -> T:
    async def run() -> T:
        store = Store.from_settings(_store_settings())
        try:
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(run())


def cmd_serve(args: argparse.Namespace) -> int:
    from serve_app.stack import LocalStack

    settings = _settings(args)
    embedded = not (os.environ.get("REDIS_URL") or os.environ.get("SIGHTWIRE_REDIS_URL"))
    stack = LocalStack(settings, host=args.host, port=args.port, embedded_redis=embedded, show_logs=True)
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    print(f"starting Sightwire (models: {settings.models}) ...", flush=True)
    stack.start()
    print(f"Sightwire ready on {stack.url}  (REDIS_URL={stack.settings.redis_url})", flush=True)
    if stack.logs_dir is not None:
        serve_logs = stack.logs_dir / "serve"
        print(f"logs: here, and every process's in {stack.logs_dir} (Serve's in {serve_logs})", flush=True)
        print(f"metrics: {stack.metrics_url} (Prometheus text; docs/operations.md#metrics)", flush=True)
    try:
        stopping.wait()
    finally:
        print("stopping ...", flush=True)
        stack.stop()
    return 0


def _emit(args: argparse.Namespace, text: str, record: object) -> int:
    """Print ``text``, or ``record`` as JSON with ``--json`` (for scripts, as the HTTP commands do)."""
    print(json.dumps(record, indent=2) if args.json else text)
    return 0


def _key_record(key: KeyInfo) -> dict[str, str]:
    return {"id": key.id, "org": key.org, "createdAt": key.created_at}


def cmd_keys_create(args: argparse.Namespace) -> int:
    key = _with_store(lambda store: store.accounts.create_api_key(args.org))
    record = {"id": key_id_of(hash_api_key(key)), "org": args.org, "key": key}
    return _emit(args, f"API key for org {args.org} (shown once; stored hashed):\n{key}", record)


def cmd_keys_list(args: argparse.Namespace) -> int:
    """``sightwire keys list --org ORG``: one line per live key (id, created), never the key."""
    keys = _with_store(lambda store: store.accounts.list_keys(args.org))
    text = "\n".join(f"{k.id}  created {k.created_at}" for k in keys) or f"org {args.org} has no keys"
    return _emit(args, text, [_key_record(k) for k in keys])


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    """``sightwire keys revoke KEY_ID``: the key's next request is a 401."""
    revoked = _with_store(lambda store: store.accounts.revoke_key(args.key_id))
    if revoked is None:
        sys.exit(f"error: no key {args.key_id}")
    return _emit(args, f"revoked {revoked.id} (org {revoked.org})", _key_record(revoked) | {"revoked": True})


def cmd_keys_limits(args: argparse.Namespace) -> int:
    """``sightwire keys limits --org ORG [--requests-per-s N] [--images-per-min N]``: the org's
    rate limits per key (0: unlimited; ``default``: the deployment's, ``null`` in JSON)."""
    from core.store.ratelimit import LimitKind

    def quota(value: str | None) -> float | None:
        return None if value in (None, "default") else float(value)

    given = {LimitKind.REQUESTS: args.requests_per_s, LimitKind.IMAGES: args.images_per_min}

    async def configure(store: Store) -> dict[str, str]:
        await store.limits.configure(args.org, {k: quota(v) for k, v in given.items() if v is not None})
        return await store.accounts.settings(args.org)

    own = _with_store(configure)
    text = "  ".join(f"{k.org_field}={own.get(k.org_field, 'default')}" for k in LimitKind)
    return _emit(args, text, {"org": args.org} | {k.org_field: quota(own.get(k.org_field)) for k in LimitKind})


def cmd_secret_show(args: argparse.Namespace) -> int:
    async def newest(store: Store) -> str:
        if not await store.accounts.org_exists(args.org):
            return ""
        return (await store.accounts.webhook_secrets(args.org))[0]

    secret = _with_store(newest)
    if not secret:
        sys.exit(f"error: no org {args.org} (create one with `sightwire keys create --org {args.org}`)")
    return _emit(args, secret, {"org": args.org, "secret": secret})


def cmd_models_make_tiny(args: argparse.Namespace) -> int:
    from models.tiny import build_local_profile

    root = build_local_profile(Path(args.dir), args.profile)
    print(f"{args.profile} models (random weights) built in {root}")
    return 0


def cmd_listen(args: argparse.Namespace) -> int:
    from sightwire_client.listen import options_from, run

    return run(options_from(args))


def cmd_demo(args: argparse.Namespace) -> int:
    from serve_app.demo import run_demo

    return run_demo(port=args.port)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="sightwire", description=__doc__.splitlines()[0])
    commands = root.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run Ray, Redis and the API on this machine")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--models", help="tiny | pretrained | PATH to a registry YAML (default: tiny)")
    serve.set_defaults(func=cmd_serve)

    keys = commands.add_parser("keys", help="API keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="create an API key; the key is the last line printed")
    create.add_argument("--org", required=True)
    create.set_defaults(func=cmd_keys_create)
    listing = keys.add_parser("list", help="list an org's API keys (ids only)")
    listing.add_argument("--org", required=True)
    listing.set_defaults(func=cmd_keys_list)
    revoke = keys.add_parser("revoke", help="revoke an API key by its id (from `keys list`)")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=cmd_keys_revoke)
    limits = keys.add_parser("limits", help="show or set an org's rate limits per key (0: unlimited)")
    limits.add_argument("--org", required=True)
    limits.add_argument("--requests-per-s", help="a number, 0 (unlimited) or default")
    limits.add_argument("--images-per-min", help="a number, 0 (unlimited) or default")
    limits.set_defaults(func=cmd_keys_limits)
    for command in (create, listing, revoke, limits):
        command.add_argument("--json", action="store_true", help="print the record as JSON")

    secret = api_subcommands(commands, "secret", "webhook signing secrets")
    show = secret.add_parser("show", help="print the org's whsec_ signing secret")
    show.add_argument("--org", required=True)
    show.add_argument("--json", action="store_true", help="print the record as JSON")
    show.set_defaults(func=cmd_secret_show)

    models = commands.add_parser("models", help="model profiles").add_subparsers(dest="action", required=True)
    tiny = models.add_parser("make-tiny", help="build the tiny profile (random weights) into DIR")
    tiny.add_argument("dir")
    tiny.add_argument("--profile", choices=("tiny", "bench"), default="tiny",
                      help="tiny (tests, demo) or bench (mid-size shapes for benchmarks)")
    tiny.set_defaults(func=cmd_models_make_tiny)

    listen = commands.add_parser(
        "listen", help="a local receiver that verifies and prints your webhooks (and can forward them)"
    )
    add_listen_arguments(listen)
    listen.set_defaults(func=cmd_listen)

    add_dead_letter_commands(commands, _with_store)
    add_operator_commands(commands, _with_store)
    add_api_commands(commands)
    add_render_commands(commands)
    add_bulk_commands(commands)

    demo = commands.add_parser("demo", help="end-to-end demo with tiny models, offline")
    demo.add_argument("--port", type=int, default=0, help="API port (default: a free one)")
    demo.set_defaults(func=cmd_demo)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
