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
from typing import Any

from core.settings import Settings
from core.store import Store
from serve_app.cli_api import add_commands as add_api_commands
from sightwire_client.listen import add_arguments as add_listen_arguments


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "models", None):
        overrides["models"] = args.models
    return Settings.from_env(**overrides)


def _store_settings() -> Settings:
    """Settings whose ``redis_url`` points at the Redis to use: ``REDIS_URL`` or the local serve's."""
    from serve_app.stack import runtime_file

    settings = Settings.from_env()
    if os.environ.get("REDIS_URL") or os.environ.get("SIGHTWIRE_REDIS_URL"):
        return settings
    path = runtime_file(settings)
    if not path.exists():
        sys.exit("error: REDIS_URL is not set and no `sightwire serve` is running on this machine")
    return settings.model_copy(update={"redis_url": json.loads(path.read_text())["redis_url"]})


def _with_store(action: Callable[[Store], Awaitable[str]]) -> str:
    async def run() -> str:
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
    try:
        stopping.wait()
    finally:
        print("stopping ...", flush=True)
        stack.stop()
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    print(f"API key for org {args.org} (shown once; stored hashed):")
    print(_with_store(lambda store: store.accounts.create_api_key(args.org)))
    return 0


def cmd_secret_show(args: argparse.Namespace) -> int:
    async def newest(store: Store) -> str:
        return (await store.accounts.webhook_secrets(args.org))[0]

    print(_with_store(newest))
    return 0


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

    secret = commands.add_parser("secret", help="webhook signing secrets").add_subparsers(
        dest="action", required=True
    )
    show = secret.add_parser("show", help="print the org's whsec_ signing secret")
    show.add_argument("--org", required=True)
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

    add_api_commands(commands)

    demo = commands.add_parser("demo", help="end-to-end demo with tiny models, offline")
    demo.add_argument("--port", type=int, default=0, help="API port (default: a free one)")
    demo.set_defaults(func=cmd_demo)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
