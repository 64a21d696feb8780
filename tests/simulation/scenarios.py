"""Scenarios shared by the simulation tests (and run in subprocesses by the determinism test)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from mainspring import NodeConfig
from mainspring.persistence.store import Store
from mainspring.simulations import NodeDown, World
from tests.support.accounts import (
    Account,
    Deposit,
    Deposited,
    GetBalance,
    ScheduleInterest,
    Transfer,
)

DAY_MS = 24 * 3600 * 1000

# The production intervals poll every second; over 30 virtual days that is millions of wake-ups
# for nothing. Hourly polls keep the scenario fast; the reminder still fires on time because the
# timer scan sleeps until the next due timer when it is earlier than the poll interval.
SIM_CONFIG = NodeConfig(
    lease_ttl_s=7200.0,
    lease_renew_interval_s=3600.0,
    timer_poll_interval_s=3600.0,
    outbox_poll_interval_s=3600.0,
    outbox_retry_interval_s=1.0,
    idle_timeout_s=600.0,
)


def make_store(world: World, kind: str) -> Store:
    """A fresh store of ``kind`` ("memory" or "sqlite") for one run."""
    if kind == "memory":
        return world.memory_store()
    assert kind == "sqlite", kind
    return world.sqlite_store()


def accounts_scenario(kind: str) -> Callable[[World], Awaitable[dict[str, Any]]]:
    """Deposits, a transfer through the outbox and a reminder 30 virtual days ahead."""

    async def scenario(world: World) -> dict[str, Any]:
        store = make_store(world, kind)
        await world.start_node("n1", [Account], store, config=SIM_CONFIG)
        await world.ask("n1", Account, "alice", Deposit(10_000), message_id="dep-a1")
        await world.ask("n1", Account, "bob", Deposit(500), message_id="dep-b1")
        await world.ask("n1", Account, "alice", Transfer("bob", 2_500), message_id="tr-1")
        await world.ask(
            "n1", Account, "alice", ScheduleInterest(30 * DAY_MS, 70), message_id="int-1"
        )
        started_s = world.now_s
        await world.sleep(31 * 24 * 3600)
        balances = {
            account: await world.ask("n1", Account, account, GetBalance())
            for account in ("alice", "bob")
        }
        world.record("balances", f"{balances}")
        streams = [head.stream_id for head in await store.list_streams()]
        return {"balances": balances, "streams": streams, "slept_s": world.now_s - started_s}

    return scenario


def crash_restart_scenario(
    kind: str, deposits: int = 20, accounts: int = 3
) -> Callable[[World], Awaitable[dict[str, Any]]]:
    """Asks in flight when the node crashes; a restart on the same store; then the checks.

    Asks time out (lost) or are refused (sent after the crash); after the restart the client
    retries them with the same message ids. Returns what the tests assert on: acknowledged
    deposits per account (retries included), the logged deposits and sequences per stream, and
    counts of lost, refused and acknowledged-before-the-crash asks.
    """

    async def scenario(world: World) -> dict[str, Any]:
        store = make_store(world, kind)
        await world.start_node("n1", [Account], store, config=SIM_CONFIG)
        acknowledged: dict[str, list[int]] = {f"acct-{a}": [] for a in range(accounts)}
        lost: list[str] = []
        refused: list[str] = []

        async def deposit(account: str, amount: int, delay_s: float) -> None:
            await asyncio.sleep(delay_s)
            try:
                await world.ask(
                    "n1",
                    Account,
                    account,
                    Deposit(amount),
                    message_id=f"{account}:{amount}",
                    timeout_s=5.0,
                )
            except NodeDown:
                refused.append(f"{account}:{amount}")
            except TimeoutError:
                lost.append(f"{account}:{amount}")
                world.record("deposit.lost", f"{account}:{amount}")
            else:
                acknowledged[account].append(amount)
                world.record("deposit.ok", f"{account}:{amount}")

        # A wave of deposits every 10 ms; distinct amounts identify each deposit in the log.
        tasks = [
            asyncio.create_task(deposit(account, 1000 * (a + 1) + i, i * 0.01))
            for i in range(deposits)
            for a, account in enumerate(acknowledged)
        ]
        # Crash at a seeded time and then a seeded number of scheduler rounds later: before,
        # between or in the middle of the waves' handling and commits.
        await world.sleep(world.random.randint(0, deposits - 1) * 0.01)
        for _ in range(world.random.randint(0, 12)):
            await asyncio.sleep(0)
        world.crash("n1")
        await asyncio.gather(*tasks)
        await world.restart("n1")
        codec = world.node("n1").codec

        async def logged_deposits(account: str) -> tuple[list[int], list[int]]:
            events = await store.read_events(f"{Account.type_name}/{account}", 0, 100_000)
            amounts = []
            for event in events:
                decoded = codec.decode(event.type_name, event.type_version, event.payload)
                assert isinstance(decoded, Deposited)
                amounts.append(decoded.amount_cents)
            return amounts, [event.seq for event in events]

        acked_before_restart = {account: list(acked) for account, acked in acknowledged.items()}
        logged_before_restart = {
            account: (await logged_deposits(account))[0] for account in acknowledged
        }
        # A client retries what it got no answer for, with the same message id: the deposits
        # that committed before the crash are deduplicated, the others are applied now.
        retried: list[str] = []
        for message_id in lost + refused:
            account, amount = message_id.split(":")
            await world.ask(
                "n1", Account, account, Deposit(int(amount)), message_id=message_id, timeout_s=5.0
            )
            acknowledged[account].append(int(amount))
            retried.append(message_id)
        logged: dict[str, list[int]] = {}
        seqs: dict[str, list[int]] = {}
        for account in acknowledged:
            balance = await world.ask("n1", Account, account, GetBalance(), timeout_s=5.0)
            logged[account], seqs[account] = await logged_deposits(account)
            assert balance == sum(logged[account]), (account, balance, logged[account])
        return {
            "acked_before_restart": acked_before_restart,
            "logged_before_restart": logged_before_restart,
            "acknowledged": acknowledged,
            "logged": logged,
            "seqs": seqs,
            "lost": len(lost),
            "refused": len(refused),
            "acked": sum(len(amounts) for amounts in acknowledged.values()) - len(retried),
            "deposits": deposits * accounts,
        }

    return scenario
