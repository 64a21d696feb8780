"""A clock for tests: it reads what the test sets."""

from __future__ import annotations


class FixedClock:
    """A wall clock that reads what the test sets; monotonic seconds follow it."""

    def __init__(self, wall_ms: int) -> None:
        self.now_ms = wall_ms

    def wall_ms(self) -> int:
        return self.now_ms

    def monotonic_s(self) -> float:
        return self.now_ms / 1000
