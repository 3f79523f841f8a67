"""When to try a failed delivery again.

``schedule[n]`` is the wait before attempt ``n + 1`` (``schedule[0]`` is the first attempt,
normally immediate), so a schedule of eight entries allows eight attempts. Jitter spreads the
retries of many deliveries that failed together (an endpoint outage) so they do not return as
one burst.
"""

from __future__ import annotations

from typing import Protocol


class Uniform(Protocol):
    """What ``next_attempt_delay`` needs from a random source (``random.Random`` fits)."""

    def uniform(self, a: float, b: float) -> float: ...


def next_attempt_delay(
    attempts_made: int, schedule: tuple[float, ...], jitter: float, rng: Uniform
) -> float | None:
    """Seconds to wait before the next attempt, or ``None`` when the schedule is exhausted.

    ``jitter`` is a fraction: 0.1 gives a delay within ±10% of the scheduled one."""
    if attempts_made < 0:
        raise ValueError("attempts_made cannot be negative")
    if attempts_made >= len(schedule):
        return None
    delay = schedule[attempts_made]
    if jitter:
        delay *= 1.0 + rng.uniform(-jitter, jitter)
    return max(0.0, delay)
