"""Instructions the node's process executes per durable ask, counted by valgrind.

Wall-clock figures on a small shared VM move by ~20% from run to run, which hides a change to
the ask path worth 5-10%. The number of instructions does not move: this counts them with
``valgrind --tool=cachegrind --cache-sim=no`` over the node phase of ``journal.py`` (1,000
actors, one ask in flight each, one event per ask), run twice with different numbers of asks
per actor. The difference of the two counts over the difference of their events is the cost of
one ask: interpreter start-up, imports, the store's schema and the actors' activation are the
same in both runs and cancel out. ``PYTHONHASHSEED`` is fixed so that both runs (and the runs of
another commit) hash alike.

Only the node's own process is counted: the database server, and SQLite's writer process, are
not. Instructions are not time (a cache miss costs many), so a change that removes instructions
is confirmed by ``journal.py`` runs, old and new alternating.

Usage: python bench/instructions.py --store memory|sqlite|postgres [--commands 5,15] [--json]
       python bench/instructions.py --store S --inner N  (one node run: what valgrind runs)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from _support import DEFAULT_POSTGRES_DSN, fresh_database, open_store, print_result
from journal import node_run

from mainspring.persistence.memory import MemoryStore
from mainspring.process import GC_THRESHOLD_DEFAULT, tune_garbage_collector

ACTORS = 1000

_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


async def inner(store_kind: str, dsn: str, commands: int) -> None:
    """One node run of ``commands`` asks per actor (the process valgrind measures)."""
    tune_garbage_collector(GC_THRESHOLD_DEFAULT)
    if store_kind == "memory":
        await node_run(MemoryStore(), ACTORS, commands)
        return
    async with fresh_database(store_kind, dsn, "instructions") as where:
        await node_run(open_store(store_kind, where), ACTORS, commands)


def count(store_kind: str, dsn: str, commands: int) -> int:
    """The instructions of one ``--inner`` run under cachegrind."""
    completed = subprocess.run(
        [
            "valgrind",
            "--tool=cachegrind",
            "--cache-sim=no",
            "--cachegrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--store",
            store_kind,
            "--dsn",
            dsn,
            "--inner",
            str(commands),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
        timeout=1800,
        check=False,
    )
    if completed.returncode != 0:
        raise SystemExit(f"the measured run failed:\n{completed.stderr[-3000:]}")
    found = _REFS.search(completed.stderr)
    if found is None:
        raise SystemExit(f"valgrind printed no instruction count:\n{completed.stderr[-3000:]}")
    return int(found.group(1).replace(",", ""))


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line, count twice, print the per-ask figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["memory", "sqlite", "postgres"], required=True)
    parser.add_argument("--dsn", default=DEFAULT_POSTGRES_DSN, help="PostgreSQL DSN")
    parser.add_argument(
        "--commands",
        default="5,15",
        help="the asks per actor of the two counted runs, as 'FEWER,MORE' (default %(default)s)",
    )
    parser.add_argument("--inner", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    arguments = parser.parse_args(argv)
    if arguments.inner is not None:
        asyncio.run(inner(arguments.store, arguments.dsn, arguments.inner))
        return
    try:
        fewer, more = (int(part) for part in arguments.commands.split(","))
    except ValueError:
        parser.error(f"--commands takes two counts as 'FEWER,MORE', got {arguments.commands!r}")
    if not 1 <= fewer < more:
        parser.error(f"--commands needs 1 <= FEWER < MORE, got {fewer},{more}")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed; this benchmark counts instructions with it")
    low = count(arguments.store, arguments.dsn, fewer)
    high = count(arguments.store, arguments.dsn, more)
    result: dict[str, Any] = {
        "store": arguments.store,
        "actors": ACTORS,
        "commands": [fewer, more],
        "instructions": [low, high],
        "instructions_per_ask": round((high - low) / (ACTORS * (more - fewer))),
    }
    print_result(result, arguments.json)


if __name__ == "__main__":
    main(sys.argv[1:])
