"""Scenarios driven by a ``FaultProfile``: a ledger load and workflows with effects, each with a
safety phase (faults on) and a liveness phase (``world.heal()``), then every checker."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

import attrs

import mainspring
from mainspring import NodeConfig, RetryPolicy, WorkflowContext
from mainspring.errors import (
    ConcurrencyConflict,
    Fenced,
    LeaseHeld,
    NodeClosed,
    Overloaded,
    StoreUnavailable,
)
from mainspring.persistence.store import Store, stream_id_of
from mainspring.simulations import (
    FaultyStore,
    InvariantViolation,
    NodeDown,
    World,
    check_liveness,
    run_checks,
)
from tests.simulation.scenarios import SIM_CONFIG
from tests.support.ledger import Add, Ledger

RETRYABLE = (
    StoreUnavailable,
    Fenced,
    ConcurrencyConflict,
    LeaseHeld,
    NodeClosed,
    NodeDown,
    Overloaded,
    TimeoutError,
)
ASK_TIMEOUT_S = 2.0
LIVENESS_ATTEMPTS = 60


async def add_once(world: World, store: FaultyStore, node: str, ledger: str, token: str) -> bool:
    """One ``Add`` with ``token`` as message id; records the acknowledgement."""
    try:
        seq = await world.ask(
            node, Ledger, ledger, Add(token), message_id=token, timeout_s=ASK_TIMEOUT_S
        )
    except RETRYABLE as error:
        world.record("add.failed", f"{ledger}:{token} {type(error).__name__}")
        return False
    assert isinstance(seq, int), seq
    # The ledger replies with its count once the event is applied: the event's seq.
    store.history.acknowledge(stream_id_of(Ledger.type_name, ledger), token, seq)
    return True


def ledger_under_profile(
    *,
    nodes: Sequence[str] = ("n1",),
    tokens: int = 30,
    ledgers: int = 2,
    kind: str = "memory",
    safety_s: float = 20.0,
) -> Callable[[World], Awaitable[dict[str, Any]]]:
    """Clients add tokens (each token is its own message id) through random nodes while the
    profile's faults strike; after ``safety_s`` the world heals and every token is retried
    until acknowledged; then every checker runs and the log must hold each token once."""

    async def scenario(world: World) -> dict[str, Any]:
        inner: Store = world.memory_store() if kind == "memory" else world.sqlite_store()
        store = world.faulty_store(inner)
        for name in nodes:
            await world.start_node(name, [Ledger], store, config=SIM_CONFIG)
        work = [(f"l{index % ledgers}", f"t{index}") for index in range(tokens)]
        done: set[str] = set()

        def any_node() -> str:
            return nodes[world.random.randint(0, len(nodes) - 1)]

        async def client(ledger: str, token: str) -> None:
            await asyncio.sleep(world.random.randint(0, int(safety_s * 1000)) / 1000)
            for attempt in range(3):
                if world.healed:
                    return
                if await add_once(world, store, any_node(), ledger, token):
                    done.add(token)
                    return
                await asyncio.sleep(0.2 * (attempt + 1))

        clients = [asyncio.create_task(client(ledger, token)) for ledger, token in work]
        await world.sleep(safety_s)
        world.heal()
        await asyncio.gather(*clients)
        for ledger, token in work:
            for attempt in range(LIVENESS_ATTEMPTS):
                if token in done:
                    break
                if await add_once(world, store, nodes[attempt % len(nodes)], ledger, token):
                    done.add(token)
                    break
                await asyncio.sleep(0.5)
            else:
                raise InvariantViolation(f"[liveness] {ledger}:{token} never acknowledged")
        await run_checks(world)
        for ledger in sorted({ledger for ledger, _ in work}):
            events = await store.inner.read_events(stream_id_of(Ledger.type_name, ledger))
            logged = sorted(event.message_id or "" for event in events)
            assert logged == sorted(t for owner, t in work if owner == ledger), (ledger, logged)
        return {
            "sometimes": world.sometimes_counts,
            "network": dict(world.network.statistics),
            "store_faults": dict(store.history.faults),
            "outcomes": sorted({append.outcome for append in store.history.appends}),
        }

    return scenario


# Workflows whose steps have effects in the simulated outside world ---------------------------

CURRENT: list[World] = []
"""The world of the running simulation (steps reach its effect ledger through it)."""


async def pay(value: int) -> int:
    """A step: takes a little time, then applies ``value`` under the step's idempotency key."""
    await asyncio.sleep(0.01)
    result: int = CURRENT[-1].effects.apply(value)
    return result


