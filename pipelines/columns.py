"""The bulk pipeline's column names, in one place: what a result row has, and what only lives
between stages."""

from __future__ import annotations

from collections.abc import Iterable

# Internal columns: present between stages only.
OK = "_ok"
PIXELS = "_pixels"
PIXEL_HEIGHT = "_ph"
PIXEL_WIDTH = "_pw"
ROW = "_row"  # input position, when the source has one (lists, frames, manifests): restores order
WANTED = "_models"  # optional JSON list per row: run only these models on it (store-backed runs)
INTERNAL = (OK, PIXELS, PIXEL_HEIGHT, PIXEL_WIDTH, WANTED)
# ``_state:<model>``: the model's ``ModelStatus`` on each row (null where it did not run), beside
# its result JSON, so the row's status is derived without parsing the results again.
STATE_PREFIX = "_state:"

# Public columns every output row has, besides one column per model.
URL, ID = "url", "id"
STATUS, WIDTH, HEIGHT, ERROR_CODE, ERROR_MESSAGE = "status", "width", "height", "error_code", "error_message"
OUTPUT_COLUMNS = (URL, ID, STATUS, WIDTH, HEIGHT, ERROR_CODE, ERROR_MESSAGE)
RESERVED = frozenset({*OUTPUT_COLUMNS, OK, PIXELS, PIXEL_HEIGHT, PIXEL_WIDTH}) - {URL, ID}
NODE_PREFIX = "node:"  # with trace_nodes: the Ray node that ran each model on each row


def state_column(model: str) -> str:
    return STATE_PREFIX + model


def reserved_in(names: Iterable[str]) -> list[str]:
    """The names among ``names`` that the pipeline's own columns take."""
    return sorted(name for name in names if name in RESERVED or name.startswith(STATE_PREFIX))
