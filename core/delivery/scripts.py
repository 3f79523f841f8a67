"""The delivery scripts: Lua files loaded once at import, called with named arguments.

Every decision that changes durable delivery state runs as one Lua script, so it is atomic and
a notifier restart (or a second notifier) finds exactly the state the last decision left. Each
script is the shared ``lua/lib.lua`` plus its own file.

The Lua text names keys and values the Python way, and they are filled in when the files are
loaded, from the Python side of the contract, so Lua never spells a key name, a state or an
outcome of its own:

- ``K.<name>(id)`` becomes the key ``core.keys.Keys.<name>(id)`` names (``core.keys.script_layout``);
- ``<Enum>.<MEMBER>`` becomes that member's value, for the enums both sides use
  (``DeliveryStatus``, ``EndpointState``, ``DisabledReason``, ``Outcome``, ``RetryResult``).

Substituted in the text, they cost a call nothing at run time (a table of them would be built
on every call: Redis keeps no state between script runs). A name that does not resolve stops
the import.

A call passes the two fixed keys (the ready index, the wake list) in ``KEYS`` and one JSON table
of named arguments in ``ARGV[1]`` (the key prefix is added to it here); only the enqueue script
also takes the new record's field/value pairs, raw, in ``ARGV[2..]``, so a body of up to the
payload cap is never JSON-escaped and parsed again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from hashlib import sha1
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from core.delivery.outcomes import Outcome, RetryResult
from core.keys import Keys, script_layout
from core.schemas import DeliveryStatus, DisabledReason, EndpointState

LUA_DIR = Path(__file__).with_name("lua")
SHARED_ENUMS: dict[str, type[StrEnum]] = {
    enum.__name__: enum for enum in (DeliveryStatus, EndpointState, DisabledReason, Outcome, RetryResult)
}
_ENUM_REF = re.compile(r"\b(" + "|".join(SHARED_ENUMS) + r")\.(\w+)")
_KEY_REF = re.compile(r"\bK\.(\w+)\(([^()]*)\)")
_SIMPLE = re.compile(r"[\w.\[\]]+")  # a name, a field or an index: no parentheses needed


def _lua_string(text: str) -> str:
    if not text.isascii() or any(c in text for c in "'\\\n"):
        raise ValueError(f"not a plain Lua string: {text!r}")
    return f"'{text}'"


def _enum_value(match: re.Match[str]) -> str:
    return _lua_string(SHARED_ENUMS[match[1]][match[2]].value)  # KeyError: no such member


def _key(match: re.Match[str]) -> str:
    before, after = _LAYOUT[match[1]]  # KeyError: no such key
    arg = match[2].strip()
    parts = ["P", _lua_string(before), arg if _SIMPLE.fullmatch(arg) else f"({arg})"]
    return "(" + " .. ".join([*parts, _lua_string(after)] if after else parts) + ")"


def _compact(source: str) -> str:
    """Without comment lines and indentation: an EVAL sends (and Redis hashes) the whole text on
    every call, so what only a reader needs stays in the files."""
    lines = (line.strip() for line in source.splitlines())
    return "\n".join(line for line in lines if line and not line.startswith("--")) + "\n"


def compose(body: str) -> str:
    """A script's full text: the shared library, then ``body``, names filled in."""
    source = _KEY_REF.sub(_key, _ENUM_REF.sub(_enum_value, _compact(_LIB + body)))
    if re.search(r"\bK\.\w+\(", source):
        raise ValueError("a K.<key>(...) call the loader cannot expand (its argument has parentheses?)")
    return source


@dataclass(frozen=True)
class LuaScript:
    name: str
    source: str
    sha: str


@dataclass(frozen=True)
class Call:
    """One call's named arguments (``A`` in the script) and, raw after them, data it stores
    verbatim (``ARGV[2..]``)."""

    args: dict[str, Any]
    data: tuple[str, ...] = ()


def _load(name: str) -> LuaScript:
    source = compose((LUA_DIR / f"{name}.lua").read_text())
    return LuaScript(name, source, sha1(source.encode()).hexdigest())


_LAYOUT = script_layout()
_LIB = (LUA_DIR / "lib.lua").read_text()
ENQUEUE = _load("enqueue")
CLAIM = _load("claim")
RECORD = _load("record")
RETRY = _load("retry")
SUPERSEDE = _load("supersede")
ENABLE = _load("enable")
ALL = (ENQUEUE, CLAIM, RECORD, RETRY, SUPERSEDE, ENABLE)


class Scripts:
    """The delivery scripts bound to one Redis client and key prefix."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._prefix = keys.prefix
        self.keys = (keys.outbox, keys.outbox_wake)
        self._loaders = {script.name: redis.register_script(script.source) for script in ALL}

    def _argv(self, call: Call) -> list[str]:
        return [json.dumps({"prefix": self._prefix, **call.args}, separators=(",", ":")), *call.data]

    async def run(self, script: LuaScript, call: Call) -> Any:
        """Run ``script`` now (EVALSHA, loading it first if Redis does not know it)."""
        return await self._loaders[script.name](keys=list(self.keys), args=self._argv(call))

    def queue(self, pipe: Pipeline, script: LuaScript, call: Call) -> None:
        """Queue ``script`` in the caller's transaction as EVAL with its text: Redis runs its
        cached compilation, and, unlike EVALSHA, it can never fail with NOSCRIPT inside the EXEC
        (where the rest of the transaction would still commit), so no SCRIPT EXISTS round trip
        is needed first."""
        pipe.eval(script.source, len(self.keys), *self.keys, *self._argv(call))

    async def run_many(self, script: LuaScript, calls: Sequence[Call]) -> list[Any]:
        """Run ``script`` once per call in one round trip, each call its own atomic script; a
        script's error is returned in its place, a connection error raises.

        EVALSHA without the pipeline's SCRIPT EXISTS round trip: a script Redis does not know
        (after a restart) answers NOSCRIPT without running, and is run again through ``run``,
        which loads it."""
        argvs = [self._argv(call) for call in calls]
        async with self._redis.pipeline(transaction=False) as pipe:
            for argv in argvs:
                pipe.evalsha(script.sha, len(self.keys), *self.keys, *argv)
            replies = await pipe.execute(raise_on_error=False)
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                replies[i] = await self._loaders[script.name](keys=list(self.keys), args=argvs[i])
        return replies
