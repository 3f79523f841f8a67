"""Sightwire's own log lines in every Ray worker of ``sightwire serve``, so they reach the terminal.

A Serve replica or actor process has no handler on the root logger: without this hook the
processor's and the models' INFO lines (and every line without a level of WARNING or more) are
dropped. ``LocalStack(show_logs=True)`` names :func:`configure` as the job's
``worker_process_setup_hook`` and streams worker output to the driver (``log_to_driver``), so each
line arrives prefixed with the process it came from, e.g. ``(ServeReplica:sightwire:JobProcessor
pid=…)``. Libraries stay at WARNING; Ray keeps every worker's full output in the session's log
folder too.
"""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
HOOK = f"{__name__}.configure"


def configure() -> None:
    """Root at WARNING with a stderr handler; ``sightwire.*`` at INFO (idempotent)."""
    logging.basicConfig(level=logging.WARNING, format=FORMAT)
    logging.getLogger("sightwire").setLevel(logging.INFO)
