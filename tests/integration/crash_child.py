"""A process that hammers a SQLite-backed node with asks until it is killed.

    python -m tests.integration.crash_child DB_PATH LOG_PATH ROUND [thread|process]

It prints ``ready PID`` once the node is up: PID is the store's writer process with
``process`` (the store's ``writer`` setting), 0 otherwise.

Before each ask it appends ``S <actor> <token>`` to LOG_PATH, and after each reply
``A <actor> <token> <count>``; each line is one ``os.write`` on an O_APPEND descriptor, so a
kill never leaves half a line that parses.
"""

from __future__ import annotations

import asyncio
import os
import sys

from mainspring import Node, NodeConfig
from mainspring.persistence.sqlite import SqliteStore
from tests.support.ledger import Add, Ledger

ACTORS = 20
WORKERS = 64


async def main(db_path: str, log_path: str, round_number: int, writer: str) -> None:
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    config = NodeConfig(lease_ttl_s=60, lease_renew_interval_s=5)
    store = SqliteStore(db_path, writer=writer)
    async with Node("crash-node", store=store, actors=[Ledger], config=config) as node:
        print(f"ready {store.writer_pid or 0}", flush=True)

        async def worker(worker_number: int) -> None:
            for sequence in range(10**9):
                actor = f"l{(worker_number * 7 + sequence) % ACTORS}"
                token = f"r{round_number}w{worker_number}s{sequence}"
                os.write(log, f"S {actor} {token}\n".encode())
                count = await node.ask(Ledger, actor, Add(token), message_id=token)
                os.write(log, f"A {actor} {token} {count}\n".encode())

        await asyncio.gather(*(worker(n) for n in range(WORKERS)))


if __name__ == "__main__":
    writer = sys.argv[4] if len(sys.argv) > 4 else "thread"
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), writer))
