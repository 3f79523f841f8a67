"""Where a layer that must read a request body more than once keeps it.

The Idempotency-Key middleware (to fingerprint, then replay) and the group routes (to check,
then write) each read a body twice and must not hold it whole: a group's may be 32 MiB. A spool
keeps ``SPOOL_IN_MEMORY`` bytes in memory, then moves to a temporary file, deleted on close.
"""

from __future__ import annotations

import tempfile
from typing import IO

SPOOL_IN_MEMORY = 256 * 1024


def body_spool() -> IO[bytes]:
    return tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
