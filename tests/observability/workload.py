"""Workflows and an actor that exercise every metric family (module level, so annotations
resolve)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any

import attrs

import mainspring
from mainspring import ActorContext, RetryPolicy, StepFailed, WorkflowContext, handler, step_context

ATTEMPTS: Counter[str] = Counter()
"""Attempts per step idempotency key (reset by the tests)."""

FLAKY_RETRY = RetryPolicy(initial_interval=0.01, max_interval=0.02, max_attempts=3)
ONCE = RetryPolicy(max_attempts=1)


async def flaky_charge(amount: int) -> int:
    """Fails its first attempt with a ConnectionError, then succeeds."""
    key = step_context().idempotency_key
    ATTEMPTS[key] += 1
    if ATTEMPTS[key] == 1:
        raise ConnectionError("the payment service hung up")
    return amount


async def broken_notify() -> None:
    """Always fails."""
    raise LookupError("no such recipient")


@mainspring.workflow("obs.order")
async def order(ctx: WorkflowContext, amount: int) -> int:
    """A retried step, a step that fails for good (handled), a durable sleep."""
    charged = await ctx.step(flaky_charge, amount, retry=FLAKY_RETRY)
    with contextlib.suppress(StepFailed):
        await ctx.step(broken_notify, retry=ONCE)
    await ctx.sleep(0.05)
    return charged


@mainspring.workflow("obs.waiting")
async def waiting(ctx: WorkflowContext, _: None) -> Any:
    """Waits for one signal."""
    return await ctx.wait_for_signal("go")


@mainspring.workflow("obs.doomed")
async def doomed(ctx: WorkflowContext, _: None) -> None:
    """Fails in a step, so the workflow fails."""
    await ctx.step(broken_notify, retry=ONCE)


async def stuck_until_released() -> str:
    """Blocks its first attempt until the test releases it (or the node stops it)."""
    key = step_context().idempotency_key
    ATTEMPTS[key] += 1
    if ATTEMPTS[key] == 1:
        await asyncio.sleep(3600)
    return "done"


@mainspring.workflow("obs.interrupted")
async def interrupted(ctx: WorkflowContext, _: None) -> str:
    """Its first step attempt never ends: only a restart finishes it."""
    return await ctx.step(stuck_until_released)


@mainspring.message("obs.gate.wait")
@attrs.frozen
class WaitAtGate:
    pass


@mainspring.message("obs.gate.touch")
@attrs.frozen
class Touch:
    pass


@mainspring.event("obs.gate.touched")
@attrs.frozen
class Touched:
    pass


GATE: dict[str, asyncio.Event] = {}


class Gate(mainspring.Actor[int]):
    """An actor whose ``WaitAtGate`` handler blocks until ``GATE['open']`` is set."""

    type_name = "obs-gate"
    initial_state = 0

    @handler
    async def wait(self, ctx: ActorContext[int], message: WaitAtGate) -> None:
        await GATE["open"].wait()

    @handler
    def touch(self, ctx: ActorContext[int], message: Touch) -> int:
        ctx.emit(Touched())
        return ctx.state

    def evolve(self, state: int, event: Any) -> int:
        return state + 1


async def shout(word: str) -> str:
    """A step of the child workflow."""
    return word.upper()


@mainspring.workflow("obs.child")
async def child(ctx: WorkflowContext, word: str) -> str:
    """One step."""
    return await ctx.step(shout, word)


@mainspring.workflow("obs.parent")
async def parent(ctx: WorkflowContext, word: str) -> str:
    """Runs ``child`` and returns its result."""
    return await ctx.child(child, f"{ctx.workflow_id}-child", word)


@mainspring.workflow("obs.rounds")
async def rounds(ctx: WorkflowContext, number: int) -> int:
    """One step per run; continues as new until the third run."""
    await ctx.step(shout, f"round {number}")
    if number < 3:
        ctx.continue_as_new(number + 1)
    return number
