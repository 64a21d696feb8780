"""Node behaviour over every store: durability before replies, exactly-once transitions,
snapshots, hydration, outbox, reminders, passivation and fencing."""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import attrs
import pytest

import mainspring
from mainspring import (
    ActorContext,
    CommandRejected,
    Fenced,
    LeaseHeld,
    Node,
    NodeClosed,
    NodeConfig,
    Overloaded,
    UnknownActorType,
    UsageError,
    crashpoints,
    handler,
)
from mainspring.persistence.store import AppendRequest, OutboxMessage
from tests.support.accounts import (
    Account,
    AccountState,
    Deposit,
    Deposited,
    GetBalance,
    ScheduleInterest,
    Transfer,
    Withdraw,
)
from tests.support.waiting import eventually

FAST = NodeConfig(
    timer_poll_interval_s=0.05,
    outbox_poll_interval_s=0.05,
    outbox_retry_interval_s=0.05,
    lease_ttl_s=5.0,
    lease_renew_interval_s=1.0,
)


def node_on(store: Any, node_id: str = "node-1", **config: Any) -> Node:
    settings = attrs.evolve(FAST, **config) if config else FAST
    return Node(node_id, store=store, actors=[Account], config=settings)


async def reader_of(store_factory: Any) -> Any:
    """An opened store over the test's data, usable after a node closed its own."""
    reader = store_factory()
    await reader.open()
    return reader


async def replayed_state(store: Any, stream_id: str) -> AccountState:
    """The state rebuilt from the full event log, independent of any snapshot."""
    return mainspring.replay(Account, await store.read_events(stream_id))


async def test_reply_comes_after_the_events_are_durable(store_factory: Any) -> None:
    async with node_on(store_factory()) as node:
        assert await node.ask(Account, "a", Deposit(70)) == 70
        assert await node.ask("test-account", "a", Withdraw(20)) == 50
        # A second store object sees the events the moment the reply arrived.
        reader = store_factory()
        await reader.open()
        stored = await reader.read_events("test-account/a")
        assert [(e.seq, e.type_name) for e in stored] == [
            (1, "test.account.deposited"),
            (2, "test.account.withdrawn"),
        ]


async def test_rejected_and_failing_handlers_write_nothing(store_factory: Any) -> None:
    store = store_factory()
    async with node_on(store) as node:
        await node.ask(Account, "a", Deposit(10))
        with pytest.raises(CommandRejected, match="insufficient funds") as caught:
            await node.ask(Account, "a", Withdraw(11))
        assert caught.value.code == "insufficient_funds"
        with pytest.raises(CommandRejected):
            await node.ask(Account, "a", Deposit(-5))
        assert await node.ask(Account, "a", GetBalance()) == 10
        assert [e.seq for e in await store.read_events("test-account/a")] == [1]


async def test_concurrent_asks_to_one_actor_are_serialised(store_factory: Any) -> None:
    store = store_factory()
    async with node_on(store) as node:
        replies = await asyncio.gather(*(node.ask(Account, "a", Deposit(1)) for _ in range(200)))
        # Each reply is the balance right after that deposit: all distinct, 1..200.
        assert sorted(replies) == list(range(1, 201))
        heads = [e.seq for e in await store.read_events("test-account/a")]
        assert heads == list(range(1, 201))


async def test_many_actors_share_group_commits(store_factory: Any) -> None:
    store = store_factory()
    async with node_on(store) as node:
        await asyncio.gather(*(node.ask(Account, f"acct-{n}", Deposit(n + 1)) for n in range(300)))
        statistics = node.statistics()["journal"]
        assert statistics["requests"] == 300
        assert statistics["commits"] < statistics["requests"]
        # Their 300 activations took their leases in shared transactions too.
        assert statistics["lease_requests"] == 300
        assert statistics["lease_batches"] < statistics["lease_requests"]
    # And the drain released them in shared transactions.
    assert node.journal.statistics.releases == 300
    assert node.journal.statistics.release_batches < 300
    store = await reader_of(store_factory)
    for n in (0, 150, 299):
        assert (await replayed_state(store, f"test-account/acct-{n}")).balance_cents == n + 1
    assert all(head.owner is None for head in await store.list_streams())
    history = await store.read_lease_history("test-account/acct-7")
    assert [(record.epoch, record.owner) for record in history] == [(1, "node-1")]


