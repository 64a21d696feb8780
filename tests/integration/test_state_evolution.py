"""An actor whose state class changed shape still activates (all stores).

Each phase runs a node with its own codec registry, as two deployments of different code would.
"""

from __future__ import annotations

from typing import Any

import attrs

import mainspring
from mainspring import ActorContext, Node, handler
from mainspring.codec import Registry


@attrs.frozen
class Added:
    amount: int


@attrs.frozen
class Add:
    amount: int


@attrs.frozen
class Read:
    pass


@attrs.frozen
class TotalV1:
    total: int = 0


@attrs.frozen
class TotalV2:
    """The state gained a field and renamed one."""

    sum_cents: int = 0
    additions: int = 0


def registry_with_events() -> Registry:
    registry = Registry()
    registry.register(Added, "evolution.added", 1, kind="event")
    return registry


def v1_actor(base_state: Any, state_version: int = 1) -> type[mainspring.Actor[Any]]:
    class CounterV1(mainspring.Actor[Any]):
        type_name = "evolution-counter"
        initial_state = base_state
        snapshot_every = 5

        @handler(Add)
        def add(self, ctx: ActorContext[Any], message: Add) -> None:
            ctx.emit(Added(message.amount))

        @handler(Read)
        def read(self, ctx: ActorContext[Any], message: Read) -> Any:
            return ctx.state

        def evolve(self, state: Any, event: Added) -> Any:
            if isinstance(state, TotalV1):
                return TotalV1(state.total + event.amount)
            return state + event.amount

    CounterV1.state_version = state_version
    return CounterV1


class CounterV2(mainspring.Actor[TotalV2]):
    type_name = "evolution-counter"
    initial_state = TotalV2()
    snapshot_every = 5

    @handler(Add)
    def add(self, ctx: ActorContext[TotalV2], message: Add) -> None:
        ctx.emit(Added(message.amount))

    @handler(Read)
    def read(self, ctx: ActorContext[TotalV2], message: Read) -> TotalV2:
        return ctx.state

    def evolve(self, state: TotalV2, event: Added) -> TotalV2:
        return TotalV2(state.sum_cents + event.amount, state.additions + 1)


async def run_v1(store: Any, registry: Registry, actor: type[mainspring.Actor[Any]]) -> None:
    async with Node("node-1", store=store, actors=[actor], codec=registry) as node:
        for amount in range(1, 13):  # 12 events: snapshots at 5 and 10, then one at passivation
            await node.ask(actor, "c", Add(amount))


async def test_a_registered_state_is_upcast_from_its_snapshot(store_factory: Any) -> None:
    old = registry_with_events()
    old.register(TotalV1, "evolution.total", 1, kind="state")
    await run_v1(store_factory(), old, v1_actor(TotalV1()))

    new = registry_with_events()
    new.register(TotalV2, "evolution.total", 2, kind="state")

    @new.upcaster("evolution.total", from_version=1)
    def total_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
        return {"sum_cents": data["total"], "additions": -1}  # unknown before v2: marked

    async with Node("node-1", store=store_factory(), actors=[CounterV2], codec=new) as node:
        state = await node.ask(CounterV2, "c", Read())
        statistics = node.statistics()["host"]
    # Decoded from the v1 snapshot through the upcaster: no event was replayed.
    assert state == TotalV2(sum_cents=78, additions=-1)
    assert statistics["events_replayed"] == 0
    assert statistics["snapshot_fallbacks"] == 0


async def test_a_changed_state_without_upcaster_falls_back_to_full_replay(
    store_factory: Any,
) -> None:
    old = registry_with_events()
    old.register(TotalV1, "evolution.total", 1, kind="state")
    await run_v1(store_factory(), old, v1_actor(TotalV1()))

    new = registry_with_events()
    new.register(TotalV2, "evolution.total", 2, kind="state")  # no upcaster from v1
    async with Node("node-1", store=store_factory(), actors=[CounterV2], codec=new) as node:
        state = await node.ask(CounterV2, "c", Read())
        statistics = node.statistics()["host"]
    assert state == TotalV2(sum_cents=78, additions=12)
    assert statistics["snapshot_fallbacks"] == 1
    assert statistics["events_replayed"] == 12
    reader = store_factory()
    await reader.open()
    snapshot = await reader.read_snapshot("evolution-counter/c")
    assert snapshot is not None
    assert (snapshot.type_name, snapshot.type_version, snapshot.seq) == ("evolution.total", 2, 12)
    # The rewritten snapshot serves the next activation without replay.
    async with Node("node-1", store=store_factory(), actors=[CounterV2], codec=new) as node:
        assert await node.ask(CounterV2, "c", Read()) == TotalV2(78, 12)
        assert node.statistics()["host"]["events_replayed"] == 0


async def test_an_unregistered_state_with_a_new_state_version_is_replayed(
    store_factory: Any,
) -> None:
    registry = registry_with_events()
    await run_v1(store_factory(), registry, v1_actor(0))  # state: a plain int
    bumped = v1_actor(0, state_version=2)
    async with Node("node-1", store=store_factory(), actors=[bumped], codec=registry) as node:
        assert await node.ask(bumped, "c", Read()) == 78
        statistics = node.statistics()["host"]
    assert statistics["snapshot_fallbacks"] == 1
    assert statistics["events_replayed"] == 12
