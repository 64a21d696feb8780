"""The cluster under the deterministic simulator: three nodes over one faulty store forward to
each other over the simulated network while nodes crash, restart, join and leave, the network
splits the cluster, and a clock runs ahead past the lease duration. The store's checkers
(gapless sequences, no stale-epoch commit, no acknowledged event lost, no message applied twice,
replay equals memory) run at the end of every run, and every acknowledged deposit is counted.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest

import mainspring
from mainspring import NodeConfig, WorkflowContext
from mainspring.actors.workflow_runtime import WORKFLOW_ACTOR_TYPE
from mainspring.errors import MainspringError
from mainspring.persistence.store import stream_id_of
from mainspring.simulations import run_checks, run_simulation
from mainspring.simulations.cluster import cluster_config
from mainspring.simulations.faults import StoreFaults
from mainspring.simulations.loop import SimulationError
from mainspring.simulations.network import NetworkFaults
from mainspring.simulations.profile import FaultProfile
from mainspring.simulations.world import World
from tests.support.accounts import Account, Deposit, GetBalance

CONFIG = NodeConfig(
    lease_ttl_s=3.0,
    lease_renew_interval_s=1.0,
    timer_poll_interval_s=5.0,
    outbox_poll_interval_s=5.0,
    outbox_retry_interval_s=1.0,
    idle_timeout_s=30.0,
    workflow_recovery_interval_s=30.0,
    shutdown_timeout_s=5.0,
)
NODES = ("a", "b", "c")
ACCOUNTS = [f"acct-{n}" for n in range(8)]
SEEDS = range(int(os.environ.get("MAINSPRING_CLUSTER_SEEDS", "10")))
"""Seeds per scenario (``MAINSPRING_CLUSTER_SEEDS`` raises it, e.g. in a nightly campaign)."""


class Ledger:
    """What the clients sent and what was acknowledged, per account."""

    def __init__(self) -> None:
        self.sent: dict[str, int] = dict.fromkeys(ACCOUNTS, 0)
        self.acknowledged: dict[str, int] = dict.fromkeys(ACCOUNTS, 0)
        self.failures: dict[str, int] = {}


async def load(world: World, ledger: Ledger, rounds: int, tag: str) -> None:
    """Deposits of 1 cent, each with its own message id, sent to nodes in turn."""
    for n in range(rounds):
        account = ACCOUNTS[n % len(ACCOUNTS)]
        running = [name for name in NODES if world.node_state(name) == "running"]
        if not running:
            await world.sleep(0.5)
            continue
        via = running[n % len(running)]
        ledger.sent[account] += 1
        try:
            await world.ask(
                via, Account, account, Deposit(1), message_id=f"{tag}-{n}", timeout_s=20.0
            )
        except (MainspringError, SimulationError, TimeoutError) as error:
            name = type(error).__name__
            ledger.failures[name] = ledger.failures.get(name, 0) + 1
        else:
            ledger.acknowledged[account] += 1
        await world.sleep(0.05)


async def settle_and_check(world: World, ledger: Ledger) -> dict[str, Any]:
    """Heal, let the views converge, read every balance, run the store's checkers."""
    world.heal()
    for name in NODES:
        if world.node_state(name) in {"crashed", "stopped"}:
            await world.restart(name)
    await world.sleep(CONFIG.lease_ttl_s + 3.0)
    for account in ACCOUNTS:
        balance = None
        for attempt in range(20):
            try:
                balance = await world.ask(
                    NODES[attempt % 3], Account, account, GetBalance(), timeout_s=20.0
                )
                break
            except (MainspringError, SimulationError, TimeoutError):
                await world.sleep(1.0)
        assert balance is not None, f"{account} never answered after the faults healed"
        # Every acknowledged deposit counts once; one that was not acknowledged may count.
        assert ledger.acknowledged[account] <= balance <= ledger.sent[account], (
            account,
            ledger.acknowledged[account],
            balance,
            ledger.sent[account],
        )
    rings = {
        name: sorted(node.cluster.ring.members)
        for name, node in world.running_nodes()
        if node.cluster is not None
    }
    assert all(ring == sorted(NODES) for ring in rings.values()), rings
    await run_checks(world)
    return {
        "acknowledged": sum(ledger.acknowledged.values()),
        "sent": sum(ledger.sent.values()),
        "failures": ledger.failures,
    }