async def test_duplicate_message_ids_apply_once_and_return_the_stored_reply(
    store_factory: Any,
) -> None:
    store = store_factory()
    async with node_on(store) as node:
        first = await node.ask(Account, "a", Deposit(5), message_id="pay-1")
        await node.ask(Account, "a", Deposit(1))
        again = await node.ask(Account, "a", Deposit(5), message_id="pay-1")
        assert (first, again) == (5, 5)
        both = await asyncio.gather(
            node.ask(Account, "a", Deposit(7), message_id="pay-2"),
            node.ask(Account, "a", Deposit(7), message_id="pay-2"),
        )
        assert both == [13, 13]
        assert await node.ask(Account, "a", GetBalance()) == 13
        assert node.statistics()["host"]["duplicates"] == 2


async def test_dedupe_survives_restart_and_snapshots(store_factory: Any) -> None:
    store = store_factory()
    async with node_on(store) as node:
        await node.ask(Account, "a", Deposit(5), message_id="pay-1")
        for _ in range(25):  # several snapshots (snapshot_every = 10) after the id was recorded
            await node.ask(Account, "a", Deposit(1))
    async with node_on(store_factory()) as node:
        assert await node.ask(Account, "a", Deposit(5), message_id="pay-1") == 5
        assert await node.ask(Account, "a", GetBalance()) == 30


async def test_dedupe_window_is_bounded(store_factory: Any) -> None:
    class SmallWindow(mainspring.Actor[AccountState]):
        type_name = "test-small-window"
        initial_state = AccountState()
        dedupe_window = 3

        @handler(Deposit)
        def deposit(self, ctx: ActorContext[AccountState], message: Deposit) -> int:
            ctx.emit(Deposited(message.amount_cents))
            return ctx.state.balance_cents

        @handler(GetBalance)
        def balance(self, ctx: ActorContext[AccountState], message: GetBalance) -> int:
            return ctx.state.balance_cents

        def evolve(self, state: AccountState, event: Any) -> AccountState:
            return AccountState(state.balance_cents + event.amount_cents, state.operations + 1)

    store = store_factory()
    async with Node("node-1", store=store, actors=[SmallWindow], config=FAST) as node:
        for n in range(5):
            await node.ask(SmallWindow, "a", Deposit(1), message_id=f"m{n}")
        assert await node.ask(SmallWindow, "a", Deposit(1), message_id="m4") == 5  # in window
        assert await node.ask(SmallWindow, "a", Deposit(1), message_id="m0") == 6  # forgotten
    store = await reader_of(store_factory)
    assert [r.message_id for r in await store.read_dedupe("test-small-window/a", 10)] == [
        "m3",
        "m4",
        "m0",
    ]


async def test_hydration_from_snapshot_plus_tail_equals_full_replay(store_factory: Any) -> None:
    store = store_factory()
    async with node_on(store) as node:
        for n in range(57):
            await node.ask(Account, "a", Deposit(n + 1))
        await node.ask(Account, "a", Withdraw(100))
        in_memory = node.host.live["test-account/a"].state
    store = await reader_of(store_factory)
    snapshot = await store.read_snapshot("test-account/a")
    assert snapshot is not None
    assert snapshot.seq == 58  # written on passivation at shutdown
    async with node_on(store_factory()) as node:
        assert await node.ask(Account, "a", GetBalance()) == in_memory.balance_cents
        assert node.host.live["test-account/a"].state == in_memory
        assert node.statistics()["host"]["events_replayed"] == 0
    store = await reader_of(store_factory)
    assert await replayed_state(store, "test-account/a") == in_memory


async def test_tail_after_a_snapshot_is_replayed(store_factory: Any) -> None:
    store = store_factory()
    async with node_on(store, snapshot_on_passivate=False) as node:
        for _ in range(14):
            await node.ask(Account, "a", Deposit(1))
    store = await reader_of(store_factory)
    snapshot = await store.read_snapshot("test-account/a")
    assert snapshot is not None
    assert snapshot.seq == 10
    async with node_on(store_factory()) as node:
        assert await node.ask(Account, "a", GetBalance()) == 14
        assert node.statistics()["host"]["events_replayed"] == 4


