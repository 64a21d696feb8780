"""Workflows under simulated crashes and store faults, on virtual time.

Every run starts workflows whose steps call a simulated external service keyed by the step's
idempotency key, crashes the node at seeded moments, restarts it, and then checks what the
workflow guarantees promise: every workflow ends ``completed`` with the right result, each step
number has at most one recorded result and that result is the one the service kept for its
key (so no step ever ran under two keys or was recorded twice), the service saw each key at
least once, and the store-level invariants (gapless, fenced, no lost ack, replay equals
memory) hold.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest

import mainspring
from mainspring import RetryPolicy, WorkflowContext, step_context
from mainspring.actors.workflow_runtime import WORKFLOW_ACTOR_TYPE, WorkflowEvent
from mainspring.errors import NodeClosed, StoreUnavailable
from mainspring.simulations import (
    InvariantViolation,
    NodeDown,
    StoreFaults,
    World,
    run_checks,
    run_simulation,
)
from mainspring.simulations.checkers import StoreContents, capture
from tests.simulation.scenarios import SIM_CONFIG

SERVICE: dict[str, Any] = {}
ATTEMPTS: Counter[str] = Counter()
DAY_S = 24 * 3600


FLAKY: list[bool] = [False]
"""When set, the service fails the first attempt of every step."""


async def service(value: int) -> int:
    """The external service: keeps the first value it saw for a key (idempotent by key)."""
    step = step_context()
    key = step.idempotency_key
    ATTEMPTS[key] += 1
    await asyncio.sleep(0.05)  # the call takes time: a crash can land in the middle
    if FLAKY[0] and step.attempt == 1:
        raise ConnectionError("the service hiccuped")
    kept: int = SERVICE.setdefault(key, value)
    return kept


@mainspring.workflow("sim.order")
async def order(ctx: WorkflowContext, value: int) -> int:
    retry = RetryPolicy(initial_interval=0.1, max_interval=1.0, max_attempts=None)
    first = await ctx.step(service, value, retry=retry)
    await ctx.sleep(timedelta(hours=1))
    second = await ctx.step(service, first + 1, retry=retry)
    return await ctx.step(service, second + ctx.uuid().count("-"), retry=retry)


EXPECTED = {i: i + 1 + 4 for i in range(6)}


async def _eventually_result(world: World, workflow_id: str) -> Any:
    """Ask for the result until the node is up long enough to give it."""
    for _ in range(200):
        try:
            return await world.call(
                "n1", lambda node: node.workflows.result(workflow_id), timeout_s=600
            )
        except (NodeDown, NodeClosed, StoreUnavailable, TimeoutError):
            await world.sleep(60)
    raise AssertionError(f"workflow {workflow_id} never completed")


async def _start(world: World, workflow_id: str, value: int) -> None:
    for _ in range(200):
        try:
            await world.call(
                "n1", lambda node: node.workflows.start(order, workflow_id, value), timeout_s=30
            )
            return
        except (NodeDown, NodeClosed, StoreUnavailable, TimeoutError):
            await world.sleep(5)
    raise AssertionError(f"workflow {workflow_id} could not be started")


def check_steps_recorded_once(contents: StoreContents) -> None:
    """Each step number of a workflow has at most one recorded outcome, and a recorded result
    is exactly what the service kept for that step's idempotency key."""
    for stream_id, events in contents.events.items():
        if not stream_id.startswith(WORKFLOW_ACTOR_TYPE + "/"):
            continue
        workflow_id = stream_id.split("/", 1)[1]
        outcomes: Counter[int] = Counter()
        for stored in events:
            event = mainspring.registry.decode(
                stored.type_name, stored.type_version, stored.payload
            )
            assert isinstance(event, WorkflowEvent)
            if event.kind == "step_completed" and not event.queued:
                outcomes[event.n] += 1
                key = f"{workflow_id}/{event.n}"
                if SERVICE.get(key) != event.data["d"]:
                    raise InvariantViolation(
                        f"[step result is the service's] {key} recorded {event.data['d']!r} "
                        f"but the service kept {SERVICE.get(key)!r}"
                    )
        twice = {n: c for n, c in outcomes.items() if c > 1}
        if twice:
            raise InvariantViolation(
                f"[step recorded once] {workflow_id}: step outcomes recorded twice: {twice}"
            )


