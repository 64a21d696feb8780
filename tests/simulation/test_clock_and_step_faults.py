"""Clock faults (offsets, drift, jumps both ways) and step faults (errors, hangs past the
attempt timeout) from the profile."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import mainspring
from mainspring import WorkflowContext
from mainspring.simulations import (
    ClockFaults,
    FaultProfile,
    StepFaults,
    World,
    check_liveness,
    check_timers_fire_once_and_not_early,
    run_checks,
    run_simulation,
)
from mainspring.simulations.checkers import capture
from tests.simulation.profile_scenarios import (
    ledger_under_profile,
    workflows_under_profile,
)
from tests.simulation.scenarios import SIM_CONFIG
from tests.support.accounts import Account, Deposit, GetBalance, ScheduleInterest

SHORT_LEASES = {"lease_ttl_s": 3.0, "lease_renew_interval_s": 1.0}


def test_clocks_get_seeded_offsets_and_drifts() -> None:
    profile = FaultProfile(clock=ClockFaults(offset_ms_max=5_000, drift_ppm_max=1_000))

    async def scenario(world: World) -> list[int]:
        store = world.memory_store()
        for name in ("a", "b", "c"):
            await world.start_node(name, [Account], store, config=SIM_CONFIG)
        await world.sleep(1000)
        return [world.clock(name).skew_ms for name in ("a", "b", "c")]

    skews = run_simulation(3, scenario, profile=profile).value
    assert len(set(skews)) == 3
    assert all(abs(skew) <= 5_000 + 1_000 for skew in skews)
    assert skews == run_simulation(3, scenario, profile=profile).value


def test_clock_jumps_both_ways_move_leases_and_keep_every_invariant() -> None:
    profile = FaultProfile(
        clock=ClockFaults(jump=20.0, jump_ms_max=6_000, drift_ppm_max=500), config=SHORT_LEASES
    )
    sometimes: Counter[str] = Counter()
    for seed in range(4):
        result = run_simulation(
            seed, ledger_under_profile(tokens=30, nodes=("a", "b")), profile=profile
        )
        sometimes.update(result.value["sometimes"])
    assert sometimes["clock_jump_forward"] > 0, sometimes
    assert sometimes["clock_jump_backward"] > 0, sometimes
    assert sometimes["clock_jump_crossed_lease_expiry"] > 0, sometimes


@mainspring.workflow("sim.core.naps")
async def naps(ctx: WorkflowContext, count: int) -> list[int]:
    """Durable timers in a row; returns how long each one took by workflow time."""
    took = []
    for _ in range(count):
        started = ctx.now_ms()
        await ctx.sleep(timedelta(seconds=10))
        took.append(ctx.now_ms() - started)
    return took


def test_durable_timers_fire_once_and_not_early_under_clock_jumps() -> None:
    profile = FaultProfile(clock=ClockFaults(jump=6.0, jump_ms_max=20_000), config=SHORT_LEASES)
    jumps = 0

    async def scenario(world: World) -> dict[str, object]:
        store = world.faulty_store(world.sqlite_store())
        await world.start_node("n1", [Account], store, config=SIM_CONFIG, workflows=[naps])
        await world.call("n1", lambda node: node.workflows.start(naps, "naps", 6))
        await world.ask("n1", Account, "acc", Deposit(1_000), message_id="d")
        await world.ask("n1", Account, "acc", ScheduleInterest(30_000, 10), message_id="i")
        await world.sleep(60)
        world.heal()
        await check_liveness(world, within_s=600)
        await run_checks(world)  # timers fire once and not early, among the others
        contents = await capture(store.inner)
        assert (
            check_timers_fire_once_and_not_early(
                contents, store.history, backward_jump_ms_max=20_000
            )
            == 6
        )
        took = await world.call("n1", lambda node: node.workflows.result("naps"))
        await world.sleep(60)
        balance = await world.ask("n1", Account, "acc", GetBalance())
        return {"took": took, "balance": balance, "sometimes": world.sometimes_counts}

    for seed in range(3):
        result = run_simulation(seed, scenario, profile=profile)
        took = result.value["took"]
        assert isinstance(took, list)
        assert len(took) == 6
        assert all(ms >= 10_000 for ms in took), took  # by the workflow's own clock
        assert result.value["balance"] == 1_010  # the interest reminder fired exactly once
        sometimes = result.value["sometimes"]
        assert isinstance(sometimes, dict)
        jumps += sometimes.get("clock_jump_forward", 0) + sometimes.get("clock_jump_backward", 0)
    assert jumps > 0


def test_step_errors_and_timeouts_are_retried_and_each_effect_applied_once() -> None:
    profile = FaultProfile(steps=StepFaults(error=0.2, timeout=0.2))
    sometimes: Counter[str] = Counter()
    for seed in range(3):
        result = run_simulation(seed, workflows_under_profile(count=4), profile=profile)
        sometimes.update(result.value["sometimes"])
        assert result.value["effects"] == 2 * 4
    assert sometimes["step_error_injected"] > 0, sometimes
    assert sometimes["step_timeout_injected"] > 0, sometimes


def test_a_step_hanging_past_its_timeout_after_its_effect_is_deduplicated() -> None:
    """Every attempt's first try hangs after the effect: the retry finds the key applied."""
    profile = FaultProfile(steps=StepFaults(timeout=1.0))

    result = run_simulation(1, workflows_under_profile(count=2, safety_s=20), profile=profile)
    # During the safety phase every attempt hangs; after heal the attempts complete.
    assert result.value["effects"] == 2 * 2
    assert result.value["calls"] >= result.value["effects"]
