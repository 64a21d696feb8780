"""A message to an idle actor is handled at once, inside ``deliver``, instead of waking the
actor's task: the same single writer, the same durability before the reply, one task switch
less. These tests pin down when that happens, when it must not, and that the outcomes are the
ones the actor's task would have produced."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

import attrs
import pytest

import mainspring
from mainspring import ActorContext, Node, NodeConfig, UsageError, handler
from mainspring.persistence.memory import MemoryStore
from tests.support.accounts import Account, Deposit, GetBalance, Withdraw, Withdrawn
from tests.support.waiting import eventually


@mainspring.message("test.handle-now.slow-deposit")
@attrs.frozen
class SlowDeposit:
    amount_cents: int


@mainspring.message("test.handle-now.wrapped-deposit")
@attrs.frozen
class WrappedDeposit:
    amount_cents: int


@mainspring.message("test.handle-now.sneaky")
@attrs.frozen
class Sneaky:
    pass


def passes_through(function: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator whose wrapper is a plain function returning the wrapped coroutine."""

    @functools.wraps(function)
    def wrapper(*args: Any) -> Any:
        return function(*args)

    return wrapper


class AwaitingAccount(Account):
    """An account with an ``async def`` handler, a wrapped one, and a plain handler that
    returns a coroutine anyway."""

    type_name = "test-awaiting-account"

    @handler
    async def slow_deposit(self, ctx: ActorContext[Any], message: SlowDeposit) -> int:
        await asyncio.sleep(0)
        return self.deposit(ctx, Deposit(message.amount_cents))

    @handler
    @passes_through
    async def wrapped_deposit(self, ctx: ActorContext[Any], message: WrappedDeposit) -> int:
        await asyncio.sleep(0)
        return self.deposit(ctx, Deposit(message.amount_cents))

    @handler
    def sneaky(self, ctx: ActorContext[Any], message: Sneaky) -> Any:
        async def later() -> int:
            return 1

        return later()


def node_on(store: Any, **config: Any) -> Node:
    return Node(
        "node-1",
        store=store,
        actors=[Account, AwaitingAccount],
        config=NodeConfig(**config) if config else None,
    )


async def idle_activation(node: Node, actor: type[Account], actor_id: str) -> Any:
    """The activation of ``actor_id`` once it is hydrated and its task waits for mail."""
    await node.ask(actor, actor_id, GetBalance())
    activation = node.host.live[f"{actor.type_name}/{actor_id}"]

    async def parked() -> bool:
        return activation.can_handle_now()

    await eventually(parked, what="the activation's task waiting for mail")
    return activation


async def test_a_reply_that_needs_no_write_is_ready_when_deliver_returns(
    store_factory: Any,
) -> None:
    async with node_on(store_factory()) as node:
        await node.ask(Account, "a", Deposit(5))
        await idle_activation(node, Account, "a")
        future = node.host.deliver(Account, "a", GetBalance(), None, want_reply=True)
        assert future is not None
        assert future.done()
        assert future.result() == 5


async def test_a_write_handled_at_once_replies_only_after_its_commit(store_factory: Any) -> None:
    store = store_factory()
    async with node_on(store) as node:
        activation = await idle_activation(node, Account, "a")
        future = node.host.deliver(Account, "a", Deposit(7), None, want_reply=True)
        assert future is not None
        # Handled already (the state moves on at commit), not yet acknowledged.
        assert activation.committing
        assert not future.done()
        assert await future == 7
        events = await store.read_events("test-account/a")
        assert [event.seq for event in events] == [1]
        assert activation.state.balance_cents == 7
        assert activation.seq == 1


async def test_messages_to_a_busy_actor_queue_behind_its_commit_in_order() -> None:
    async with node_on(MemoryStore()) as node:
        activation = await idle_activation(node, Account, "a")
        first = node.host.deliver(Account, "a", Deposit(1), None, want_reply=True)
        assert activation.committing
        later = [
            node.host.deliver(Account, "a", Deposit(amount), None, want_reply=True)
            for amount in (2, 3)
        ]
        assert len(activation.mailbox) == 2  # not handled at once: a commit is in flight
        assert [await f for f in (first, *later) if f is not None] == [1, 3, 6]


async def test_async_handlers_run_in_the_actors_task() -> None:
    async with node_on(MemoryStore()) as node:
        activation = await idle_activation(node, AwaitingAccount, "a")
        for message in (SlowDeposit(2), WrappedDeposit(3)):
            future = node.host.deliver(AwaitingAccount, "a", message, None, want_reply=True)
            assert list(activation.mailbox)
            assert not activation.committing
            assert future is not None
            await future
        assert activation.state.balance_cents == 5