def scenario_for(faults: StoreFaults, crashes: int, *, flaky: bool = False) -> Any:
    async def scenario(world: World) -> dict[str, Any]:
        SERVICE.clear()
        ATTEMPTS.clear()
        FLAKY[0] = flaky
        store = world.faulty_store(world.sqlite_store(), faults)
        await world.start_node("n1", [], store, config=SIM_CONFIG, workflows=[order])
        for i in range(len(EXPECTED)):
            await _start(world, f"o-{i}", i)
        for _ in range(crashes):
            await world.sleep(world.random.randint(0, 2 * 3600 * 1000) / 1000)
            world.crash("n1")
            world.record("crash")
            await world.sleep(1)
            await world.restart("n1")
        results = {i: await _eventually_result(world, f"o-{i}") for i in range(len(EXPECTED))}
        await run_checks(world)
        check_steps_recorded_once(await capture(store.inner))
        return {"results": results, "keys": len(SERVICE), "attempts": sum(ATTEMPTS.values())}

    return scenario


@pytest.mark.parametrize("seed", range(8))
def test_workflows_survive_crashes_with_each_step_recorded_once(seed: int) -> None:
    result = run_simulation(seed, scenario_for(StoreFaults(), crashes=2))
    assert result.value["results"] == EXPECTED
    assert result.value["keys"] == 3 * len(EXPECTED)  # three step numbers per workflow, no more
    assert result.value["attempts"] >= result.value["keys"]


@pytest.mark.parametrize("seed", range(4))
def test_workflows_survive_store_faults_and_crashes(seed: int) -> None:
    faults = StoreFaults(error_before_commit=0.05, lost_ack=0.05, latency_ms_max=5)
    result = run_simulation(100 + seed, scenario_for(faults, crashes=1))
    assert result.value["results"] == EXPECTED
    assert result.value["keys"] == 3 * len(EXPECTED)


def test_a_thirty_day_sleep_completes_in_virtual_time() -> None:
    @mainspring.workflow("sim.monthly")
    async def monthly(ctx: WorkflowContext, value: int) -> dict[str, int]:
        started = ctx.now_ms()
        await ctx.sleep(timedelta(days=30))
        return {"value": value, "slept_ms": ctx.now_ms() - started}

    async def scenario(world: World) -> Any:
        await world.start_node(
            "n1", [], world.sqlite_store(), config=SIM_CONFIG, workflows=[monthly]
        )
        await world.call("n1", lambda node: node.workflows.start(monthly, "m-1", 7))
        return await world.call("n1", lambda node: node.workflows.result("m-1"))

    result = run_simulation(1, scenario)
    assert result.value == {"value": 7, "slept_ms": 30 * DAY_S * 1000}
    assert 30 * DAY_S <= result.virtual_s < 31 * DAY_S
    assert run_simulation(1, scenario).trace_digest == result.trace_digest


def test_retried_steps_keep_their_key() -> None:
    result = run_simulation(5, scenario_for(StoreFaults(), crashes=1, flaky=True))
    assert result.value["results"] == EXPECTED
    assert result.value["keys"] == 3 * len(EXPECTED)
    assert result.value["attempts"] >= 2 * result.value["keys"]


def test_an_idempotency_key_that_changes_per_attempt_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The simulation has teeth: break the key's stability and the checks fail."""
    from mainspring.actors.workflow_runtime import WorkflowRun

    def unstable_key(self: WorkflowRun, n: int) -> str:
        step = self.steps.get(n)
        running = step is not None and step.task is not None
        return f"{self.workflow_id}/{n}" + ("" if not running else f"#{id(step.task)}")

    monkeypatch.setattr(WorkflowRun, "idempotency_key", unstable_key)
    with pytest.raises(InvariantViolation, match=r"\[step result is the service's\]"):
        run_simulation(5, scenario_for(StoreFaults(), crashes=1, flaky=True))