async def test_outbox_delivers_a_transfer_exactly_once(store_factory: Any) -> None:
    store = store_factory()
    async with node_on(store) as node:
        await node.ask(Account, "a", Deposit(100))
        assert await node.ask(Account, "a", Transfer("b", 30)) == 70

        async def delivered() -> bool:
            return bool(await node.ask(Account, "b", GetBalance()) == 30)

        await eventually(delivered, what="the transfer's deposit")
        await eventually(
            lambda: _outbox_empty(node.store), what="the outbox row to be deleted after delivery"
        )
        assert node.statistics()["scans"]["outbox_delivered"] == 1


async def _outbox_empty(store: Any) -> bool:
    return await store.read_outbox(10) == []


async def test_outbox_left_by_a_crash_is_delivered_and_deduplicated(store_factory: Any) -> None:
    """A sender committed its event and outbox row, then its node died before delivery; the
    receiver also already got the message once. The relay delivers it, and it applies once."""
    store = store_factory()
    await store.open()
    lease = await store.acquire_lease("test-account/a", "dead-node", 0, 1)
    deposit = mainspring.registry.encode(Deposit(40))
    message = OutboxMessage(
        "test-account/a#1.1",
        "test-account/a",
        "test-account",
        "b",
        deposit.type_name,
        deposit.type_version,
        deposit.payload,
        0,
    )
    [result] = await store.append_batch(
        [AppendRequest("test-account/a", lease.epoch, 0, (), 0, outbox=[message])]
    )
    assert result is None
    async with node_on(store_factory()) as node:
        assert await node.ask(Account, "b", Deposit(40), message_id=message.message_id) == 40
        await eventually(lambda: _outbox_empty(node.store), what="the relay to deliver the message")
        assert await node.ask(Account, "b", GetBalance()) == 40


async def test_reminders_fire_and_survive_a_restart(store_factory: Any) -> None:
    store = store_factory()
    async with node_on(store) as node:
        await node.ask(Account, "a", ScheduleInterest(after_ms=50, amount_cents=7))

        async def paid() -> bool:
            return bool(await node.ask(Account, "a", GetBalance()) == 7)

        await eventually(paid, what="the interest reminder")
        await node.ask(Account, "a", ScheduleInterest(after_ms=400, amount_cents=3))
    # The node stopped before the second reminder was due; a new node fires it.
    async with node_on(store_factory()) as node:

        async def paid_again() -> bool:
            return bool(await node.ask(Account, "a", GetBalance()) == 10)

        await eventually(paid_again, what="the reminder set before the restart")

        async def timer_deleted() -> bool:
            return await node.store.next_timer_due_ms() is None

        # The fired timer is deleted right after its reminder's handler committed.
        await eventually(timer_deleted, what="the fired timer's deletion")


async def test_idle_actors_passivate_snapshot_and_release_their_lease(store_factory: Any) -> None:
    store = store_factory()
    async with node_on(store, idle_timeout_s=0.1) as node:
        await node.ask(Account, "a", Deposit(3))

        async def passivated() -> bool:
            head = await store.read_head("test-account/a")
            return not node.host.live and head is not None and head.owner is None

        await eventually(passivated, what="passivation and lease release after the idle timeout")
        snapshot = await store.read_snapshot("test-account/a")
        assert snapshot is not None
        assert snapshot.seq == 1
        assert await node.ask(Account, "a", Deposit(1)) == 4  # re-activated on demand
        assert node.statistics()["host"]["activations"] == 2


async def test_stop_waits_for_an_actor_already_passivating_to_release_its_lease(
    store_factory: Any,
) -> None:
    """Goal: a node that stops while an actor is passivating (shed, idle, handed off in a
    cluster) still releases that actor's lease, so its next owner need not wait for expiry.
    Method: hold actor ``a`` at the crash point between its final snapshot and its release
    (it has left the live set by then), stop the node, then let ``a`` go on."""
    reached = asyncio.Event()
    proceed = asyncio.Event()

    async def hold_passivation(name: str) -> None:
        if name == "host.mid_passivation" and not reached.is_set():
            reached.set()
            await proceed.wait()

    store = store_factory()
    restore = crashpoints.install(hold_passivation, None)
    try:
        node = node_on(store, live_actors_max=1)
        await node.start()
        await node.ask(Account, "a", Deposit(1))
        await node.ask(Account, "b", Deposit(1))  # a is shed: it passivates
        await asyncio.wait_for(reached.wait(), 10)
        assert "test-account/a" not in node.host.live
        stopping = asyncio.ensure_future(node.stop())
        done, _ = await asyncio.wait({stopping}, timeout=0.3)
        assert not done, "the node stopped while an actor was still passivating"
        proceed.set()
        await asyncio.wait_for(stopping, 10)
    finally:
        restore()
    reader = await reader_of(store_factory)
    try:
        for account in ("a", "b"):
            head = await reader.read_head(f"test-account/{account}")
            assert head is not None
            assert head.owner is None, f"the lease of {account!r} was kept"
    finally:
        await reader.close()


