"""The deterministic simulator: the real ``Node`` on a virtual-time event loop.

See ``docs/simulation.md``. ``run_simulation(seed, scenario)`` is the entry point.
"""

from __future__ import annotations

from mainspring.simulations.checkers import (
    Checker,
    InvariantViolation,
    StoreContents,
    capture,
    check_gapless,
    check_liveness,
    check_no_acknowledged_event_lost,
    check_no_message_applied_twice,
    check_no_stale_epoch_commit,
    check_replay_equals_memory,
    check_timers_fire_once_and_not_early,
    run_checks,
)
from mainspring.simulations.clock import EPOCH_MS, ClockFaults, SimClock, SimIds, SimRandom
from mainspring.simulations.effects import Effect, EffectLedger
from mainspring.simulations.faults import (
    Acknowledgement,
    AppendRecord,
    FaultyStore,
    LeaseGrant,
    StoreFaults,
    StoreHistory,
)
from mainspring.simulations.loop import (
    Deadlock,
    NodeTag,
    SimLoop,
    SimulationError,
    SimulationEscape,
    SimulationStuck,
)
from mainspring.simulations.network import Network, NetworkFaults
from mainspring.simulations.profile import FaultProfile, StepFaults
from mainspring.simulations.world import (
    InjectedStepError,
    NodeDown,
    SimulationResult,
    World,
    run_simulation,
)

__all__ = [
    "EPOCH_MS",
    "Acknowledgement",
    "AppendRecord",
    "Checker",
    "ClockFaults",
    "Deadlock",
    "Effect",
    "EffectLedger",
    "FaultProfile",
    "FaultyStore",
    "InjectedStepError",
    "InvariantViolation",
    "LeaseGrant",
    "Network",
    "NetworkFaults",
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
    "StepFaults",
    "StoreContents",
    "StoreFaults",
    "StoreHistory",
    "World",
    "capture",
    "check_gapless",
    "check_liveness",
    "check_no_acknowledged_event_lost",
    "check_no_message_applied_twice",
    "check_no_stale_epoch_commit",
    "check_replay_equals_memory",
    "check_timers_fire_once_and_not_early",
    "run_checks",
    "run_simulation",
]
