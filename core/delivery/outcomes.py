"""What the delivery scripts answer, as enums both sides share: the scripts are given these
values (``core.delivery.scripts`` writes them into the Lua it loads) and Python maps the answer
back with the enum."""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    """What recording an attempt (or a claim) did to a delivery; also the metrics label."""

    DELIVERED = "delivered"
    RETRYING = "retrying"  # failed; due again on the retry schedule
    HELD = "held"  # failed, and the endpoint's breaker holds it (open or disabled)
    FAILED = "failed"  # the schedule is used up
    SUPERSEDED = "superseded"  # a newer update of the resource replaced it
    STALE = "stale"  # not applied: the delivery changed since it was claimed (logged only)
    MISSING = "missing"  # its record is gone


class RetryResult(StrEnum):
    """The answer to a manual retry: ``ok``, or why it was refused."""

    OK = "ok"
    SUPERSEDED = "superseded"
    IN_FLIGHT = "in_flight"
    DISABLED = "disabled"
    MISSING = "missing"
