"""A submission's ``deadline``: when the work it asks for is canceled if not done.

Sent as seconds from now (like Replicate's ``Cancel-After``) or as an RFC 3339 time; read as the
moment it falls, so a relative deadline counts from the request's arrival.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

MAX_DEADLINE_S = 7 * 24 * 3600  # a deadline further out than a week is a client's mistake


def _deadline(value: Any) -> datetime:
    """A submission's ``deadline`` as the moment it falls: seconds from now (like Replicate's
    ``Cancel-After``) or an RFC 3339 time with its offset; in the future, at most a week out."""
    now = datetime.now(UTC)
    if isinstance(value, bool):
        raise ValueError("seconds from now or an RFC 3339 time")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value <= 0:
            raise ValueError("seconds from now must be a finite number above 0")
        if value > MAX_DEADLINE_S:
            raise ValueError(f"at most {MAX_DEADLINE_S} seconds (a week) from now")
        return now + timedelta(seconds=value)
    if isinstance(value, datetime):
        at = value
    elif isinstance(value, str):
        try:
            at = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("not an RFC 3339 time (e.g. 2026-12-02T05:00:00Z)") from None
    else:
        raise ValueError("seconds from now or an RFC 3339 time")
    if at.tzinfo is None:
        raise ValueError("an RFC 3339 time needs its offset (Z or +hh:mm)")
    if at <= now:
        raise ValueError("this time has already passed")
    if at - now > timedelta(seconds=MAX_DEADLINE_S):
        raise ValueError(f"at most {MAX_DEADLINE_S} seconds (a week) from now")
    return at.astimezone(UTC)


# Resolved when the request is read, so a relative deadline counts from its arrival.
Deadline = Annotated[
    datetime, BeforeValidator(_deadline),
    WithJsonSchema({"oneOf": [{"type": "number", "exclusiveMinimum": 0, "maximum": MAX_DEADLINE_S},
                              {"type": "string", "format": "date-time"}],
                    "description": "seconds from now, or an RFC 3339 time; work not done by then "
                                   "is canceled with error code `deadline`"}),
]
