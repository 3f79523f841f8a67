"""The fair queue's Lua scripts (``lua/``), loaded once at import by the shared loader (``core.lua``).

The scripts name their per-org and per-job keys ``K.org_queue(org)`` and ``K.job(id)``; the loader
fills them in from ``core.keys.QueueKeys`` (built on ``A.base``, the queue's tagged prefix), so
Lua never spells a key. The queue's fixed keys (ring, leases, wake, …) travel in ``KEYS``; the
named arguments as one JSON table in ``ARGV[1]``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript

from core.keys import queue_script_layout
from core.lua import LuaLoader, LuaScript

LUA_DIR = Path(__file__).with_name("lua")
LOADER = LuaLoader(LUA_DIR, base="A.base", layout=queue_script_layout())
NAMES = ("enqueue", "claim", "renew", "ack", "release", "reclaim", "depth", "bury", "requeue")
SCRIPTS: dict[str, LuaScript] = {name: LOADER.load(name) for name in NAMES}


def with_queue(name: str, body: str) -> LuaScript:
    """A script of another family composed on the queue's library (``lib.lua``), so a record and
    its job are written in one script: ``enqueue(...)`` and the ``K.job`` / ``K.org_queue`` keys
    are there, built on ``A.base``, the queue's key prefix."""
    return LOADER.script(name, body)


class Scripts:
    """``await scripts.run(name, keys, **args)``: EVALSHA with the named arguments as one JSON."""

    def __init__(self, redis: Redis) -> None:
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(script.source) for name, script in SCRIPTS.items()
        }

    async def run(self, name: str, keys: list[str], **args: Any) -> Any:
        return await self._scripts[name](keys=keys, args=[json.dumps(args)])

    @staticmethod
    def queue(pipe: Pipeline, name: str, keys: list[str], **args: Any) -> None:
        """Inside a caller's MULTI: EVAL with the source (a NOSCRIPT there would fail only that
        command and commit the rest)."""
        pipe.eval(SCRIPTS[name].source, len(keys), *keys, json.dumps(args))
