"""``RetryPolicy``: how often and how soon a failed step is tried again."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import attrs

from mainspring.errors import UsageError
from mainspring.seams import Random

__all__ = ["RetryPolicy", "seconds_of"]


def seconds_of(value: object, what: str) -> float:
    """``value`` (a timedelta or a number of seconds > 0) in seconds.

    Raises:
        UsageError: naming ``what`` when the value is not a positive duration.
    """
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise UsageError(f"{what} must be a timedelta or a number of seconds > 0, got {value!r}")
    return float(value)


def _initial_interval(value: object) -> float:
    return seconds_of(value, "RetryPolicy.initial_interval")


def _max_interval(value: object) -> float:
    return seconds_of(value, "RetryPolicy.max_interval")


def _error_names(value: Sequence[type[BaseException] | str]) -> tuple[str, ...]:
    names: list[str] = []
    for item in value:
        if isinstance(item, type) and issubclass(item, BaseException):
            names.append(item.__name__)
        elif isinstance(item, str) and item:
            names.append(item)
        else:
            raise UsageError(
                f"RetryPolicy.non_retryable takes exception classes or class names, got {item!r}"
            )
    return tuple(names)


@attrs.frozen
class RetryPolicy:
    """How a step is retried after an attempt fails.

    The wait before attempt ``k + 1`` is drawn uniformly from ``[0, cap]`` (full jitter), where
    ``cap = min(max_interval, initial_interval * backoff ** (k - 1))``; the draw comes from the
    node's seeded Random seam and is recorded in the history, so the wait is a durable timer
    that survives restarts.

    Attributes:
        initial_interval: the cap of the first wait (seconds or timedelta).
        backoff: the factor the cap grows by per attempt (>= 1).
        max_interval: the largest cap (seconds or timedelta).
        max_attempts: attempts in all, including the first (None: unlimited).
        non_retryable: exception classes (or class names) that fail the step at once. Matched
            against the class of the error and its base classes, by name.
        jitter: draw the wait from ``[0, cap]`` (True) or wait exactly ``cap`` (False).
    """

    initial_interval: float = attrs.field(default=1.0, converter=_initial_interval)
    backoff: float = 2.0
    max_interval: float = attrs.field(default=100.0, converter=_max_interval)
    max_attempts: int | None = 5
    non_retryable: tuple[str, ...] = attrs.field(default=(), converter=_error_names)
    jitter: bool = True

    def __attrs_post_init__(self) -> None:
        if isinstance(self.backoff, bool) or not isinstance(self.backoff, int | float):
            raise UsageError(f"RetryPolicy.backoff must be a number >= 1, got {self.backoff!r}")
        if self.backoff < 1:
            raise UsageError(f"RetryPolicy.backoff must be >= 1, got {self.backoff!r}")
        if self.max_attempts is not None and (
            isinstance(self.max_attempts, bool)
            or not isinstance(self.max_attempts, int)
            or self.max_attempts < 1
        ):
            raise UsageError(
                f"RetryPolicy.max_attempts must be an int >= 1 or None (unlimited), "
                f"got {self.max_attempts!r}"
            )
        if self.max_interval < self.initial_interval:
            raise UsageError(
                f"RetryPolicy.max_interval ({self.max_interval}) must be >= initial_interval "
                f"({self.initial_interval})"
            )

    def is_retryable(self, error: BaseException) -> bool:
        """Whether ``error`` may be retried (its class is not listed as non-retryable)."""
        if not self.non_retryable:
            return True
        names = {klass.__name__ for klass in type(error).__mro__}
        names.update(f"{k.__module__}.{k.__qualname__}" for k in type(error).__mro__)
        return not names.intersection(self.non_retryable)

    def attempts_left(self, attempts_made: int) -> bool:
        """Whether another attempt is allowed after ``attempts_made``."""
        return self.max_attempts is None or attempts_made < self.max_attempts

    def delay_s(self, attempts_made: int, random: Random) -> float:
        """The wait before the attempt after ``attempts_made`` failed attempts."""
        exponent = max(attempts_made - 1, 0)
        try:
            cap = self.initial_interval * self.backoff**exponent
        except OverflowError:
            cap = self.max_interval
        cap = min(cap, self.max_interval)
        return random.random() * cap if self.jitter else cap
