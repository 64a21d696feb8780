"""Per-node views of virtual time, randomness and ids, for the seams of a simulated ``Node``.

``SimClock`` gives each node its own wall clock over the loop's virtual time: an offset, a
linear drift and explicit jumps (forwards or backwards), as real clocks under NTP do. Its
monotonic clock drifts with it but never goes back. ``SimRandom`` and ``SimIds`` draw from a
seeded stream per node incarnation, so a node restarted on the same seed does not repeat the
ids of its previous life.
"""

from __future__ import annotations

import uuid
from typing import Final, final

import attrs

from mainspring.simulations.loop import SimLoop
from mainspring.simulations.seeds import substream

__all__ = ["EPOCH_MS", "ClockFaults", "SimClock", "SimIds", "SimRandom"]

EPOCH_MS: Final = 1_767_225_600_000
"""The wall time at virtual time zero: 2026-01-01T00:00:00Z. Fixed, so traces that show wall
times are the same in every run."""

_PPM: Final = 1_000_000


def _non_negative_int(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{attribute.name} must be an int >= 0, got {value!r}")


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{attribute.name} must be a number >= 0, got {value!r}")


@attrs.frozen
class ClockFaults:
    """How wrong the nodes' clocks are (all zero: every clock reads true virtual time).

    Attributes:
        offset_ms_max: each node's wall clock starts off by a seeded offset in
            ``[-offset_ms_max, offset_ms_max]``.
        drift_ppm_max: each node's clocks run fast or slow by a seeded rate in
            ``[-drift_ppm_max, drift_ppm_max]`` parts per million (below 1,000,000).
        jump: expected wall-clock jumps per node per virtual minute (an NTP step), forwards
            or backwards.
        jump_ms_max: each jump moves the wall clock by up to this much, either way.
    """

    offset_ms_max: int = attrs.field(default=0, validator=_non_negative_int)
    drift_ppm_max: int = attrs.field(default=0, validator=_non_negative_int)
    jump: float = attrs.field(default=0.0, validator=_non_negative)
    jump_ms_max: int = attrs.field(default=0, validator=_non_negative_int)

    def __attrs_post_init__(self) -> None:
        if self.drift_ppm_max >= _PPM:
            raise ValueError(f"drift_ppm_max must be < {_PPM}, got {self.drift_ppm_max}")

    @property
    def active(self) -> bool:
        """Whether any clock fault is on."""
        return bool(self.offset_ms_max or self.drift_ppm_max or (self.jump and self.jump_ms_max))

    def describe(self) -> str:
        """A one-line summary."""
        return (
            f"offset_ms_max={self.offset_ms_max} drift_ppm_max={self.drift_ppm_max} "
            f"jump={self.jump:.3f}/min jump_ms_max={self.jump_ms_max}"
        )

    def scaled(self, factor: float) -> ClockFaults:
        """Every offset, drift, rate and jump multiplied by ``factor``."""
        return ClockFaults(
            offset_ms_max=int(self.offset_ms_max * factor),
            drift_ppm_max=int(self.drift_ppm_max * factor),
            jump=self.jump * factor,
            jump_ms_max=int(self.jump_ms_max * factor),
        )


@final
class SimClock:
    """The ``Clock`` of one simulated node.

    ``wall_ms() = EPOCH_MS + t * (1 + drift_ppm / 10**6) + offset_ms + jumps``, with ``t`` the
    loop's virtual time in milliseconds; ``monotonic_s() = t * (1 + drift_ppm / 10**6)`` in
    seconds, which never decreases.

    Args:
        loop: the simulation loop whose virtual time this clock reads.
        node: the node's name (for the trace).
        offset_ms: how far this node's wall clock is ahead (negative: behind).
        drift_ppm: how fast this node's clocks run, in parts per million (100 = 100 µs per
            second fast); more than -1,000,000.
    """

    def __init__(self, loop: SimLoop, node: str, *, offset_ms: int = 0, drift_ppm: int = 0) -> None:
        if not drift_ppm > -_PPM:
            raise ValueError(f"drift_ppm must be > -{_PPM} (a clock that runs), got {drift_ppm}")
        self._loop = loop
        self.node: Final = node
        self._offset_ms = offset_ms
        self._drift_ppm = drift_ppm
        self._jumps_ms = 0
        self._monotonic_last = 0.0

    def _drifted_ns(self) -> int:
        # Integer arithmetic: the same virtual time gives the same reading on every platform.
        now_ns = self._loop.now_ns
        return now_ns + now_ns * self._drift_ppm // _PPM

    def wall_ms(self) -> int:
        """Milliseconds since the Unix epoch, as this node believes it to be."""
        return EPOCH_MS + self._drifted_ns() // 1_000_000 + self._offset_ms + self._jumps_ms

    def monotonic_s(self) -> float:
        """Seconds since virtual time zero on this node's (drifting) clock; never decreasing."""
        reading = self._drifted_ns() / 1_000_000_000
        # Drift is fixed per clock and > -100%, so the reading cannot go back; the assertion
        # states the contract (a future drift model that varies must keep it).
        assert reading >= self._monotonic_last, (reading, self._monotonic_last)
        self._monotonic_last = reading
        return reading

    def jump(self, ms: int) -> None:
        """Step the wall clock by ``ms`` (negative: backwards), as an NTP step would; the
        monotonic clock is unaffected."""
        self._jumps_ms += ms
        self._loop.trace("clock.jump", f"{ms:+d}ms", node=self.node)

    @property
    def skew_ms(self) -> int:
        """How far this node's wall clock is from the true virtual wall time right now."""
        return self.wall_ms() - (EPOCH_MS + self._loop.now_ns // 1_000_000)


@final
class SimRandom:
    """The ``Random`` of one simulated node: a seeded stream, plus helpers for scenarios.

    Args:
        seed: the run seed.
        labels: the stream's name under the seed, e.g. ``("node", "n1", "0", "random")``.
    """

    def __init__(self, seed: int, *labels: str) -> None:
        self._stream = substream(seed, *labels)

    def random(self) -> float:
        """A float in [0.0, 1.0)."""
        return self._stream.random()

    def randbytes(self, n: int) -> bytes:
        """``n`` random bytes."""
        assert n >= 0, n
        return self._stream.randbytes(n)

    def randint(self, low: int, high: int) -> int:
        """An int in ``[low, high]``, both included."""
        assert low <= high, (low, high)
        return self._stream.randint(low, high)

    def chance(self, probability: float) -> bool:
        """True with ``probability``."""
        assert 0.0 <= probability <= 1.0, probability
        return self._stream.random() < probability


@final
class SimIds:
    """The ``Ids`` of one simulated node: UUID4-shaped ids from a seeded stream.

    Args:
        seed: the run seed.
        labels: the stream's name under the seed; give each node incarnation its own.
    """

    def __init__(self, seed: int, *labels: str) -> None:
        self._stream = substream(seed, *labels)

    def new_id(self) -> str:
        """32 lowercase hex characters, version 4 like ``SystemIds``."""
        return uuid.UUID(bytes=self._stream.randbytes(16), version=4).hex
