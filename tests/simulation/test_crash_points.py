"""Named crash points: a node dies exactly there, nothing of it runs afterwards, and the runtime
recovers (the world restarts the node like a supervisor)."""

from __future__ import annotations

import attrs
import pytest

from mainspring import crashpoints
from mainspring.crashpoints import CRASH_POINTS, crash_point
from mainspring.node import Node
from mainspring.simulations import FaultProfile, NodeDown, World, run_simulation
from tests.simulation.profile_scenarios import (
    WORKFLOW_CONFIG,
    ledger_under_profile,
    payments,
    workflows_under_profile,
)
from tests.simulation.scenarios import SIM_CONFIG
from tests.support.ledger import Ledger


async def test_without_a_hook_a_crash_point_completes_at_once() -> None:
    for name in CRASH_POINTS:
        assert await crash_point(name) is None
    assert crashpoints.step_call(work := _value(), None) is work
    assert await work == 7


async def _value() -> int:
    return 7


def test_a_crash_point_stops_the_node_there_without_running_finally() -> None:
    profile = FaultProfile(crash_points={"journal.after_commit": 1.0})

    async def scenario(world: World) -> dict[str, object]:
        await world.start_node("n1", [Ledger], world.memory_store(), config=SIM_CONFIG)
        ran: list[str] = []

        async def operation(node: Node) -> None:
            try:
                ran.append("before")
                await crash_point("journal.after_commit")
                ran.append("after")
            finally:
                ran.append("finally")

        with pytest.raises(TimeoutError):
            await world.call("n1", operation, timeout_s=0.5)
        await world.sleep(2)  # the world restarts it within a second
        return {"ran": list(ran), "later": world.node_state("n1")}

    result = run_simulation(0, scenario, profile=profile, keep_trace=True)
    assert result.value == {"ran": ["before"], "later": "running"}
    assert result.sometimes == {"crash_point:journal.after_commit": 1}
    assert result.trace_lines is not None
    kinds = [line.split(" ", 3)[1:3] for line in result.trace_lines]
    crash = kinds.index(["n1", "crash_point"])
    assert kinds[crash + 2] == ["n1", "node.crash"]
    assert ["n1", "node.start"] in kinds[crash:]


def test_the_hooks_are_removed_after_a_run() -> None:
    run_simulation(0, ledger_under_profile(tokens=2, safety_s=1))
    assert crashpoints._crash_hook is None
    assert crashpoints._step_hook is None


@pytest.mark.parametrize("point", ["journal.after_commit", "host.after_lease"])
def test_a_ledger_survives_crashes_at_a_crash_point(point: str) -> None:
    profile = FaultProfile(
        crash_points={point: 0.2},
        config={"idle_timeout_s": 1.0, "lease_ttl_s": 3.0, "lease_renew_interval_s": 1.0},
    )
    hits = 0
    for seed in range(3):
        result = run_simulation(seed, ledger_under_profile(tokens=20), profile=profile)
        hits += result.value["sometimes"].get(f"crash_point:{point}", 0)
    assert hits > 0


def test_a_ledger_survives_crashes_in_the_middle_of_a_passivation() -> None:
    """Short idle timeouts passivate the ledgers between tokens: a crash between the final
    snapshot and the lease release leaves the lease to expire; the next owner takes over."""
    profile = FaultProfile(
        crash_points={"host.mid_passivation": 0.5},
        config={"idle_timeout_s": 0.2, "lease_ttl_s": 2.0, "lease_renew_interval_s": 0.5},
    )
    hits = 0
    for seed in range(3):
        result = run_simulation(
            seed, ledger_under_profile(tokens=20, nodes=("a", "b")), profile=profile
        )
        hits += result.value["sometimes"].get("crash_point:host.mid_passivation", 0)
    assert hits > 0


def test_a_step_whose_node_crashes_after_its_effect_is_retried_under_the_same_key() -> None:
    profile = FaultProfile(
        crash_points={"step.after_effect": 0.3},
        config={"lease_ttl_s": 3.0, "lease_renew_interval_s": 1.0},
    )
    retried = 0
    for seed in range(3):
        result = run_simulation(seed, workflows_under_profile(count=4), profile=profile)
        sometimes = result.value["sometimes"]
        retried += sometimes.get("step_retried_after_crash", 0)
        # Each step's effect applied once, although some ran twice.
        assert result.value["effects"] == 2 * 4
    assert retried > 0


def test_a_crash_right_after_start_returned_leaves_the_node_crashed_not_running() -> None:
    """The recovery a node runs at start activates its running workflows; a crash point hit
    there may kill the node after ``start`` returned and before the world marked it running.
    ``restart`` must then raise ``NodeDown`` (the world restarts the node later), never leave
    a dead node marked running. (The perturbed schedule lets the recovery's activation run
    before the world's code resumes.)"""
    profile = FaultProfile(crash_points={"host.after_lease": 0.5}, perturb=True)

    async def scenario(world: World) -> int:
        store = world.memory_store()  # no suspension in the store: the recovery runs at once
        await world.start_node("n1", [], store, config=SIM_CONFIG, workflows=[payments])
        for _ in range(50):  # until one start gets past the crash point
            try:
                await world.call(
                    "n1", lambda node: node.workflows.start(payments, "p-1", 1), timeout_s=1
                )
                break
            except (TimeoutError, NodeDown):
                await world.sleep(2)  # the world restarts the node within a second
        refused = 0
        for _ in range(30):
            if world.node_state("n1") == "running":
                world.crash("n1")
            if world.node_state("n1") != "crashed":
                await world.sleep(2)
                continue
            try:
                await world.restart("n1")
            except NodeDown:
                refused += 1
                assert world.node_state("n1") == "crashed"
                continue
            if world.node_state("n1") == "running":
                world.node("n1")  # a node marked running is alive
        return refused

    refused = sum(run_simulation(seed, scenario, profile=profile).value for seed in range(3))
    assert refused > 0


def test_a_node_that_crashes_each_time_it_takes_a_lease_recovers_after_heal() -> None:
    """Every activation crashes its node right after taking the lease, including those the
    node's start-up recovery makes just after ``start`` returned: the world restarts it again
    and again, and once the faults heal the workflows complete. (A start creates its workflow
    with its first write, a lease included; with that off, the start takes a lease too.)"""
    profile = FaultProfile(crash_points={"host.after_lease": 1.0})
    config = attrs.evolve(WORKFLOW_CONFIG, create_with_first_write=False)
    scenario = workflows_under_profile(count=2, safety_s=10, config=config)
    result = run_simulation(0, scenario, profile=profile)
    assert result.value["effects"] == 2 * 2
    assert result.sometimes["crash_point:host.after_lease"] >= 2
