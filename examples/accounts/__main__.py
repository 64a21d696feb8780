"""Run the account example end to end on a SQLite file and print what happened.

    python -m examples.accounts [--db PATH] [--accounts N] [--asks N]

1. A node on SQLite hosts ``Account`` actors; thousands of concurrent asks deposit, withdraw and
   transfer money (transfers go through the transactional outbox).
2. The node stops; a new node on the same file rebuilds every account from its latest snapshot
   plus the events after it.
3. Each rebuilt state is compared with a full replay of the account's log, and the total money
   is checked: deposits minus withdrawals, no cent created or lost by transfers.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import mainspring
from examples.accounts.model import Account, AccountState, Deposit, GetAccount, Transfer, Withdraw
from mainspring import CommandRejected, Node, NodeConfig
from mainspring.persistence.sqlite import SqliteStore
from mainspring.seams import SeededRandom, SystemClock

CONFIG = NodeConfig(outbox_poll_interval_s=0.05, timer_poll_interval_s=0.05)
# The first node does not snapshot at shutdown, so the restart really reads snapshot + tail.
FIRST_RUN = NodeConfig(
    outbox_poll_interval_s=0.05, timer_poll_interval_s=0.05, snapshot_on_passivate=False
)


async def load(node: Node, accounts: int, asks: int, random: SeededRandom) -> dict[str, int]:
    """Send ``asks`` random operations; return counts of what was accepted and refused."""
    counts = {"deposits": 0, "withdrawals": 0, "transfers": 0, "refused": 0}
    money_in = 0
    money_out = 0

    async def one(index: int) -> None:
        nonlocal money_in, money_out
        account = f"acct-{int(random.random() * accounts)}"
        roll = random.random()
        amount = 1 + int(random.random() * 5_000)
        try:
            if roll < 0.5:
                await node.ask(Account, account, Deposit(amount), message_id=f"op-{index}")
                counts["deposits"] += 1
                money_in += amount
            elif roll < 0.75:
                await node.ask(Account, account, Withdraw(amount), message_id=f"op-{index}")
                counts["withdrawals"] += 1
                money_out += amount
            else:
                target = f"acct-{int(random.random() * accounts)}"
                await node.ask(Account, account, Transfer(target, amount), message_id=f"op-{index}")
                counts["transfers"] += 1
        except CommandRejected:
            counts["refused"] += 1

    batch = 500
    for start in range(0, asks, batch):
        await asyncio.gather(*(one(i) for i in range(start, min(start + batch, asks))))
    counts["money_in_cents"] = money_in
    counts["money_out_cents"] = money_out
    return counts


async def full_replay(store: SqliteStore, stream_id: str) -> AccountState:
    """Rebuild an account from its full log, ignoring snapshots."""
    return mainspring.replay(Account, await store.read_events(stream_id))


async def wait_for_outbox(node: Node) -> None:
    """Wait until every transfer's deposit has been delivered."""
    for _ in range(2_000):
        if not await node.store.read_outbox(1):
            return
        await asyncio.sleep(0.01)
    raise RuntimeError("the outbox did not drain")


async def main(db_path: Path, accounts: int, asks: int) -> int:
    random = SeededRandom(7)
    clock = SystemClock()
    print(f"mainspring {mainspring.__version__}: account example on SQLite file {db_path}")

    started = clock.monotonic_s()
    async with Node(
        "example-node", store=SqliteStore(str(db_path)), actors=[Account], config=FIRST_RUN
    ) as node:
        counts = await load(node, accounts, asks, random)
        await wait_for_outbox(node)
        before = {
            f"acct-{n}": await node.ask(Account, f"acct-{n}", GetAccount()) for n in range(accounts)
        }
        statistics = node.statistics()
    elapsed_s = clock.monotonic_s() - started
    journal = statistics["journal"]
    print(
        f"1. {asks} asks to {accounts} accounts in {elapsed_s:.2f} s: "
        f"{counts['deposits']} deposits, {counts['withdrawals']} withdrawals, "
        f"{counts['transfers']} transfers, {counts['refused']} refused (insufficient funds)"
    )
    print(
        f"   {journal['events']} events committed in {journal['commits']} group commits "
        f"(up to {journal['batch_requests_max_seen']} actors per transaction); "
        f"{statistics['scans']['outbox_delivered']} transfer deposits delivered via the outbox"
    )

    store = SqliteStore(str(db_path))
    started = clock.monotonic_s()
    async with Node("example-node", store=store, actors=[Account], config=CONFIG) as node:
        after = {
            f"acct-{n}": await node.ask(Account, f"acct-{n}", GetAccount()) for n in range(accounts)
        }
        replayed_events = node.statistics()["host"]["events_replayed"]
        elapsed_s = clock.monotonic_s() - started
        mismatches = [
            name for name in after if after[name] != await full_replay(store, f"account/{name}")
        ]
        heads = await node.store.list_streams()
    total_events = sum(head.head_seq for head in heads)
    print(
        f"2. restarted: {accounts} accounts rebuilt from snapshot + tail in {elapsed_s:.2f} s, "
        f"replaying {replayed_events} of {total_events} events"
    )
    same = after == before
    print(
        f"3. state after restart equals state before: {same}; equals full replay: {not mismatches}"
    )
    total = sum(state.balance_cents for state in after.values())
    expected = counts["money_in_cents"] - counts["money_out_cents"]
    print(f"   money: {total} cents held, {expected} cents deposited minus withdrawn")
    ok = same and not mismatches and total == expected
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


def cli() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", type=Path, help="SQLite file (default: a fresh temporary file)")
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument("--asks", type=int, default=5_000)
    arguments = parser.parse_args()
    if arguments.accounts < 2 or arguments.asks < 1:
        parser.error("--accounts must be >= 2 and --asks >= 1")
    if arguments.db is not None:
        return asyncio.run(main(arguments.db, arguments.accounts, arguments.asks))
    with tempfile.TemporaryDirectory() as directory:
        return asyncio.run(
            main(Path(directory) / "accounts.db", arguments.accounts, arguments.asks)
        )


if __name__ == "__main__":
    sys.exit(cli())
