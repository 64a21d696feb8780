"""Runtime bugs the simulator found, each as a scripted reproduction.

A test here is marked ``xfail(strict=True)`` while the bug is open: once the runtime is fixed it
passes, the strict mark turns that into a failure, and the mark must go.
"""

from __future__ import annotations

from datetime import timedelta

import attrs
import pytest

import mainspring
from mainspring import WorkflowContext
from mainspring.errors import LeaseHeld, StoreUnavailable
from mainspring.simulations import World, run_simulation
from tests.simulation.scenarios import SIM_CONFIG

POLLING = attrs.evolve(SIM_CONFIG, timer_poll_interval_s=0.5)


@mainspring.workflow("sim.core.nap")
async def nap(ctx: WorkflowContext, _: None) -> str:
    await ctx.sleep(timedelta(seconds=10))
    return "rested"


def test_a_reminder_due_on_a_node_whose_clock_is_ahead_does_not_spin() -> None:
    async def scenario(world: World) -> str:
        store = world.sqlite_store()
        await world.start_node("owner", [], store, config=POLLING, workflows=[nap])
        # The other node's wall clock is half a second ahead: it sees the timer due first.
        await world.start_node("ahead", [], store, config=POLLING, workflows=[nap], offset_ms=500)
        await world.call("owner", lambda node: node.workflows.start(nap, "nap-1", None))
        result: str = await world.call("owner", lambda node: node.workflows.result("nap-1"))
        return result

    assert run_simulation(0, scenario, max_steps=50_000).value == "rested"


def test_reminders_of_a_crashed_owner_wait_for_its_lease_without_spinning() -> None:
    config = attrs.evolve(POLLING, lease_ttl_s=60.0, lease_renew_interval_s=20.0)

    async def scenario(world: World) -> str:
        store = world.sqlite_store()
        for name in ("owner", "other"):
            await world.start_node(name, [], store, config=config, workflows=[nap])
        await world.call("owner", lambda node: node.workflows.start(nap, "nap-1", None))
        await world.sleep(1)
        world.crash("owner")  # its lease on nap-1 runs until t=60s; the timer is due at 10s
        for _ in range(100):
            try:
                result: str = await world.call(
                    "other", lambda node: node.workflows.result("nap-1"), timeout_s=300
                )
            except LeaseHeld:
                await world.sleep(5)  # until the crashed owner's lease expires
            else:
                return result
        raise AssertionError("the other node never took nap-1 over")

    assert run_simulation(0, scenario, max_steps=200_000).value == "rested"


async def instant() -> str:
    """A step with nothing to wait for."""
    return "done"


@mainspring.workflow("sim.core.signalled")
async def signalled(ctx: WorkflowContext, _: None) -> str:
    await ctx.wait_for_signal("go")
    result: str = await ctx.step(instant)
    return result


def test_a_step_scheduled_by_a_commit_whose_ack_was_lost_starts_without_waiting_for_idle() -> None:
    async def scenario(world: World) -> str:
        store = world.faulty_store(world.sqlite_store())
        await world.start_node("n1", [], store, config=SIM_CONFIG, workflows=[signalled])
        await world.call("n1", lambda node: node.workflows.start(signalled, "s-1", None))
        await world.sleep(1)
        store.inject_next("lost_ack")  # the signal's commit (which schedules the step) is lost

        async def go() -> None:
            await world.call(
                "n1", lambda node: node.workflows.signal("s-1", "go", None, signal_id="go-1")
            )

        with pytest.raises(StoreUnavailable):
            await go()
        await go()  # the retry is a duplicate: answered from the dedupe records
        result: str = await world.call(
            "n1", lambda node: node.workflows.result("s-1"), timeout_s=120
        )
        return result

    assert run_simulation(0, scenario).value == "done"
