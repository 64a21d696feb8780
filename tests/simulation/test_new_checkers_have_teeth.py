"""Each new checker fires on a hand-made violation (and a violation stops the run where it
happens, not at the end)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

import mainspring
from mainspring import WorkflowContext
from mainspring.actors.workflow_runtime import WORKFLOW_ACTOR_TYPE, WorkflowEvent
from mainspring.persistence.store import (
    AppendRequest,
    NewEvent,
    StoredEvent,
    StreamHead,
    stream_id_of,
)
from mainspring.simulations import (
    FaultProfile,
    InvariantViolation,
    StepFaults,
    StoreContents,
    StoreFaults,
    StoreHistory,
    World,
    check_liveness,
    check_timers_fire_once_and_not_early,
    run_simulation,
)
from tests.simulation.broken_stores import FencingOffStore
from tests.simulation.profile_scenarios import CURRENT, RETRY, add_once
from tests.simulation.scenarios import SIM_CONFIG
from tests.support.ledger import Ledger

# The effect ledger -------------------------------------------------------------------------


def test_an_effect_applied_twice_under_one_key_is_reported_at_once() -> None:
    async def scenario(world: World) -> None:
        world.effects.apply(5, key="k")
        world.effects.apply(5, key="k")  # deduplicated: fine
        world.record("deduplicated")
        world.effects.apply(5, key="k", dedupe=False)  # a service that does not deduplicate
        world.record("unreachable")

    with pytest.raises(InvariantViolation, match=r"\[effect at most once\] key 'k' applied 2"):
        run_simulation(0, scenario)


def test_a_key_reused_with_another_input_is_reported() -> None:
    async def scenario(world: World) -> None:
        world.effects.apply(1, key="k")
        world.effects.apply(2, key="k")

    with pytest.raises(InvariantViolation, match="used with input 1 and then with 2") as raised:
        run_simulation(0, scenario)
    assert raised.value.invariant == "effect at most once"


async def pay_without_dedupe(value: int) -> int:
    """A step calling a service that does not deduplicate by key."""
    result: int = CURRENT[-1].effects.apply(value, dedupe=False)
    return result


@mainspring.workflow("sim.core.careless")
async def careless(ctx: WorkflowContext, value: int) -> int:
    result: int = await ctx.step(pay_without_dedupe, value, retry=RETRY, attempt_timeout=1.0)
    return result


def test_a_step_retried_after_its_effect_against_a_careless_service_is_reported() -> None:
    """Every attempt hangs past its timeout, half of them after the effect: the retry applies
    the effect again and the ledger reports it at that call."""
    profile = FaultProfile(steps=StepFaults(timeout=1.0))

    async def scenario(world: World) -> None:
        CURRENT.append(world)
        try:
            await world.start_node("n1", [], world.sqlite_store(), workflows=[careless])
            await world.call("n1", lambda node: node.workflows.start(careless, "c-1", 3))
            await world.sleep(60)
        finally:
            CURRENT.remove(world)

    with pytest.raises(InvariantViolation, match=r"key 'c-1/1' applied 2 times"):
        run_simulation(0, scenario, profile=profile)


def test_a_key_that_changes_between_attempts_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    from mainspring.actors.workflow_runtime import WorkflowRun
    from tests.simulation.profile_scenarios import workflows_under_profile

    calls = itertools.count()

    def unstable_key(self: WorkflowRun, n: int) -> str:
        return f"{self.workflow_id}/{n}#{next(calls)}"  # a new key at every attempt

    monkeypatch.setattr(WorkflowRun, "idempotency_key", unstable_key)
    profile = FaultProfile(crash_points={"step.after_effect": 0.5})
    scenario = workflows_under_profile(count=3, nodes=("a", "b"))
    with pytest.raises(InvariantViolation, match=r"the key must not change between attempts"):
        run_simulation(0, scenario, profile=profile)


# Liveness ----------------------------------------------------------------------------------


@mainspring.workflow("sim.core.waits_forever")
async def waits_forever(ctx: WorkflowContext, _: None) -> Any:
    return await ctx.wait_for_signal("never")


def test_a_workflow_that_never_closes_after_heal_is_a_liveness_violation() -> None:
    async def scenario(world: World) -> None:
        store = world.faulty_store(world.memory_store())
        await world.start_node("n1", [], store, config=SIM_CONFIG, workflows=[waits_forever])
        await world.call("n1", lambda node: node.workflows.start(waits_forever, "w-1", None))
        world.heal()
        await check_liveness(world, within_s=30)

    with pytest.raises(
        InvariantViolation, match=r"\[liveness\] 1 of 1 workflows not closed"
    ) as raised:
        run_simulation(0, scenario)
    assert "w-1 (waiting)" in str(raised.value)
    assert raised.value.invariant == "liveness"


def test_liveness_is_checked_only_after_heal() -> None:
    async def scenario(world: World) -> None:
        await check_liveness(world)

    with pytest.raises(Exception, match=r"call world\.heal"):
        run_simulation(0, scenario)


# Timers ------------------------------------------------------------------------------------


def _contents(*events: tuple[WorkflowEvent, int]) -> StoreContents:
    stream_id = stream_id_of(WORKFLOW_ACTOR_TYPE, "t-1")
    stored = []
    for seq, (event, recorded_at_ms) in enumerate(events, start=1):
        encoded = mainspring.registry.encode(event)
        stored.append(
            StoredEvent(
                stream_id, seq, 1, encoded.type_name, encoded.type_version, encoded.payload,
                None, recorded_at_ms,
            )
        )  # fmt: skip
    head = StreamHead(stream_id, 1, len(stored), None, 0)
    return StoreContents({stream_id: head}, {stream_id: stored}, {stream_id: []})


STARTED = WorkflowEvent("started", name="x", data={"input": None})


def test_the_timer_checker_passes_a_timer_that_fires_once_on_time() -> None:
    contents = _contents(
        (STARTED, 0), (WorkflowEvent("timer_started", 1, data=1_000), 0),
        (WorkflowEvent("timer_fired", 1, at_ms=1_000), 1_000),
    )  # fmt: skip
    assert check_timers_fire_once_and_not_early(contents, StoreHistory()) == 1


@pytest.mark.parametrize(
    ("events", "message"),
    [
        (
            [(WorkflowEvent("timer_started", 1, data=1_000), 0),
             (WorkflowEvent("timer_fired", 1, at_ms=1_000), 1_000),
             (WorkflowEvent("timer_fired", 1, at_ms=1_000), 1_001)],
            "timer 1 fired twice",
        ),
        (
            [(WorkflowEvent("timer_started", 1, data=1_000), 0),
             (WorkflowEvent("timer_fired", 1, at_ms=1_000), 400)],
            "fired at 400 .* 600 ms early",
        ),
        ([(WorkflowEvent("timer_fired", 2, at_ms=5), 5)], "timer 2 fired .* never started"),
    ],
)  # fmt: skip
def test_the_timer_checker_reports_a_timer_fired_twice_early_or_unstarted(
    events: list[tuple[WorkflowEvent, int]], message: str
) -> None:
    contents = _contents((STARTED, 0), *events)
    with pytest.raises(InvariantViolation, match=message) as raised:
        check_timers_fire_once_and_not_early(contents, StoreHistory())
    assert raised.value.invariant == "timers fire once and not early"


# Incremental checks and user invariants ----------------------------------------------------


def test_a_stale_epoch_commit_stops_the_run_at_the_commit() -> None:
    """The zombie's write commits through a store without fencing: the run stops right
    there, before the scenario goes on (and long before any end-of-run check)."""
    reached: list[str] = []

    async def scenario(world: World) -> None:
        store = world.faulty_store(
            FencingOffStore(),  # type: ignore[arg-type]
            node_profiles={"b": StoreFaults(latency_ms_min=100, latency_ms_max=100)},
        )
        for name in ("a", "b"):
            await world.start_node(name, [Ledger], store, config=SIM_CONFIG)
        assert await add_once(world, store, "a", "z", "a-1")
        world.clock("b").jump(SIM_CONFIG.lease_ttl_ms + 1_000)
        world.loop.create_task(add_once(world, store, "b", "z", "b-1"))  # b takes the lease
        await world.sleep(0.15)  # b's grant (epoch 2) is in; b hydrates slowly
        reached.append("b took the lease")
        await add_once(world, store, "a", "z", "a-2")  # a, deposed, writes under epoch 1
        reached.append("after the zombie write")

    with pytest.raises(InvariantViolation, match=r"\[no stale-epoch commit\].*a deposed owner"):
        run_simulation(0, scenario)
    assert reached == ["b took the lease"]


def test_a_user_invariant_is_checked_after_every_commit() -> None:
    def at_most_three_tokens(world: World) -> None:
        for name, node in world.running_nodes():
            activation = node.host.live.get(stream_id_of(Ledger.type_name, "l"))
            if activation is not None and activation.state.count > 3:
                raise InvariantViolation(f"[at most three] {name} holds {activation.state}")

    added: list[str] = []

    async def scenario(world: World) -> None:
        world.add_invariant(at_most_three_tokens)
        store = world.faulty_store(world.memory_store())
        await world.start_node("n1", [Ledger], store, config=SIM_CONFIG)
        for token in ("a", "b", "c", "d", "e"):
            await add_once(world, store, "n1", "l", token)
            added.append(token)

    with pytest.raises(InvariantViolation, match=r"\[at most three\]") as raised:
        run_simulation(0, scenario)
    assert raised.value.invariant == "at most three"
    # The fourth token's state is in memory once its commit returns; the check after the next
    # commit sees it, and the run stops before that client hears back.
    assert added == ["a", "b", "c", "d"]


def test_a_reminder_committed_before_it_was_due_is_reported_at_the_commit() -> None:
    """A reminder's transition carries the message id ``reminder:<name>:<due>``: committed
    with a clock reading before ``due``, it fired early."""

    async def scenario(world: World) -> None:
        store = world.faulty_store(world.memory_store())
        await store.open()
        stream = stream_id_of(Ledger.type_name, "r")
        lease = await store.acquire_lease(stream, "n1", 0, 60_000)
        event = NewEvent("test.ledger.added", 1, b'{"token": "r"}', "reminder:tick:5000")
        request = AppendRequest(stream, lease.epoch, 0, (event,), recorded_at_ms=4_000)
        await store.append_batch([request])

    with pytest.raises(InvariantViolation, match="1000 ms before it was due") as raised:
        run_simulation(0, scenario)
    assert raised.value.invariant == "timers fire once and not early"
