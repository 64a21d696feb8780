"""Workflow definitions shared by the workflow tests (module level, so annotations resolve)."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

import attrs

import mainspring
from mainspring import RetryPolicy, StepFailed, WorkflowContext, step_context


@attrs.define
class Effects:
    """A stand-in for an external service: counts attempts and applies each key once."""

    attempts: Counter[str] = attrs.Factory(Counter)
    applied: dict[str, Any] = attrs.Factory(dict)
    fail_times: dict[str, int] = attrs.Factory(dict)
    fail_forever: set[str] = attrs.Factory(set)

    def call(self, name: str, value: Any) -> Any:
        key = step_context().idempotency_key
        self.attempts[key] += 1
        if name in self.fail_forever:
            raise RuntimeError(f"{name} is down")
        remaining = self.fail_times.get(name, 0)
        if remaining:
            self.fail_times[name] = remaining - 1
            raise ConnectionError(f"{name} failed transiently")
        return self.applied.setdefault(key, value)


EFFECTS = Effects()
"""Reset by the tests (``reset_effects``)."""


def reset_effects() -> Effects:
    """A fresh ``EFFECTS`` for one test."""
    global EFFECTS
    EFFECTS = Effects()
    return EFFECTS


FAST_RETRY = RetryPolicy(initial_interval=0.01, max_interval=0.05, max_attempts=4)


async def effect(name: str, value: Any) -> Any:
    """A step with an external effect keyed by its idempotency key."""
    await asyncio.sleep(0)
    return EFFECTS.call(name, value)


def sync_effect(name: str, value: Any) -> Any:
    """The same as a plain function (runs in a thread)."""
    return EFFECTS.call(name, value)


async def key_of_step() -> dict[str, Any]:
    """Returns what the step knows about itself."""
    step = step_context()
    return {"key": step.idempotency_key, "attempt": step.attempt, "step": step.step}


@mainspring.workflow("test.pipeline")
async def pipeline(ctx: WorkflowContext, value: int) -> dict[str, Any]:
    """Three steps, one of them a plain function, and a durable sleep."""
    first = await ctx.step(effect, "a", value + 1, retry=FAST_RETRY)
    second = await ctx.step(sync_effect, "b", first * 2, retry=FAST_RETRY)
    await ctx.sleep(0.05)
    third = await ctx.step(effect, "c", second + 3, retry=FAST_RETRY)
    return {"result": third, "uuid": ctx.uuid(), "random": ctx.random(), "now": ctx.now_ms()}


@mainspring.workflow("test.keys")
async def keys(ctx: WorkflowContext, _: None) -> list[dict[str, Any]]:
    """Records the step context of two steps."""
    return [await ctx.step(key_of_step), await ctx.step(key_of_step)]


@mainspring.workflow("test.saga")
async def saga_workflow(ctx: WorkflowContext, value: int) -> str:
    """Reserve, then charge (which may fail for good): compensate the reservation."""
    saga = ctx.saga()
    await ctx.step(effect, "reserve", value, retry=FAST_RETRY)
    saga.add(effect, "release", value, retry=FAST_RETRY, name="release")
    try:
        await ctx.step(effect, "charge", value, retry=FAST_RETRY)
    except StepFailed:
        await saga.compensate()
        return "compensated"
    return "charged"


@mainspring.workflow("test.fragile")
async def fragile(ctx: WorkflowContext, value: int) -> int:
    """Fails when its ``charge`` step fails for good (no compensation): retry material."""
    first: int = await ctx.step(effect, "reserve", value, retry=FAST_RETRY)
    charged: int = await ctx.step(effect, "charge", first + 1, retry=FAST_RETRY)
    return charged + 1


class Refused(Exception):
    """Never retried."""


async def refuse() -> None:
    """Always refuses."""
    EFFECTS.attempts["refuse"] += 1
    raise Refused("no")


@mainspring.workflow("test.non_retryable")
async def non_retryable(ctx: WorkflowContext, _: None) -> str:
    """A step whose error is not retryable fails at its first attempt."""
    try:
        await ctx.step(refuse, retry=RetryPolicy(non_retryable=(Refused,), max_attempts=10))
    except StepFailed as error:
        return f"{error.error_type} after {error.attempts}"
    return "unreachable"


async def slow_step(seconds: float) -> str:
    """Takes ``seconds`` on its first attempt, returns at once afterwards."""
    step = step_context()
    if step.attempt == 1:
        await asyncio.sleep(seconds)
    return f"attempt {step.attempt}"


async def silent_step(seconds: float) -> str:
    """Sends no heartbeat on its first attempt; beats on later ones."""
    step = step_context()
    if step.attempt == 1:
        await asyncio.sleep(seconds)
        return "never"
    for _ in range(3):
        step.heartbeat()
        await asyncio.sleep(0.01)
    return f"attempt {step.attempt}"


@mainspring.workflow("test.timeouts")
async def timeouts(ctx: WorkflowContext, _: None) -> list[str]:
    """An attempt timeout and a heartbeat timeout, each retried."""
    fast = RetryPolicy(initial_interval=0.01, max_attempts=3)
    return [
        await ctx.step(slow_step, 30.0, attempt_timeout=0.1, retry=fast),
        await ctx.step(silent_step, 30.0, heartbeat_timeout=0.1, retry=fast),
    ]


@mainspring.workflow("test.signals")
async def signals(ctx: WorkflowContext, expected: int) -> dict[str, Any]:
    """Collects ``expected`` ``item`` signals, then waits (with a timeout) for ``done``."""
    items: list[Any] = []
    ctx.set_query_handler("items", lambda: list(items))
    ctx.set_query_handler("buffered", lambda: ctx.signals_buffered("item"))
    while len(items) < expected:
        items.append(await ctx.wait_for_signal("item"))
    try:
        done = await ctx.wait_for_signal("done", timeout=timedelta(seconds=0.3))
    except TimeoutError:
        done = "timed out"
    return {"items": items, "done": done}


@mainspring.workflow("test.cancellable")
async def cancellable(ctx: WorkflowContext, value: int) -> str:
    """Reserves, then waits for a long time; on cancellation releases and re-raises."""
    await ctx.step(effect, "reserve", value)
    try:
        await ctx.sleep(timedelta(days=1))
    except asyncio.CancelledError:
        await ctx.step(effect, "release", value)
        raise
    return "slept"


@mainspring.workflow("test.gated")
async def gated(ctx: WorkflowContext, _: None) -> list[Any]:
    """A step, a signal, a step."""
    first = await ctx.step(effect, "one", 1)
    signal = await ctx.wait_for_signal("go")
    second = await ctx.step(effect, "two", 2)
    return [first, signal, second]


@mainspring.workflow("test.looping")
async def looping(ctx: WorkflowContext, state: dict[str, int]) -> dict[str, int]:
    """Counts to ``until`` in runs of ``per_run`` steps, continuing as new between runs."""
    count = state["count"]
    for _ in range(state["per_run"]):
        if count >= state["until"]:
            return {"count": count, "run": ctx.run_number}
        count = await ctx.step(effect, "count", count + 1)
    raise mainspring.ContinueAsNew({**state, "count": count})  # = ctx.continue_as_new(...)


@mainspring.workflow("test.child")
async def child(ctx: WorkflowContext, value: int) -> int:
    """Doubles, or fails on a negative value."""
    if value < 0:
        raise ValueError("negative")
    doubled: int = await ctx.step(effect, "double", value * 2)
    return doubled


@mainspring.workflow("test.parent")
async def parent(ctx: WorkflowContext, values: list[int]) -> dict[str, Any]:
    """Runs one child per value, concurrently."""
    outcomes: list[Any] = []
    results = await asyncio.gather(
        *(ctx.child(child, f"{ctx.workflow_id}-child-{i}", v) for i, v in enumerate(values)),
        return_exceptions=True,
    )
    for result in results:
        if isinstance(result, mainspring.ChildWorkflowFailed):
            outcomes.append(f"failed: {result.status}")
        else:
            outcomes.append(result)
    return {"children": outcomes}


@mainspring.workflow("test.idle_child")
async def idle_child(ctx: WorkflowContext, _: None) -> str:
    """Waits for a ``go`` signal and returns its payload."""
    return str(await ctx.wait_for_signal("go"))


@mainspring.workflow("test.leaving_parent")
async def leaving_parent(ctx: WorkflowContext, how: str) -> str:
    """Starts two idle children, ``-kept`` (cancelled when this run ends) and ``-left``
    (abandoned), then: ``wait`` awaits ``-kept``; ``complete`` and ``fail`` wait for an ``end``
    signal and then return or raise without waiting for either child. Anything else is passed
    as ``on_parent_close`` of a first child."""
    if how not in ("wait", "complete", "fail"):  # then it is a policy, to be refused
        await ctx.child(idle_child, f"{ctx.workflow_id}-bad", None, on_parent_close=how)
    kept = asyncio.ensure_future(ctx.child(idle_child, f"{ctx.workflow_id}-kept", None))
    left = asyncio.ensure_future(
        ctx.child(idle_child, f"{ctx.workflow_id}-left", None, on_parent_close="abandon")
    )
    if how == "wait":
        return await kept
    await ctx.wait_for_signal("end")
    for task in (kept, left):
        task.cancel()  # stop waiting for them here; what happens to the children is the policy's
    if how == "fail":
        raise ValueError("the parent fails")
    return "done"


@mainspring.workflow("test.child_then_charge")
async def child_then_charge(ctx: WorkflowContext, _: None) -> str:
    """Starts the idle child ``-c``, then runs a ``charge`` step, then returns the child's
    result: a failed charge leaves the child running while this run waits for a retry."""
    child = asyncio.ensure_future(ctx.child(idle_child, f"{ctx.workflow_id}-c", None))
    await ctx.step(effect, "charge", 1, retry=FAST_RETRY)
    return await child


@mainspring.workflow("test.fanout", max_concurrent_steps=100)
async def fanout(ctx: WorkflowContext, spec: dict[str, int]) -> int:
    """``rounds`` rounds of ``width`` concurrent steps: many steps, quickly."""
    total = 0
    for round_number in range(spec["rounds"]):
        values = await asyncio.gather(
            *(ctx.step(plus, round_number, i, name="plus") for i in range(spec["width"]))
        )
        total += sum(values)
    return total


async def plus(a: int, b: int) -> int:
    """A trivial step."""
    return a + b


@mainspring.workflow("test.blocking")
async def blocking(ctx: WorkflowContext, n: int) -> int:
    """Workflow code that computes for a while without yielding."""
    return sum(i * i for i in range(n))


async def long_the_first_time() -> int:
    """Blocks for a minute the first time it starts (per key); returns the number of starts."""
    key = step_context().idempotency_key
    EFFECTS.attempts[key] += 1
    if EFFECTS.attempts[key] == 1:
        await asyncio.sleep(60)
    return EFFECTS.attempts[key]


@mainspring.workflow("test.interrupted")
async def interrupted(ctx: WorkflowContext, _: None) -> int:
    """One long step."""
    starts: int = await ctx.step(long_the_first_time)
    return starts


@mainspring.workflow("test.bounded_parent", max_concurrent_children=2)
async def bounded_parent(ctx: WorkflowContext, values: list[int]) -> list[Any]:
    """Fans out over more children than it may wait on at once."""
    return list(
        await asyncio.gather(
            *(ctx.child(child, f"{ctx.workflow_id}-c{i}", v) for i, v in enumerate(values))
        )
    )
