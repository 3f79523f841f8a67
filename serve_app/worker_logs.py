"""Sightwire's own log lines in every Ray worker of ``sightwire serve``, so they reach the terminal.

A Serve replica or actor process has no handler on the root logger: without this hook the
processor's and the models' INFO lines (and every line without a level of WARNING or more) are
dropped. ``LocalStack(show_logs=True)`` names :func:`configure` as the job's
``worker_process_setup_hook`` and streams worker output to the driver (``log_to_driver``), so each
line arrives prefixed with the process it came from, e.g. ``(ServeReplica:sightwire:JobProcessor
pid=…)``. Libraries stay at WARNING; Ray keeps every worker's full output in the session's log
folder too.

With ``SIGHTWIRE_LOG_FORMAT=json`` (what ``LocalStack`` passes to the workers) each line is one
JSON object (:class:`JsonFormatter`): the record's ``extra=`` fields (``org``, ``image_id``,
``group_id``, ``job``) and, inside a Serve request, Serve's ``request_id`` (the response's
``X-Request-Id``), ``route`` and ``application``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from core.settings import LogFormat

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
HOOK = f"{__name__}.configure"
FORMAT_VARIABLE = "SIGHTWIRE_LOG_FORMAT"
# What every LogRecord has: anything else on a record came from ``extra=``.
STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


def serve_request() -> dict[str, str]:
    """The Serve request being handled in this task, if any (empty outside a replica)."""
    try:
        from ray.serve.context import _get_serve_request_context
    except ImportError:
        return {}
    request = _get_serve_request_context()
    found = {"request_id": request.request_id, "route": request.route, "application": request.app_name}
    return {key: value for key, value in found.items() if value}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the Serve request, the extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record), "level": record.levelname, "logger": record.name,
            "message": record.getMessage(), **serve_request(),
        }
        entry.update((key, value) for key, value in record.__dict__.items() if key not in STANDARD)
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure() -> None:
    """Root at WARNING with a stderr handler (text or JSON); ``sightwire.*`` at INFO (idempotent)."""
    logging.basicConfig(level=logging.WARNING, format=FORMAT)
    if os.environ.get(FORMAT_VARIABLE) == LogFormat.JSON:
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    logging.getLogger("sightwire").setLevel(logging.INFO)
