"""The deterministic simulator: the real ``Node`` on a virtual-time event loop.

See ``docs/simulation.md``. ``run_simulation(seed, scenario)`` is the entry point.
"""

from __future__ import annotations

from mainspring.simulations.clock import EPOCH_MS, SimClock, SimIds, SimRandom
from mainspring.simulations.loop import (
    Deadlock,
    NodeTag,
    SimLoop,
    SimulationError,
    SimulationEscape,
    SimulationStuck,
)
from mainspring.simulations.world import NodeDown, SimulationResult, World, run_simulation

__all__ = [
    "EPOCH_MS",
    "Deadlock",
    "NodeDown",
    "NodeTag",
    "SimClock",
    "SimIds",
    "SimLoop",
    "SimRandom",
    "SimulationError",
    "SimulationEscape",
    "SimulationResult",
    "SimulationStuck",
    "World",
    "run_simulation",
]
