"""The fair queue's Lua scripts, each prepended with ``lib.lua`` and registered once.

Self-contained on purpose: phase B moves these files onto the store's shared Lua loader.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript

LUA = Path(__file__).with_name("lua")
NAMES = ("enqueue", "claim", "renew", "ack", "release", "reclaim", "depth", "bury", "requeue")


@cache
def source(name: str) -> str:
    return (LUA / "lib.lua").read_text() + "\n" + (LUA / f"{name}.lua").read_text()


class Scripts:
    """``await scripts.run(name, keys, **args)``: EVALSHA with the named arguments as one JSON."""

    def __init__(self, redis: Redis) -> None:
        self._scripts: dict[str, AsyncScript] = {name: redis.register_script(source(name)) for name in NAMES}

    async def run(self, name: str, keys: list[str], **args: Any) -> Any:
        return await self._scripts[name](keys=keys, args=[json.dumps(args)])

    @staticmethod
    def queue(pipe: Pipeline, name: str, keys: list[str], **args: Any) -> None:
        """Inside a caller's MULTI: EVAL with the source (a NOSCRIPT there would fail only that
        command and commit the rest)."""
        pipe.eval(source(name), len(keys), *keys, json.dumps(args))
