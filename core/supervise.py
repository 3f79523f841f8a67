"""Supervision for long-lived loops: one bad job or one surprise never stops a loop for good.

Every long-lived task (the processor's intake, heartbeat and reclaimer, the bulk runner, the
notifier's loops) runs as ``supervise(name, step)``: ``step`` is one iteration, called again and
again. An exception it did not handle is logged with the loop's name and what it was working
on, and after a backoff (doubling up to a cap, reset by the next success) the loop goes on.
Errors the caller expects (``expected``, e.g. Redis being unreachable) are logged in one line
without a traceback. Cancelling the task stops the loop; a ``CancelledError`` that is not a
cancellation of this task (a cancelled inner call) is a failure like any other. A cancellation
that a library swallowed still stops the loop, at the end of the step: on Python 3.11
``asyncio.wait_for`` returns the inner result when it finishes as the caller is cancelled
(CPython gh-86296), and redis-py sends every command through it when a socket timeout is set.

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
        if _cancelled_here():  # requested, but an inner call swallowed the CancelledError
            raise asyncio.CancelledError
        if failures:
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
    never comes is logged with where every unfinished task waits, then cancelled and left, so a
    stop always ends (a replica's, a test's)."""
    for step in steps:
        future = asyncio.ensure_future(step)
        label = getattr(step, "__qualname__", type(step).__name__)
        try:
            await asyncio.wait({future}, timeout=timeout_s)
        except asyncio.CancelledError:
            future.add_done_callback(_retrieve)
            future.cancel()
            raise
        if future.done():
            if not future.cancelled() and future.exception() is not None:
                log.warning("%s stop: %s failed: %r; going on", name, label, future.exception())
            continue
        log.warning("%s stop: %s took over %gs; going on. Tasks still running:\n%s",
                    name, label, timeout_s, _pending_stacks())
        future.add_done_callback(_retrieve)
        future.cancel()


def _pending_stacks() -> str:
    """Where each unfinished task of this loop waits (its whole chain of awaits): what a stuck
    stop needs to be diagnosed."""
    return "\n".join(
        f"  {task.get_name()} (cancels pending: {task.cancelling()}): {' -> '.join(_awaits(task.get_coro()))}"
        for task in asyncio.all_tasks()
        if task is not asyncio.current_task() and not task.done()
    ) or "  none"


def _awaits(awaitable: object) -> Iterator[str]:
    """The frames a suspended coroutine waits in, outermost first, then what the innermost awaits."""
    while awaitable is not None:
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if frame is None:
            yield type(awaitable).__name__
            return
        yield f"{frame.f_code.co_name} ({frame.f_code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno})"
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)


def _retrieve(future: asyncio.Future[object]) -> None:
    """Mark a left step's outcome as seen: it was logged already."""
    if not future.cancelled():
        future.exception()