def simulate(
    seed: int,
    middle: Callable[[World, Ledger], Awaitable[None]],
    profile: FaultProfile | None = None,
) -> dict[str, Any]:
    async def scenario(world: World) -> dict[str, Any]:
        store = world.faulty_store(world.memory_store())
        for name in NODES:
            await world.start_node(
                name, [Account], store, config=CONFIG, cluster=cluster_config(world, name)
            )
        ledger = Ledger()
        await load(world, ledger, 20, "warm")
        await middle(world, ledger)
        await load(world, ledger, 20, "after")
        return await settle_and_check(world, ledger)

    result = run_simulation(seed, scenario, profile=profile)
    value: dict[str, Any] = result.value
    assert value["acknowledged"] > 0, value
    return value


@pytest.mark.parametrize("seed", SEEDS)
def test_a_crashed_member_is_taken_over_and_rejoins(seed: int) -> None:
    async def middle(world: World, ledger: Ledger) -> None:
        world.crash(NODES[seed % 3])
        await load(world, ledger, 40, "crashed")
        await world.restart(NODES[seed % 3])
        await load(world, ledger, 20, "rejoined")

    simulate(seed, middle)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_partition_that_splits_the_cluster_keeps_one_writer(seed: int) -> None:
    async def middle(world: World, ledger: Ledger) -> None:
        alone = NODES[seed % 3]
        for other in NODES:
            if other != alone:
                world.network.cut(alone, other)
        await load(world, ledger, 40, "split")
        world.heal()

    simulate(seed, middle)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_clock_ahead_past_the_lease_duration_is_fenced(seed: int) -> None:
    async def middle(world: World, ledger: Ledger) -> None:
        world.clock(NODES[seed % 3]).jump(int(CONFIG.lease_ttl_s * 1000) + 2_000)
        await load(world, ledger, 40, "skewed")

    simulate(seed, middle)


@pytest.mark.parametrize("seed", SEEDS)
def test_members_join_and_leave_under_load_with_store_faults(seed: int) -> None:
    async def middle(world: World, ledger: Ledger) -> None:
        leaving = NODES[seed % 3]
        await world.stop_node(leaving)
        await load(world, ledger, 30, "left")
        await world.restart(leaving)
        await load(world, ledger, 30, "joined")

    profile = FaultProfile(store=StoreFaults(error_before_commit=0.02, lost_ack=0.02))
    simulate(seed, middle, profile)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_lossy_network_with_crashes_and_perturbed_interleavings(seed: int) -> None:
    async def middle(world: World, ledger: Ledger) -> None:
        world.crash(NODES[(seed + 1) % 3])
        await load(world, ledger, 30, "lossy")
        await world.restart(NODES[(seed + 1) % 3])

    profile = FaultProfile(
        network=NetworkFaults(drop=0.05, reply_drop=0.05, duplicate=0.05, delay_ms_max=20),
        store=StoreFaults(error_before_commit=0.02, lost_ack=0.02, latency_ms_max=5),
        perturb=True,
    )
    simulate(seed, middle, profile)


async def slow_call() -> str:
    """A step that takes 5 virtual seconds: long enough for its node to crash under it."""
    await asyncio.sleep(5.0)
    return "done"


@mainspring.workflow("sim.cluster.one-slow-step")
async def one_slow_step(ctx: WorkflowContext, _: None) -> str:
    result: str = await ctx.step(slow_call)
    return result


@pytest.mark.parametrize("seed", range(3))
def test_a_workflow_whose_owner_crashed_mid_step_is_woken_by_the_ring_change(seed: int) -> None:
    # Nothing else would wake it: no message is coming, and the periodic recovery scan and the
    # timer scan are hours away. The survivors' ring change must.
    config = attrs.evolve(
        CONFIG, workflow_recovery_interval_s=10_000.0, timer_poll_interval_s=10_000.0
    )

    async def scenario(world: World) -> str:
        inner = world.memory_store()
        store = world.faulty_store(inner)
        for name in NODES:
            await world.start_node(
                name,
                [],
                store,
                config=config,
                workflows=[one_slow_step],
                cluster=cluster_config(world, name),
            )
        cluster = world.node(NODES[0]).cluster
        assert cluster is not None
        owner = cluster.ring.owner(stream_id_of(WORKFLOW_ACTOR_TYPE, "w-1"))
        survivor = next(name for name in NODES if name != owner)
        await world.call(survivor, lambda node: node.workflows.start(one_slow_step, "w-1"))
        await world.sleep(1.0)  # the step is running on the owner
        world.crash(owner)
        # Nobody asks about the workflow (a result() call would wake it): within the member
        # timeout, the lease TTL and the step's own 5 s, far below the scans' hours, it ends.
        await world.sleep(60.0)
        [row] = await inner.list_instances(WORKFLOW_ACTOR_TYPE, None, 10, None)
        return row.status

    assert run_simulation(seed, scenario).value == "completed"
