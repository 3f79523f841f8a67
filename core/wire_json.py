"""Bounds on the free-form JSON a client may send (metadata), so that what is accepted can always
be stored, read back and serialised again (issue 15, item 2).

Python's ``json`` reads more than JSON: ``NaN``, ``Infinity`` and ``1e400`` (which overflows to
infinity) become floats that the API would later write as ``null``; ``"\\ud800"`` becomes a
lone surrogate that cannot be encoded as UTF-8 at all; and nesting is limited only by the body
size, while the response serialiser gives up past ~250 levels. Each of these is refused here, at
validation, with the path of the offending value, and measured sizes are the UTF-8 bytes of the
compact JSON the API stores and sends, not Python's ASCII-escaped length.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Annotated, Any

from pydantic import AfterValidator

MAX_JSON_DEPTH = 32  # nesting of objects and arrays, the outermost counting as 1

log = logging.getLogger(__name__)


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _where(path: tuple[str | int, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def json_violation(value: Any, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Why ``value`` (as ``json.loads`` returns it) is not storable JSON, naming where; ``None``
    if it is. Iterative, so a value nested past the interpreter's recursion limit is judged too."""
    stack: list[tuple[Any, int, tuple[str | int, ...]]] = [(value, 0, ())]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, dict | list):
            if depth + 1 > max_depth:
                return f"{_where(path) or 'value'}: nested deeper than {max_depth} levels"
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                if isinstance(key, str) and not _is_text(key):
                    return f"{_where(path) or 'value'}: a key is not valid Unicode text (lone surrogate)"
                stack.append((child, depth + 1, (*path, key)))
        elif isinstance(item, float) and not math.isfinite(item):
            return f"{_where(path) or 'value'}: {item!r} is not a JSON number (NaN, Infinity, overflow)"
        elif isinstance(item, str) and not _is_text(item):
            return f"{_where(path) or 'value'}: not valid Unicode text (lone surrogate)"
    return None


def dumps(value: Any) -> str:
    """``value`` as the compact JSON the store keeps (text unescaped: stored as UTF-8)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def utf8_size(value: Any) -> int:
    """Bytes of ``value`` as the store keeps it and the API sends it (after validation)."""
    return len(dumps(value).encode())


def _checked(value: Any) -> Any:
    problem = json_violation(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _checked_text(value: str) -> str:
    if not _is_text(value):
        raise ValueError("not valid Unicode text (lone surrogate)")
    return value


# A request's free-form object: bounded depth, finite numbers, encodable text.
JsonObject = Annotated[dict[str, Any], AfterValidator(_checked)]
# A request's text field: encodable as UTF-8 (Redis and the response serialiser both need it).
Text = Annotated[str, AfterValidator(_checked_text)]


def stored_json(raw: str | None, what: str) -> Any:
    """A JSON value read back from the store, or ``None`` if it is not one the API can send.

    Values written before validation bounded them (a 300-deep object, a lone surrogate) would
    make every read of their record fail; they read as ``null`` and are logged instead."""
    try:
        value = json.loads(raw) if raw else None
    except (ValueError, RecursionError) as exc:
        log.warning("%s holds unreadable JSON (%s); it reads as null", what, type(exc).__name__)
        return None
    problem = json_violation(value)
    if problem is None:
        return value
    log.warning("%s holds JSON the API cannot send (%s); it reads as null", what, problem)
    return None