async def test_an_idle_actor_keeps_none_of_the_messages_it_handled(store_factory: Any) -> None:
    """Once a batch is handled and committed, the waiting activation lets its messages go: a
    live actor costs its state, not its last mail (nor what that mail references)."""
    async with node_on(store_factory()) as node:
        deposits = [Deposit(1), Deposit(2)]
        gone = [weakref.ref(deposit) for deposit in deposits]
        assert await asyncio.gather(*(node.ask(Account, "a", d) for d in deposits)) == [1, 3]
        del deposits
        await asyncio.sleep(0)  # the activation's loop goes back to waiting
        assert node.host.live  # still active, and idle
        assert [ref() for ref in gone] == [None, None]


async def test_least_recently_used_actors_are_passivated_beyond_the_bound(
    store_factory: Any,
) -> None:
    async with node_on(store_factory(), live_actors_max=3) as node:
        for n in range(10):
            await node.ask(Account, f"acct-{n}", Deposit(1))

        async def bounded() -> bool:
            return len(node.host.live) <= 3

        await eventually(bounded, what="the live-actor bound")
        assert "test-account/acct-9" in node.host.live


async def test_a_full_mailbox_refuses_with_overloaded(store_factory: Any) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    class Slow(mainspring.Actor[int]):
        type_name = "test-slow"
        initial_state = 0

        @handler(GetBalance)
        async def wait(self, ctx: ActorContext[int], message: GetBalance) -> int:
            started.set()
            await release.wait()
            return 0

    async with Node(
        "node-1",
        store=store_factory(),
        actors=[Slow],
        config=attrs.evolve(FAST, mailbox_messages_max=2, handler_batch_max=1),
    ) as node:
        first = asyncio.ensure_future(node.ask(Slow, "s", GetBalance()))
        # Wait until the first message is being handled, so the mailbox is empty (hydrating
        # the actor can take longer than any fixed sleep on a busy machine).
        await asyncio.wait_for(started.wait(), 10)
        queued = [asyncio.ensure_future(node.ask(Slow, "s", GetBalance())) for _ in range(2)]
        await asyncio.sleep(0)  # let both queue
        assert len(node.host.live["test-slow/s"].mailbox) == 2
        with pytest.raises(Overloaded, match="mailbox") as caught:
            await node.ask(Slow, "s", GetBalance())
        assert caught.value.limit == 2
        release.set()
        assert await asyncio.gather(first, *queued) == [0, 0, 0]


async def test_a_stolen_lease_fences_the_old_activation(store_factory: Any) -> None:
    store = store_factory()
    async with node_on(store) as node:
        await node.ask(Account, "a", Deposit(1))
        other = store_factory()
        await other.open()
        stolen = await other.acquire_lease(
            "test-account/a", "node-2", node.clock.wall_ms(), 60_000, steal=True
        )
        with pytest.raises(Fenced):
            await node.ask(Account, "a", Deposit(1))
        # The fenced activation is gone; the new owner's unexpired lease keeps node-1 out.
        assert "test-account/a" not in node.host.live
        with pytest.raises(LeaseHeld) as caught:
            await node.ask(Account, "a", Deposit(1))
        assert caught.value.owner == "node-2"
        head = await other.read_head("test-account/a")
        assert head is not None
        assert (head.epoch, head.head_seq) == (stolen.epoch, 1)


async def test_leases_of_live_actors_are_renewed(store_factory: Any) -> None:
    store = store_factory()
    async with node_on(store, lease_ttl_s=0.4, lease_renew_interval_s=0.1) as node:
        await node.ask(Account, "a", Deposit(1))
        first = await store.read_head("test-account/a")
        assert first is not None

        async def renewed() -> bool:
            head = await store.read_head("test-account/a")
            return head is not None and head.lease_expires_at_ms > first.lease_expires_at_ms

        await eventually(renewed, what="lease renewal")
        head = await store.read_head("test-account/a")
        assert head is not None
        assert (head.owner, head.epoch) == ("node-1", first.epoch)


