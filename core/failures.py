"""Failures that belong to a single image, model run or delivery, and how they are written down.

A ``Failure`` carries a stable code; ``describe`` turns any other exception into a bounded
message; ``failed_result`` is a model's failed outcome on one image. The processor, the bulk
pipeline and the group runner all write failures through these, so a failure reads the same
whichever path produced it.
"""

from __future__ import annotations

from core.schemas import ErrorCode, ErrorInfo, ModelResult, ModelStatus, utcnow

MAX_MESSAGE_CHARS = 500  # a failure message as stored and sent
MAX_REASON_CHARS = 200  # an exception's text inside an image's fetch or decode failure


class Failure(Exception):
    """A failure with a stable code: it fails one unit of work and nothing else."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def info(self) -> ErrorInfo:
        return ErrorInfo(code=self.code, message=self.message)


def describe(exc: BaseException, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``"<ExceptionType>: <text>"``, at most ``limit`` characters."""
    return f"{type(exc).__name__}: {str(exc) or 'no detail'}"[:limit]


def failed_result(code: ErrorCode, message: str) -> ModelResult:
    """A model's failed outcome on one image, finished now."""
    error = ErrorInfo(code=code, message=message[:MAX_MESSAGE_CHARS])
    return ModelResult(status=ModelStatus.FAILED, error=error, completed_at=utcnow())