RETRY = RetryPolicy(initial_interval=0.05, max_interval=0.5, max_attempts=None)


@mainspring.workflow("sim.core.payments")
async def payments(ctx: WorkflowContext, value: int) -> int:
    """Two effects around a durable timer; each attempt may take at most one second."""
    first = await ctx.step(pay, value, retry=RETRY, attempt_timeout=1.0)
    await ctx.sleep(timedelta(seconds=5))
    second: int = await ctx.step(pay, first + 100, retry=RETRY, attempt_timeout=1.0)
    return second


WORKFLOW_CONFIG = attrs.evolve(
    SIM_CONFIG, timer_poll_interval_s=10.0, workflow_recovery_interval_s=30.0
)
"""Polls short enough for a liveness bound of minutes: a timer scan that failed (its node was
cut from the store) waits a whole poll interval before it looks again."""


def workflows_under_profile(
    *,
    nodes: Sequence[str] = ("n1",),
    count: int = 5,
    safety_s: float = 30.0,
    config: NodeConfig = WORKFLOW_CONFIG,
) -> Callable[[World], Awaitable[dict[str, Any]]]:
    """Start ``count`` payment workflows through random nodes; heal after ``safety_s``; every
    workflow must close (``check_liveness``) with the expected result, every effect applied at
    most once per key (the ledger checks as it goes) and every checker must pass."""

    async def scenario(world: World) -> dict[str, Any]:
        CURRENT.append(world)
        try:
            store = world.faulty_store(world.sqlite_store())
            for name in nodes:
                await world.start_node(name, [], store, config=config, workflows=[payments])

            async def start(index: int) -> None:
                # Until the heal a partitioned node may hold the workflow's lease for its whole
                # TTL; after it, a start must get through within the liveness bound.
                attempt = 0
                while not world.healed or attempt < LIVENESS_ATTEMPTS:
                    attempt = attempt + 1 if world.healed else 0
                    node = nodes[(index + attempt) % len(nodes)]
                    try:
                        await world.call(
                            node,
                            lambda n: n.workflows.start(payments, f"p-{index}", index),
                            timeout_s=5,
                        )
                        return
                    except RETRYABLE:
                        await world.sleep(1 + world.random.randint(0, len(nodes)))
                raise InvariantViolation(f"[liveness] p-{index} could not be started")

            starts = [asyncio.create_task(start(index)) for index in range(count)]
            await world.sleep(safety_s)
            world.heal()
            await asyncio.gather(*starts)
            checked = await check_liveness(world, within_s=600, poll_s=1)
            assert checked == count, checked
            await run_checks(world)
            results = {}
            for index in range(count):
                for attempt in range(100):
                    node = nodes[attempt % len(nodes)]
                    try:
                        results[index] = await world.call(
                            node, lambda n, i=index: n.workflows.result(f"p-{i}"), timeout_s=30
                        )
                        break
                    except RETRYABLE:
                        await world.sleep(1)
            assert results == {index: index + 100 for index in range(count)}, results
            return {
                "sometimes": world.sometimes_counts,
                "effects": len(world.effects.effects),
                "calls": sum(world.effects.calls.values()),
            }
        finally:
            CURRENT.remove(world)

    return scenario
