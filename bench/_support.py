"""Shared parts of the benchmarks: the bench actor, fresh databases and small statistics.

The benchmarks run as scripts (``python bench/journal.py``), so this module is imported by its
plain name from the scripts' own directory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sqlite3
import statistics
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import attrs

import mainspring
from mainspring import ActorContext, handler
from mainspring.persistence.postgres import PostgresStore
from mainspring.persistence.sqlite import SqliteStore, default_writer

DEFAULT_POSTGRES_DSN = os.environ.get(
    "MAINSPRING_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)

NOTE = "n" * 120
"""The filler of every event: with the other fields it makes a ~140-byte JSON payload."""


# The bench actor ---------------------------------------------------------------------------


@mainspring.event("bench.recorded", version=1)
@attrs.frozen
class Recorded:
    """One recorded command: its number within the actor and a filler note."""

    number: int
    note: str


@mainspring.message("bench.record")
@attrs.frozen
class Record:
    """Emit one ``Recorded`` event."""

    number: int
    note: str


@mainspring.message("bench.fill")
@attrs.frozen
class Fill:
    """Emit ``count`` ``Recorded`` events in one handler call (to build long streams quickly)."""

    count: int
    note: str


@mainspring.message("bench.read")
@attrs.frozen
class Read:
    """Reply with the number of events applied; writes nothing."""


@mainspring.state("bench.tally", version=1)
@attrs.frozen
class Tally:
    """How many events the actor has applied, and the number of the last one."""

    count: int = 0
    last: int = 0


class Recorder(mainspring.Actor[Tally]):
    """An actor whose every command emits one small event; default snapshot and dedupe
    settings, as an application actor would have them."""

    type_name = "bench-recorder"
    initial_state = Tally()

    @handler
    def record(self, ctx: ActorContext[Tally], message: Record) -> int:
        ctx.emit(Recorded(message.number, message.note))
        return ctx.state.count

    @handler
    def fill(self, ctx: ActorContext[Tally], message: Fill) -> int:
        first = ctx.state.count + 1
        for number in range(first, first + message.count):
            ctx.emit(Recorded(number, message.note))
        return ctx.state.count

    @handler
    def read(self, ctx: ActorContext[Tally], message: Read) -> int:
        return ctx.state.count

    def evolve(self, state: Tally, event: object) -> Tally:
        assert isinstance(event, Recorded), event
        return Tally(state.count + 1, event.number)


class SnapshotRecorder(Recorder):
    """A ``Recorder`` that snapshots at every commit, so its head always has a snapshot."""

    type_name = "bench-recorder-snapshot"
    snapshot_every = 1


class ReplayRecorder(Recorder):
    """A ``Recorder`` that never snapshots, so every activation replays the whole stream."""

    type_name = "bench-recorder-replay"
    snapshot_every = 0


# Fresh databases ---------------------------------------------------------------------------


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark takes to pick its store."""
    parser.add_argument("--store", choices=["sqlite", "postgres"], required=True)
    parser.add_argument(
        "--dsn",
        default=DEFAULT_POSTGRES_DSN,
        help="PostgreSQL DSN (a fresh schema is created in it and dropped at the end)",
    )
    parser.add_argument(
        "--sqlite-writer",
        choices=["thread", "process"],
        default=default_writer("bench.db"),
        help="SqliteStore(writer=...): the writer connection in a process of its own or on "
        "aiosqlite's thread (default: the store's default for a file here, %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON line")


@contextlib.asynccontextmanager
async def fresh_database(kind: str, dsn: str, label: str) -> AsyncIterator[dict[str, str]]:
    """A new, empty database for one measurement: a file in a new temporary directory for
    SQLite, a new schema for PostgreSQL (dropped on exit). Yields where it is."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix=f"mainspring-bench-{label}-") as directory:
            yield {"path": str(Path(directory) / "bench.db")}
        return
    import asyncpg

    schema = f"bench_{label}_{os.getpid()}"
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        yield {"dsn": dsn, "schema": schema}
    finally:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await connection.close()


def open_store(kind: str, where: dict[str, str], sqlite_writer: str | None = None) -> Any:
    """The store over ``where``, with the store's default settings (durability included) and,
    for SQLite, the writer ``--sqlite-writer`` picked."""
    if kind == "sqlite":
        return SqliteStore(where["path"], writer=sqlite_writer)
    return PostgresStore(where["dsn"], schema=where["schema"])


# Figures -----------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values."""
    assert sorted_values
    rank = max(1, min(len(sorted_values), round(fraction * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def median(values: Sequence[float]) -> float:
    """The median of ``values``."""
    return statistics.median(values)


def environment(kind: str, server_version: str | None = None) -> dict[str, str]:
    """Versions that matter for reading a figure."""
    import aiosqlite
    import asyncpg

    described = {
        "python": platform.python_version(),
        "cpus": str(os.cpu_count()),
    }
    if kind == "sqlite":
        described["sqlite"] = sqlite3.sqlite_version
        described["aiosqlite"] = aiosqlite.__version__
    else:
        described["asyncpg"] = asyncpg.__version__
        if server_version is not None:
            described["postgres"] = server_version
    return described


async def postgres_version(dsn: str) -> str:
    """The PostgreSQL server's version string."""
    import asyncpg

    connection = await asyncpg.connect(dsn)
    try:
        return str(await connection.fetchval("SHOW server_version"))
    finally:
        await connection.close()


def rounded(value: float, digits: int = 3) -> float:
    """``value`` with at most ``digits`` decimals, for readable JSON."""
    return round(value, digits)


def print_result(result: dict[str, Any], as_json: bool) -> None:
    """Print a run's figures: one JSON line with ``--json``, else one aligned line per key."""
    if as_json:
        print(json.dumps(result))
        return
    width = max(map(len, result), default=0)
    for key, value in result.items():
        print(f"{key:>{width}}: {value}")
