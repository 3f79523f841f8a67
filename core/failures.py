"""The one exception type for failures that belong to a single image, model run or delivery."""

from __future__ import annotations

from core.schemas import ErrorCode, ErrorInfo


class Failure(Exception):
    """A failure with a stable code: it fails one unit of work and nothing else."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def info(self) -> ErrorInfo:
        return ErrorInfo(code=self.code, message=self.message)
