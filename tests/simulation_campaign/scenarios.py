"""Small scenarios for the campaign, shrinking, CLI and plugin tests (named MODULE:NAME)."""

from __future__ import annotations

from typing import Any

from mainspring.persistence.store import stream_id_of
from mainspring.simulations import InvariantViolation, World
from mainspring.simulations.clock import ClockFaults
from mainspring.simulations.faults import StoreFaults
from mainspring.simulations.network import NetworkFaults
from mainspring.simulations.profile import FaultProfile, StepFaults
from mainspring.simulations.scenario import scenario
from mainspring.simulations.selfcheck import Count, Tally, tally_scenario


def no_faults(seed: int) -> FaultProfile:
    return FaultProfile.none()


async def count_three(world: World) -> int:
    """One node counts three tokens; each answer is acknowledged in the store history."""
    store = world.faulty_store(world.memory_store())
    await world.start_node("n1", [Tally], store)
    seq = 0
    for token in ("x", "y", "z"):
        seq = await world.ask("n1", Tally, "t", Count(token), message_id=token)
        store.history.acknowledge(stream_id_of(Tally.type_name, "t"), token, seq)
    return seq


@scenario(profile=no_faults, seeds=4)
async def passing(world: World) -> int:
    """Counts three tokens without faults: every seed passes."""
    return await count_three(world)


@scenario(profile=no_faults, seeds=6)
async def fails_on_seed_3(world: World) -> int:
    """Seed 3 breaks a planted invariant after some work."""
    value = await count_three(world)
    if world.seed == 3:
        raise InvariantViolation("[planted] seed three is wrong")
    return value


@scenario(profile=no_faults, seeds=3, sometimes=("fired", "never_fired"))
async def gentle(world: World) -> None:
    """Records one 'sometimes' target and never the other."""
    world.sometimes("fired")


async def _forever(world: World) -> None:
    await world.sleep(10**9)


@scenario(profile=no_faults, seeds=1, settle=_forever, liveness_s=5.0)
async def never_settles(world: World) -> None:
    """Its liveness phase never ends."""


EVERYTHING = FaultProfile(
    store=StoreFaults(error_before_commit=0.1, lost_ack=0.1, latency_ms_max=10),
    crash_points={"journal.after_commit": 0.05, "host.after_lease": 0.05},
    network=NetworkFaults(drop=0.02, duplicate=0.05, delay_ms_max=5),
    partitions=0.5,
    clock=ClockFaults(offset_ms_max=200, drift_ppm_max=100, jump=0.5, jump_ms_max=1_000),
    steps=StepFaults(error=0.05),
    duplicate_requests=0.1,
    perturb=True,
)
"""Every fault kind on: what shrinking starts from."""


def everything(seed: int) -> FaultProfile:
    return EVERYTHING


buggy = tally_scenario("buggy", reply_before_commit=True, profile=everything, seeds=20)
"""The tally with an injected bug (replies before the commit) under every fault."""

sound = tally_scenario("sound", profile=everything, seeds=20)
"""The same workload without the bug."""

not_a_scenario: Any = 42