async def test_a_plain_handler_returning_an_awaitable_gets_a_clear_error() -> None:
    async with node_on(MemoryStore()) as node:
        await idle_activation(node, AwaitingAccount, "a")
        with pytest.raises(UsageError, match=r"not 'async def'.*declare it 'async def'"):
            await node.ask(AwaitingAccount, "a", Sneaky())
        # The same in the actor's task (a busy actor queues the message).
        node.host.deliver(AwaitingAccount, "a", Deposit(1), None, want_reply=False)
        with pytest.raises(UsageError, match="not 'async def'"):
            await node.ask(AwaitingAccount, "a", Sneaky())
        assert await node.ask(AwaitingAccount, "a", GetBalance()) == 1


async def test_a_full_journal_sends_the_message_to_the_actors_task() -> None:
    async with node_on(MemoryStore()) as node:
        activation = await idle_activation(node, Account, "a")
        journal = node.host.journal
        room, journal._room = journal._room, 0
        try:
            assert not journal.has_room()
            assert not activation.can_handle_now()
        finally:
            journal._room = room
        assert activation.can_handle_now()


async def test_an_actor_waits_for_room_in_a_full_journal_then_commits() -> None:
    async with node_on(MemoryStore()) as node:
        await idle_activation(node, Account, "a")
        journal = node.host.journal
        requests = journal.statistics.requests
        room, journal._room = journal._room, 0
        future = node.host.deliver(Account, "a", Deposit(4), None, want_reply=True)
        assert future is not None
        for _ in range(20):
            await asyncio.sleep(0)
        assert not future.done()  # the actor's task waits for a place in the journal
        assert journal.statistics.requests == requests
        journal._give_back_room(room)
        assert await future == 4
        assert journal.statistics.requests == requests + 1


async def test_a_rejected_message_handled_at_once_writes_nothing(store_factory: Any) -> None:
    store = store_factory()
    async with node_on(store) as node:
        await node.ask(Account, "a", Deposit(5))
        activation = await idle_activation(node, Account, "a")
        future = node.host.deliver(Account, "a", Withdraw(50), None, want_reply=True)
        assert future is not None
        assert future.done()
        with pytest.raises(mainspring.CommandRejected, match="insufficient funds"):
            future.result()
        assert activation.can_handle_now()
        assert [event.seq for event in await store.read_events("test-account/a")] == [1]


async def test_steady_traffic_handled_at_once_keeps_the_actor_active() -> None:
    """Work done without waking the task restarts its idle timeout: an actor that gets a
    message every tenth of its timeout is never passivated for idleness."""
    timeout_s = 0.3
    async with node_on(MemoryStore(), idle_timeout_s=timeout_s) as node:
        activation = await idle_activation(node, Account, "a")
        for _ in range(12):  # 4 timeouts' worth of traffic
            await asyncio.sleep(timeout_s / 10)
            await node.ask(Account, "a", Deposit(1))
        assert node.host.live.get("test-account/a") is activation
        assert node.statistics()["host"]["activations"] == 1

        async def passivated() -> bool:
            return "test-account/a" not in node.host.live

        await eventually(passivated, what="passivation once the traffic stops")


async def test_a_handler_failure_after_emitting_drops_the_activation_and_loses_nothing(
    store_factory: Any,
) -> None:
    store = store_factory()
    async with Node("node-1", store=store, actors=[MutableAccount]) as node:
        await node.ask(MutableAccount, "m", Deposit(4))
        activation = await idle_activation(node, MutableAccount, "m")
        with pytest.raises(RuntimeError, match="after emitting"):
            await node.ask(MutableAccount, "m", Withdraw(1))
        assert activation.dropped
        await eventually(
            lambda: _done(activation.task), what="the dropped activation's task ending"
        )
        # A new activation re-hydrates: the failed handler's event was never written.
        assert await node.ask(MutableAccount, "m", GetBalance()) == 4
        assert node.host.live["test-mutable-account/m"] is not activation


async def _done(task: asyncio.Task[None] | None) -> bool:
    return task is not None and task.done()


@mainspring.state("test.handle-now.mutable-state", version=1)
@attrs.define
class MutableState:
    balance_cents: int = 0


class MutableAccount(Account):
    """Changes its state in place; its withdraw handler fails after emitting."""

    type_name = "test-mutable-account"
    initial_state = None
    state_type = MutableState
    mutable_state = True

    @handler
    def withdraw(self, ctx: ActorContext[Any], message: Withdraw) -> int:
        ctx.emit(Withdrawn(message.amount_cents))
        raise RuntimeError("failed after emitting")

    def evolve(self, state: MutableState | None, event: object) -> MutableState:
        if state is None:  # a new object per activation, changed in place from then on
            state = MutableState()
        if isinstance(event, Withdrawn):
            state.balance_cents -= event.amount_cents
        else:
            state.balance_cents += getattr(event, "amount_cents", 0)
        return state