async def test_stop_drains_mailboxes_and_releases_every_lease(store_factory: Any) -> None:
    store = store_factory()
    node = node_on(store)
    await node.start()
    replies = [asyncio.ensure_future(node.ask(Account, f"x{n}", Deposit(1))) for n in range(20)]
    await asyncio.sleep(0)
    await node.stop()
    assert [await reply for reply in replies] == [1] * 20
    reader = await reader_of(store_factory)
    assert all(head.owner is None for head in await reader.list_streams())
    with pytest.raises(NodeClosed):
        await node.ask(Account, "a", Deposit(1))


async def test_bad_input_gets_clear_errors(store_factory: Any) -> None:
    node = node_on(store_factory())
    with pytest.raises(UsageError, match="not started"):
        await node.ask(Account, "a", Deposit(1))
    async with node:
        with pytest.raises(UsageError, match="actor_id"):
            await node.ask(Account, "", Deposit(1))
        with pytest.raises(UsageError, match="message_id"):
            await node.ask(Account, "a", Deposit(1), message_id="")
        with pytest.raises(UnknownActorType, match="test-account"):
            await node.ask("no-such-type", "a", Deposit(1))
        with pytest.raises(UsageError, match="no handler for Withdrawn"):
            await node.ask(Account, "a", _withdrawn_event())
        with pytest.raises(UsageError, match="timeout_s"):
            await node.ask(Account, "a", Deposit(1), timeout_s=0)
        assert not node.host.live  # nothing was activated by bad input


def _withdrawn_event() -> object:
    from tests.support.accounts import Withdrawn

    return Withdrawn(1)


async def test_a_message_that_only_sends_is_deduplicated(store_factory: Any) -> None:
    """A handler that emits no event but sends through the outbox still records its id."""

    class Forwarder(mainspring.Actor[int]):
        type_name = "test-forwarder"
        initial_state = 0

        @handler(GetBalance)
        def read(self, ctx: ActorContext[int], message: GetBalance) -> int:
            return ctx.state

        @handler(Transfer)
        def forward(self, ctx: ActorContext[int], message: Transfer) -> str:
            ctx.tell(Account, message.to_account, Deposit(message.amount_cents))
            return "sent"

    store = store_factory()
    async with Node("node-1", store=store, actors=[Account, Forwarder], config=FAST) as node:
        # Same batch: a read-only message, then a send-only message with an id.
        replies = await asyncio.gather(
            node.ask(Forwarder, "f", GetBalance()),
            node.ask(Forwarder, "f", Transfer("b", 9), message_id="fwd-1"),
        )
        assert replies == [0, "sent"]
        assert await node.ask(Forwarder, "f", Transfer("b", 9), message_id="fwd-1") == "sent"

        async def delivered_once() -> bool:
            return bool(await node.ask(Account, "b", GetBalance()) == 9)

        await eventually(delivered_once, what="the forwarded deposit")
        await eventually(lambda: _outbox_empty(node.store), what="the outbox to drain")
        assert await node.ask(Account, "b", GetBalance()) == 9
        assert [r.message_id for r in await node.store.read_dedupe("test-forwarder/f", 5)] == [
            "fwd-1"
        ]


async def test_an_actor_without_a_dedupe_window_records_no_ids(store_factory: Any) -> None:
    class Forgetful(mainspring.Actor[AccountState]):
        type_name = "test-forgetful"
        initial_state = AccountState()
        dedupe_window = 0

        @handler(Deposit)
        def deposit(self, ctx: ActorContext[AccountState], message: Deposit) -> int:
            ctx.emit(Deposited(message.amount_cents))
            return ctx.state.balance_cents

        def evolve(self, state: AccountState, event: Any) -> AccountState:
            return AccountState(state.balance_cents + event.amount_cents, state.operations + 1)

    async with Node("node-1", store=store_factory(), actors=[Forgetful], config=FAST) as node:
        assert await node.ask(Forgetful, "f", Deposit(2), message_id="m") == 2
        assert await node.ask(Forgetful, "f", Deposit(2), message_id="m") == 4  # not deduplicated
        assert await node.store.read_dedupe("test-forgetful/f", 10) == []
