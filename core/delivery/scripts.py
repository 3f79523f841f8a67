"""The delivery scripts: Lua files loaded once at import (``core.lua``), called with named arguments.

Every decision that changes durable delivery state runs as one Lua script, so it is atomic and
a notifier restart (or a second notifier) finds exactly the state the last decision left. Each
script is the shared ``lua/lib.lua`` plus its own file. The loader fills in the names:
``K.<name>(id)`` becomes the key ``core.keys.Keys.<name>(id)`` names (``core.keys.script_layout``,
built on ``P``, the base of the call's shard, ``Keys.base``); ``<Enum>.<MEMBER>`` that member's
value, for the enums both sides use (``DeliveryStatus``, ``EndpointState``, ``DisabledReason``,
``Outcome``, ``RetryResult``).

A call passes the two fixed keys (the ready index, the wake list) in ``KEYS`` and one JSON table
of named arguments in ``ARGV[1]`` (the shard's base is added to it here, as ``prefix``); only the enqueue script
also takes the new record's field/value pairs, raw, in ``ARGV[2..]``, so a body of up to the
payload cap is never JSON-escaped and parsed again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from core.delivery.outcomes import Outcome, RetryResult
from core.keys import Keys, script_layout
from core.lua import LuaLoader, LuaScript
from core.schemas import DeliveryStatus, DisabledReason, EndpointState

LUA_DIR = Path(__file__).with_name("lua")
_LOADER = LuaLoader(LUA_DIR, base="P", layout=script_layout(),
                    enums=(DeliveryStatus, EndpointState, DisabledReason, Outcome, RetryResult))
compose = _LOADER.compose


@dataclass(frozen=True)
class Call:
    """One call: the shard it runs in (every key it touches is there), its named arguments
    (``A`` in the script) and, raw after them, data it stores verbatim (``ARGV[2..]``)."""

    shard: int
    args: dict[str, Any]
    data: tuple[str, ...] = ()


_ADD = (LUA_DIR / "add.lua").read_text()  # add_delivery(), for every script that queues one


def with_delivery(name: str, body: str) -> LuaScript:
    """A script that may queue a delivery (``add_delivery()``): the library, ``add.lua``, then
    ``body``. The store's finalize is one, so an image's marks, its group's count and its
    webhook commit in one script."""
    return _LOADER.script(name, _ADD + body)


ENQUEUE = with_delivery("enqueue", (LUA_DIR / "enqueue.lua").read_text())
CLAIM = _LOADER.load("claim")
RECORD = _LOADER.load("record")
RETRY = _LOADER.load("retry")
SUPERSEDE = _LOADER.load("supersede")
ENABLE = _LOADER.load("enable")
ALL = (ENQUEUE, CLAIM, RECORD, RETRY, SUPERSEDE, ENABLE)


class Scripts:
    """The delivery scripts bound to one Redis client and key layout."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._loaders = {script.name: redis.register_script(script.source) for script in ALL}

    def fixed_keys(self, call: Call) -> tuple[str, str]:
        """The two keys every call passes first: its shard's ready index and wake list."""
        return self._keys.outbox(call.shard), self._keys.outbox_wake(call.shard)

    def _argv(self, call: Call) -> list[str]:
        base = self._keys.base(call.shard)
        return [json.dumps({"prefix": base, **call.args}, separators=(",", ":")), *call.data]

    async def run(self, script: LuaScript, call: Call, keys: Sequence[str] = ()) -> Any:
        """Run ``script`` now (EVALSHA, loading it first if Redis does not know it); ``keys``
        are the script's own, after the two fixed ones (a ``with_delivery`` script's)."""
        loader = self._loaders.get(script.name)
        if loader is None:
            loader = self._loaders[script.name] = self._redis.register_script(script.source)
        return await loader(keys=[*self.fixed_keys(call), *keys], args=self._argv(call))

    def queue(self, pipe: Pipeline, script: LuaScript, call: Call, keys: Sequence[str] = ()) -> None:
        """Queue ``script`` in the caller's transaction as EVAL with its text: Redis runs its
        cached compilation, and, unlike EVALSHA, it can never fail with NOSCRIPT inside the EXEC
        (where the rest of the transaction would still commit), so no SCRIPT EXISTS round trip
        is needed first."""
        fixed = self.fixed_keys(call)
        pipe.eval(script.source, len(fixed) + len(keys), *fixed, *keys, *self._argv(call))

    async def run_many(self, script: LuaScript, calls: Sequence[Call]) -> list[Any]:
        """Run ``script`` once per call in one round trip, each call its own atomic script; a
        script's error is returned in its place, a connection error raises.

        EVALSHA without the pipeline's SCRIPT EXISTS round trip: a script Redis does not know
        (after a restart) answers NOSCRIPT without running, and is run again through ``run``,
        which loads it."""
        argvs = [self._argv(call) for call in calls]
        async with self._redis.pipeline(transaction=False) as pipe:
            for call, argv in zip(calls, argvs, strict=True):
                fixed = self.fixed_keys(call)
                # The command, not ``pipe.evalsha``: redis-py's cluster pipeline blocks that method
                # (for the NOSCRIPT handled below) while it routes the command by its keys.
                pipe.execute_command("EVALSHA", script.sha, len(fixed), *fixed, *argv)
            replies = await pipe.execute(raise_on_error=False)
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                replies[i] = await self._loaders[script.name](keys=list(self.fixed_keys(calls[i])), args=argvs[i])
        return replies
