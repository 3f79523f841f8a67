"""The one Lua loader: script files read once, with key names and enum values filled in.

Each family of scripts (the delivery scripts, the fair job queue's) is a folder holding a shared
``lib.lua`` and one file per script. The Lua text names keys and values the Python way, and
they are filled in when the files are loaded, from the Python side of the contract, so Lua
never spells a key name or a state of its own:

- ``K.<name>(id)`` becomes the key the family's ``layout`` gives for ``<name>``: its text
  before and after the id, appended to the family's base expression (e.g. ``P``, the prefix);
- ``<Enum>.<MEMBER>`` becomes that member's value, for the enums the family shares.

Substituted in the text, they cost a call nothing at run time (a table of them would be built
on every call: Redis keeps no state between script runs). A name that does not resolve stops
the import. Comment lines and indentation are dropped: an EVAL sends (and Redis hashes) the
whole text on every call.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from hashlib import sha1
from pathlib import Path

_KEY_REF = re.compile(r"\bK\.(\w+)\(([^()]*)\)")
_SIMPLE = re.compile(r"[\w.\[\]]+")  # a name, a field or an index: no parentheses needed


@dataclass(frozen=True)
class LuaScript:
    name: str
    source: str
    sha: str


def lua_string(text: str) -> str:
    if not text.isascii() or any(c in text for c in "'\\\n"):
        raise ValueError(f"not a plain Lua string: {text!r}")
    return f"'{text}'"


def compact(source: str) -> str:
    """Without comment lines and indentation (what only a reader needs stays in the files)."""
    lines = (line.strip() for line in source.splitlines())
    return "\n".join(line for line in lines if line and not line.startswith("--")) + "\n"


class LuaLoader:
    """One family of scripts: ``directory`` (``lib.lua`` + ``<name>.lua``), the Lua expression
    keys are built on (``base``), the key ``layout`` (name → text before and after the id) and
    the enums its scripts may name."""

    def __init__(self, directory: Path, *, base: str, layout: Mapping[str, tuple[str, str]],
                 enums: Iterable[type[StrEnum]] = ()) -> None:
        self.directory = directory
        self._base = base
        self._layout = dict(layout)
        self._enums = {enum.__name__: enum for enum in enums}
        self._enum_ref = re.compile(r"\b(" + "|".join(self._enums) + r")\.(\w+)") if self._enums else None
        self._lib = (directory / "lib.lua").read_text()

    def _enum_value(self, match: re.Match[str]) -> str:
        return lua_string(self._enums[match[1]][match[2]].value)  # KeyError: no such member

    def _key(self, match: re.Match[str]) -> str:
        before, after = self._layout[match[1]]  # KeyError: no such key
        arg = match[2].strip()
        parts = [self._base, lua_string(before), arg if _SIMPLE.fullmatch(arg) else f"({arg})"]
        return "(" + " .. ".join([*parts, lua_string(after)] if after else parts) + ")"

    def compose(self, body: str) -> str:
        """A script's full text: the family's library, then ``body``, names filled in."""
        source = compact(self._lib + body)
        if self._enum_ref is not None:
            source = self._enum_ref.sub(self._enum_value, source)
        source = _KEY_REF.sub(self._key, source)
        if re.search(r"\bK\.\w+\(", source):
            raise ValueError("a K.<key>(...) call the loader cannot expand (its argument has parentheses?)")
        return source

    def script(self, name: str, body: str) -> LuaScript:
        """``body`` composed on the family's library, as a named script with its SHA."""
        source = self.compose(body)
        return LuaScript(name, source, sha1(source.encode()).hexdigest())

    def load(self, name: str) -> LuaScript:
        return self.script(name, (self.directory / f"{name}.lua").read_text())
