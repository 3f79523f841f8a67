"""Supervised loops: a failure is logged with its context and the loop goes on; cancel stops it."""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress

import pytest

from core.supervise import Backoff, stop_steps, supervise, working_on

FAST = Backoff(first=0.001, cap=0.004)


class Script:
    """A step that follows a script of outcomes (an exception to raise, or None for success),
    then parks until cancelled."""

    def __init__(self, *outcomes: BaseException | None) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0
        self.done = asyncio.Event()

    async def __call__(self) -> None:
        self.calls += 1
        if not self.outcomes:
            self.done.set()
            await asyncio.Event().wait()
        outcome = self.outcomes.pop(0)
        if outcome is not None:
            with working_on(job="job_7", org="org_x"):
                raise outcome


async def run_until_done(script: Script, **options: object) -> asyncio.Task[None]:
    task = asyncio.create_task(supervise("intake", script, backoff=FAST, **options))  # type: ignore[arg-type]
    await asyncio.wait_for(script.done.wait(), 5)
    return task


async def test_an_unexpected_exception_is_logged_with_its_job_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    script = Script(ValueError("poison"), KeyError("missing"), None)
    with caplog.at_level(logging.ERROR, logger="sightwire.supervise"):
        task = await run_until_done(script)
    assert script.calls == 4  # two failures, one success, then parked in the fourth call
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 2
    assert "intake failed (failure 1 in a row)" in failures[0].getMessage()
    assert failures[0].exc_info is not None
    text = caplog.text
    assert "ValueError: poison" in text and "while working on job=job_7, org=org_x" in text
    assert "failure 2 in a row" in failures[1].getMessage()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_expected_errors_are_one_line_warnings(caplog: pytest.LogCaptureFixture) -> None:
    script = Script(ConnectionError("redis down"), None)
    with caplog.at_level(logging.WARNING, logger="sightwire.supervise"):
        task = await run_until_done(script, expected=(ConnectionError,))
    [record] = [r for r in caplog.records if r.name == "sightwire.supervise"]
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "ConnectionError: redis down" in record.getMessage()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_cancelled_inner_call_is_a_failure_not_a_stop(caplog: pytest.LogCaptureFixture) -> None:
    script = Script(asyncio.CancelledError(), None)
    with caplog.at_level(logging.ERROR, logger="sightwire.supervise"):
        task = await run_until_done(script)
    assert script.calls == 3 and not task.done()
    assert "an inner call was cancelled" in caplog.text
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()


async def test_cancelling_the_task_stops_the_loop_even_during_a_backoff() -> None:
    script = Script(*[RuntimeError("again")] * 1000)
    task = asyncio.create_task(supervise("reclaimer", script, backoff=Backoff(first=0.05, cap=0.05)))
    await asyncio.sleep(0.12)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert 2 <= script.calls <= 4  # it was backing off between failures, not spinning


async def test_a_success_resets_the_backoff(caplog: pytest.LogCaptureFixture) -> None:
    script = Script(RuntimeError("a"), RuntimeError("b"), None, RuntimeError("c"), None)
    with caplog.at_level(logging.ERROR, logger="sightwire.supervise"):
        task = await run_until_done(script)
    counts = [r.getMessage().split("(failure ")[1].split(" ")[0] for r in caplog.records if r.levelno == logging.ERROR]
    assert counts == ["1", "2", "1"]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(first=0.1, cap=0.5)
    assert [backoff.delay(n) for n in range(1, 6)] == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])


async def test_a_stuck_stop_step_is_left_named_and_the_next_step_still_runs(caplog: pytest.LogCaptureFixture) -> None:
    async def parked_forever() -> None:
        await asyncio.Event().wait()

    stuck = asyncio.create_task(parked_forever(), name="stuck-sender")
    closed = asyncio.Event()

    async def close() -> None:
        closed.set()

    with caplog.at_level(logging.WARNING, logger="sightwire.supervise"):
        await asyncio.wait_for(stop_steps("notifier", (asyncio.shield(stuck), close()), timeout_s=0.05), 2)
    assert closed.is_set()  # the step after the stuck one ran
    [warning] = [r.getMessage() for r in caplog.records]
    assert "notifier stop: Future took over 0.05s" in warning
    assert "stuck-sender (cancels pending: 0): parked_forever (test_supervise.py" in warning  # where it waits
    stuck.cancel()


async def test_a_cancellation_swallowed_inside_a_step_still_stops_the_loop() -> None:
    """Python 3.11's ``asyncio.wait_for`` (under every redis-py command with a socket timeout)
    returns the inner result when it finishes as the task is cancelled: the step then returns
    normally with the cancel still requested, and the loop must stop all the same."""
    calls = 0

    async def swallowing_step() -> None:
        nonlocal calls
        calls += 1
        with suppress(asyncio.CancelledError):  # what the library does, deterministically
            await asyncio.sleep(10)

    task = asyncio.create_task(supervise("notifier loop", swallowing_step))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(task), 1)
    assert task.cancelled() and calls == 1
