"""Supervision for long-lived loops: one bad job or one surprise never stops a loop for good.

Every long-lived task (the processor's intake, heartbeat and reclaimer, the bulk runner, the
notifier's loops) runs as ``supervise(name, step)``: ``step`` is one iteration, called again and
again. An exception it did not handle is logged with the loop's name and what it was working
on, and after a backoff (doubling up to a cap, reset by the next success) the loop goes on.
Errors the caller expects (``expected``, e.g. Redis being unreachable) are logged in one line
without a traceback. Cancelling the task stops the loop; a ``CancelledError`` that is not a
cancellation of this task (a cancelled inner call) is a failure like any other.

``working_on(job=..., image=...)`` marks what a step is doing: an exception leaving the block
carries it as a note (PEP 678), so the log line and traceback say which job failed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass

log = logging.getLogger("sightwire.supervise")


@dataclass(frozen=True)
class Backoff:
    """Seconds to wait after the n-th failure in a row: ``first``, doubling, at most ``cap``."""

    first: float = 0.1
    cap: float = 5.0

    def delay(self, failures: int) -> float:
        return min(self.cap, self.first * 2 ** max(0, failures - 1))


@contextmanager
def working_on(**context: object) -> Iterator[None]:
    """Attach ``context`` (e.g. ``job=..., org=...``) to any exception leaving the block."""
    try:
        yield
    except BaseException as exc:
        if not isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
            exc.add_note("while working on " + ", ".join(f"{k}={v}" for k, v in context.items()))
        raise


def _cancelled_here() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def supervise(
    name: str,
    step: Callable[[], Awaitable[object]],
    *,
    backoff: Backoff = Backoff(),
    expected: tuple[type[BaseException], ...] = (),
    logger: logging.Logger = log,
) -> None:
    """Call ``step()`` until this task is cancelled; see the module docstring."""
    failures = 0
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            if _cancelled_here():
                raise
            failures += 1
            logger.error("%s: an inner call was cancelled (failure %d in a row)", name, failures, exc_info=True)
        except expected as exc:
            failures += 1
            logger.warning("%s: %s: %s (failure %d in a row)", name, type(exc).__name__, exc, failures)
        except Exception:
            failures += 1
            logger.exception("%s failed (failure %d in a row); going on", name, failures)
        else:
            failures = 0
            continue
        await asyncio.sleep(backoff.delay(failures))


@asynccontextmanager
async def in_background(loop: Coroutine[object, object, None], name: str) -> AsyncIterator[None]:
    """Run ``loop`` as a task for the lifetime of the block (an app's lifespan), then cancel it
    and wait for it to end."""
    task = asyncio.create_task(loop, name=name)
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


async def stop_steps(name: str, steps: Iterable[Awaitable[object]], timeout_s: float = 10.0) -> None:
    """Await each step of a shutdown, at most ``timeout_s`` each: a step that awaits a reply that
    never comes is logged and left, so a stop always ends (a replica's, a test's)."""
    for step in steps:
        try:
            async with asyncio.timeout(timeout_s):
                await step
        except TimeoutError:
            log.warning("%s stop: a step took over %gs; going on", name, timeout_s)
