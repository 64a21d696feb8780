"""Seams: the only place mainspring touches time, randomness and id generation.

Production code receives these as ``Protocol`` values; the system implementations below are the
only code allowed to call ``time``, ``random`` or ``uuid`` (ruff's banned-api rule enforces it).
The simulator plugs in virtual, seeded implementations of the same protocols.
"""

from __future__ import annotations

import random as _random
import time as _time
import uuid as _uuid
from typing import Protocol, final, runtime_checkable

__all__ = ["Clock", "Ids", "Random", "SeededRandom", "SystemClock", "SystemIds"]


@runtime_checkable
class Clock(Protocol):
    """Wall time (for leases, timers and timestamps shared through the store) and monotonic time
    (for local durations), kept apart as in TigerBeetle: wall time may jump, monotonic may not."""

    def wall_ms(self) -> int:
        """Milliseconds since the Unix epoch, as this node believes it to be."""
        ...

    def monotonic_s(self) -> float:
        """Seconds from an arbitrary origin; never goes backwards."""
        ...


@runtime_checkable
class Random(Protocol):
    """A source of random numbers (seeded in tests and simulation)."""

    def random(self) -> float:
        """A float in [0.0, 1.0)."""
        ...

    def randbytes(self, n: int) -> bytes:
        """``n`` random bytes."""
        ...


@runtime_checkable
class Ids(Protocol):
    """A source of unique ids for messages and runs."""

    def new_id(self) -> str:
        """A new id, unique with overwhelming probability: 32 lowercase hex characters."""
        ...


@final
class SystemClock:
    """The machine's clocks."""

    def wall_ms(self) -> int:
        """Milliseconds since the Unix epoch from the system clock."""
        return _time.time_ns() // 1_000_000

    def monotonic_s(self) -> float:
        """``time.monotonic()``."""
        return _time.monotonic()


@final
class SeededRandom:
    """A ``random.Random`` behind the ``Random`` protocol, seeded from the OS when ``seed`` is None.

    For jitter, sampling and simulation; not for secrets.
    """

    def __init__(self, seed: int | None = None) -> None:
        # Seeding costs more than most uses (a workflow run makes one per run and may never
        # draw from it): the generator is made, from the same seed, at the first draw.
        self._seed = seed
        self._generator: _random.Random | None = None

    def _random(self) -> _random.Random:
        generator = self._generator
        if generator is None:
            generator = self._generator = _random.Random(self._seed)  # noqa: S311 (not secrets)
        return generator

    def random(self) -> float:
        """A float in [0.0, 1.0)."""
        return self._random().random()

    def randbytes(self, n: int) -> bytes:
        """``n`` random bytes."""
        assert n >= 0
        return self._random().randbytes(n)


@final
class SystemIds:
    """UUID4 ids from the operating system's entropy, or from a ``Random`` when one is given."""

    def __init__(self, random: Random | None = None) -> None:
        self._random = random

    def new_id(self) -> str:
        """A new 128-bit id as 32 hex characters."""
        if self._random is None:
            return _uuid.uuid4().hex
        return _uuid.UUID(bytes=self._random.randbytes(16), version=4).hex
