"""Seeded random streams for the simulator, derived from one run seed.

Every source of simulated randomness (each node's ``Random`` and ``Ids``, the scheduler's
perturbation, the scenario's own choices) draws from its own stream, so adding draws to one
subsystem does not shift the numbers another one sees. Streams are derived with SHA-256 over the
seed and a list of labels, never with ``hash()``, whose value for ``str`` changes per process.

This is the one simulator module that imports ``random``: the seams forbid it elsewhere.
"""

from __future__ import annotations

import hashlib
import random  # noqa: TID251 (the simulator's seeded PRNG streams; never used for secrets)

__all__ = ["Stream", "derive_seed", "substream"]

Stream = random.Random
"""The PRNG type of every simulator stream (Mersenne Twister: fast, seedable, reproducible)."""


def derive_seed(seed: int, *labels: str) -> int:
    """A 64-bit seed for the stream named by ``labels`` under the run ``seed``.

    Args:
        seed: the run seed (any int, negative too).
        labels: names of the stream, such as ``("node", "n1", "0", "ids")``.

    Returns:
        An int in ``[0, 2**64)`` that depends only on the arguments.
    """
    assert isinstance(seed, int), seed
    hasher = hashlib.sha256(str(seed).encode())
    for label in labels:
        assert "\x00" not in label, label
        # The separator keeps ("ab", "c") and ("a", "bc") apart.
        hasher.update(b"\x00" + label.encode())
    return int.from_bytes(hasher.digest()[:8], "big")


def substream(seed: int, *labels: str) -> Stream:
    """A ``random.Random`` seeded by ``derive_seed(seed, *labels)``."""
    return random.Random(derive_seed(seed, *labels))  # noqa: S311 (simulation, not secrets)
