"""Every delivery rule that is a number or a status list: the retry schedule, the circuit
breaker, and when an endpoint asks to be slowed down or is gone.

Built once from ``Settings`` (``DeliveryPolicy.from_settings``). The notifier applies the retry
and slow-down rules to each attempt; the breaker's numbers are handed to the record script
(``core.delivery.scripts``), which moves the breaker in the same atomic step as the attempt.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Protocol

from core.schemas import Attempt, utcnow
from core.settings import Settings

GONE_STATUS = 410  # disables the endpoint at once
SLOWDOWN_STATUSES = frozenset({429, 502, 503, 504})  # pause the endpoint (Retry-After, or the default)


class Uniform(Protocol):
    """What ``next_attempt_delay`` needs from a random source (``random.Random`` fits)."""

    def uniform(self, a: float, b: float) -> float: ...


def next_attempt_delay(
    attempts_made: int, schedule: tuple[float, ...], jitter: float, rng: Uniform
) -> float | None:
    """Seconds to wait before the next attempt, or ``None`` when the schedule is exhausted.

    ``schedule[n]`` is the wait before attempt ``n + 1`` (``schedule[0]`` is the first attempt,
    normally immediate), so a schedule of eight entries allows eight attempts. ``jitter`` is a
    fraction: 0.1 gives a delay within ±10% of the scheduled one, so that the retries of many
    deliveries that failed together (an endpoint outage) do not return as one burst."""
    if attempts_made < 0:
        raise ValueError("attempts_made cannot be negative")
    if attempts_made >= len(schedule):
        return None
    delay = schedule[attempts_made]
    if jitter:
        delay *= 1.0 + rng.uniform(-jitter, jitter)
    return max(0.0, delay)


@dataclass(frozen=True)
class RetryPolicy:
    schedule_s: tuple[float, ...]
    jitter: float = 0.0

    def next_at(self, attempts_made: int, pause_s: float, rng: Uniform, now: datetime | None = None) -> datetime | None:
        """When to try again after ``attempts_made`` attempts (not before a pause the endpoint
        asked for); ``None`` when the schedule is used up."""
        delay = next_attempt_delay(attempts_made, self.schedule_s, self.jitter, rng)
        if delay is None:
            return None
        return (now or utcnow()) + timedelta(seconds=max(delay, pause_s))


@dataclass(frozen=True)
class BreakerPolicy:
    """The breaker's numbers: consecutive failures that open it, the cool-down before a
    half-open probe (doubling per failed probe, up to a maximum), and how long an endpoint may
    fail continuously before it is disabled."""

    failure_threshold: int = 5
    cooldown_s: float = 30.0
    max_cooldown_s: float = 600.0
    disable_after_s: float = 5 * 24 * 3600.0

    def script_args(self) -> dict[str, float]:
        """The numbers as the record script reads them (``A.breaker``)."""
        return asdict(self)


@dataclass(frozen=True)
class SlowdownPolicy:
    """When an endpoint asks us to pause, and for how long."""

    default_s: float = 5.0  # 429/502/503/504 without Retry-After
    retry_after_min_s: float = 1.0
    retry_after_max_s: float = 3600.0
    statuses: frozenset[int] = SLOWDOWN_STATUSES

    def pause_s(self, attempt: Attempt) -> float:
        """Seconds the endpoint asked us to pause: its ``Retry-After`` (clamped) on a slow-down
        status or any 5xx, the default pause on a slow-down status without one, else 0."""
        status = attempt.status_code
        if attempt.succeeded or status is None:
            return 0.0
        if attempt.retry_after_s is not None and (status in self.statuses or status >= 500):
            return min(max(attempt.retry_after_s, self.retry_after_min_s), self.retry_after_max_s)
        if status in self.statuses:
            return self.default_s
        return 0.0


@dataclass(frozen=True)
class DeliveryPolicy:
    retry: RetryPolicy
    breaker: BreakerPolicy
    slowdown: SlowdownPolicy

    @classmethod
    def from_settings(cls, settings: Settings) -> DeliveryPolicy:
        return cls(
            retry=RetryPolicy(settings.retry_schedule_s, settings.retry_jitter),
            breaker=BreakerPolicy(
                failure_threshold=settings.breaker_failure_threshold,
                cooldown_s=settings.breaker_cooldown_s,
                max_cooldown_s=settings.breaker_max_cooldown_s,
                disable_after_s=settings.endpoint_disable_after_s,
            ),
            slowdown=SlowdownPolicy(settings.slowdown_s, settings.retry_after_min_s, settings.retry_after_max_s),
        )

    @staticmethod
    def is_gone(attempt: Attempt) -> bool:
        """The endpoint said it is gone for good: the breaker disables it."""
        return attempt.status_code == GONE_STATUS
