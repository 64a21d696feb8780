"""Durable append throughput through a node, beside the raw driver's ceiling from the same run.

``--actors`` actors each get ``--commands`` asks, one in flight per actor and all actors at once;
each command emits one event, and each reply comes after its event is committed. The group-commit
journal turns this into transactions of up to one event per actor.

The ceiling is the same driver (aiosqlite or asyncpg) inserting the same rows into the same
``events`` table of a fresh database with the same settings: same payload bytes, streams
interleaved as group commit writes them (round r holds event r of every stream), ``--raw-batch``
rows per transaction, with ``executemany``. For PostgreSQL the ceiling of one ``INSERT ...
SELECT FROM unnest(...)`` per transaction is measured too, since that is how the store writes.

The process runs with the garbage collector settings ``mainspring node`` uses
(``tune_garbage_collector``, ``--gc-threshold``, default 50,000) for both the ceiling and the
node; ``--gc-threshold 0`` keeps CPython's defaults, as an application that embeds a node and
does not tune its process has them.

Usage: python bench/journal.py --store sqlite|postgres [--actors 1000] [--commands 100]
       [--gc-threshold N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import sys
import time
from collections.abc import Sequence
from typing import Any

import aiosqlite
import asyncpg
from _support import (
    NOTE,
    Read,
    Record,
    Recorded,
    Recorder,
    add_store_arguments,
    environment,
    fresh_database,
    open_store,
    percentile,
    postgres_version,
    print_result,
    rounded,
)

import mainspring
from mainspring import Node
from mainspring.persistence.postgres import PostgresStore
from mainspring.persistence.sqlite import SqliteStore
from mainspring.process import GC_THRESHOLD_DEFAULT, tune_garbage_collector

Row = tuple[str, int, int, str, int, bytes, str | None, int]

_SYNCHRONOUS_LEVELS = {"OFF": 0, "NORMAL": 1, "FULL": 2, "EXTRA": 3}

_INSERT_COLUMNS = "stream_id, seq, epoch, type_name, type_version, payload, message_id, recorded_ms"


def stream_of(actor_index: int) -> str:
    """The actor id of actor ``actor_index``."""
    return f"a{actor_index:06d}"


def interleaved_rows(actors: int, commands: int, recorded_ms: int) -> list[Row]:
    """The events the node run writes, in the order group commit writes them: round ``r``
    holds event ``r`` of every stream. The payloads are the codec's own bytes."""
    rows: list[Row] = []
    for number in range(1, commands + 1):
        encoded = mainspring.registry.encode(Recorded(number, NOTE))
        for actor_index in range(actors):
            stream_id = f"{Recorder.type_name}/{stream_of(actor_index)}"
            rows.append(
                (
                    stream_id,
                    number,
                    1,
                    encoded.type_name,
                    encoded.type_version,
                    encoded.payload,
                    None,
                    recorded_ms,
                )
            )
    return rows


def batches(rows: Sequence[Row], size: int) -> list[Sequence[Row]]:
    """``rows`` cut into transactions of ``size`` rows."""
    return [rows[start : start + size] for start in range(0, len(rows), size)]


# The raw driver ceilings -------------------------------------------------------------------


def sqlite_store_default(parameter: str) -> Any:
    """A ``SqliteStore`` setting as the store has it when none is given, so that the ceiling
    runs with the same settings as the node's store."""
    return inspect.signature(SqliteStore).parameters[parameter].default


async def raw_sqlite(path: str, rows: Sequence[Row], batch: int) -> float:
    """Events per second of aiosqlite inserting ``rows`` into the store's ``events`` table, one
    ``BEGIN IMMEDIATE``/``executemany``/``COMMIT`` per ``batch`` rows, with the writer PRAGMAs
    the store sets (WAL, and its default ``synchronous``, busy timeout, page cache and
    checkpoint interval)."""
    store = SqliteStore(path)
    await store.open()  # creates the schema exactly as the store has it
    await store.close()
    synchronous = sqlite_store_default("synchronous")
    busy_timeout_ms = sqlite_store_default("busy_timeout_ms")
    cache_mib = sqlite_store_default("cache_mib")
    checkpoint_pages = sqlite_store_default("checkpoint_pages")
    connection = await aiosqlite.connect(path, isolation_level=None)
    try:
        await connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        cursor = await connection.execute("PRAGMA journal_mode = WAL")
        assert (await cursor.fetchone()) == ("wal",)
        await connection.execute(f"PRAGMA synchronous = {synchronous}")
        cursor = await connection.execute("PRAGMA synchronous")
        assert (await cursor.fetchone()) == (_SYNCHRONOUS_LEVELS[synchronous],)
        await connection.execute(f"PRAGMA cache_size = {-1024 * int(cache_mib)}")
        cursor = await connection.execute(f"PRAGMA wal_autocheckpoint = {int(checkpoint_pages)}")
        assert (await cursor.fetchone()) == (checkpoint_pages,)
        sql = f"INSERT INTO events ({_INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        chunks = batches(rows, batch)
        started = time.perf_counter()
        for chunk in chunks:
            await connection.execute("BEGIN IMMEDIATE")
            await connection.executemany(sql, chunk)
            await connection.execute("COMMIT")
        elapsed = time.perf_counter() - started
        cursor = await connection.execute("SELECT count(*) FROM events")
        assert (await cursor.fetchone()) == (len(rows),)
    finally:
        await connection.close()
    return len(rows) / elapsed


async def raw_postgres(
    dsn: str, schema: str, rows: Sequence[Row], batch: int, *, unnest: bool
) -> float:
    """Events per second of asyncpg inserting ``rows`` into the store's ``events`` table, one
    transaction per ``batch`` rows, by ``executemany`` or by one ``unnest`` statement."""
    store = PostgresStore(dsn, schema=schema)
    await store.open()  # creates the schema exactly as the store has it
    await store.close()
    connection = await asyncpg.connect(dsn, server_settings={"search_path": f'"{schema}"'})
    try:
        chunks = batches(rows, batch)
        many_sql = f"INSERT INTO events ({_INSERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        unnest_sql = (
            f"INSERT INTO events ({_INSERT_COLUMNS}) SELECT * FROM unnest("
            "$1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::integer[], $6::bytea[], "
            "$7::text[], $8::bigint[])"
        )
        columns = [[list(column) for column in zip(*chunk, strict=True)] for chunk in chunks]
        started = time.perf_counter()
        if unnest:
            for arrays in columns:
                # One statement is its own transaction: one round trip and one commit.
                await connection.execute(unnest_sql, *arrays)
        else:
            for chunk in chunks:
                async with connection.transaction():
                    await connection.executemany(many_sql, chunk)
        elapsed = time.perf_counter() - started
        assert await connection.fetchval("SELECT count(*) FROM events") == len(rows)
    finally:
        await connection.close()
    return len(rows) / elapsed


# The node run ------------------------------------------------------------------------------


async def node_run(store: Any, actors: int, commands: int) -> dict[str, Any]:
    """Activate every actor, then time ``commands`` asks per actor, all actors at once."""
    node = Node("bench-node", store=store, actors=[Recorder])
    async with node:
        ids = [stream_of(index) for index in range(actors)]
        # Activation (lease, hydration) is not part of the figure: a read-only ask first.
        await asyncio.gather(*(node.ask(Recorder, actor_id, Read()) for actor_id in ids))
        before = node.statistics()["journal"]
        latencies: list[float] = []

        async def drive(actor_id: str) -> None:
            clock = time.perf_counter
            for number in range(1, commands + 1):
                asked = clock()
                reply = await node.ask(Recorder, actor_id, Record(number, NOTE))
                latencies.append(clock() - asked)
                assert reply == number, (actor_id, reply, number)

        started = time.perf_counter()
        await asyncio.gather(*(drive(actor_id) for actor_id in ids))
        elapsed = time.perf_counter() - started
        after = node.statistics()["journal"]
    events = after["events"] - before["events"]
    commits = after["commits"] - before["commits"]
    assert events == actors * commands, (events, actors, commands)
    latencies.sort()
    return {
        "events": events,
        "elapsed_s": elapsed,
        "events_per_s": events / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "commits": commits,
        "requests_per_commit": (after["requests"] - before["requests"]) / max(commits, 1),
        "commit_s": after["commit_seconds_total"] - before["commit_seconds_total"],
    }


async def run(arguments: argparse.Namespace) -> dict[str, Any]:
    """One full measurement: the raw ceiling(s), then the node, each on a fresh database."""
    actors, commands, batch = arguments.actors, arguments.commands, arguments.raw_batch
    # Both phases run with it, as `mainspring node` runs once it listens.
    tune_garbage_collector(arguments.gc_threshold)
    rows = interleaved_rows(actors, commands, recorded_ms=1_700_000_000_000)
    result: dict[str, Any] = {"store": arguments.store, "actors": actors, "commands": commands}
    result["payload_bytes"] = len(rows[0][5])
    result["raw_batch"] = batch
    result["gc_threshold"] = arguments.gc_threshold
    if arguments.store == "sqlite":
        async with fresh_database("sqlite", arguments.dsn, "raw") as where:
            raw = await raw_sqlite(where["path"], rows, batch)
        result["synchronous"] = sqlite_store_default("synchronous")
        result["cache_mib"] = sqlite_store_default("cache_mib")
        result["checkpoint_pages"] = sqlite_store_default("checkpoint_pages")
        result["sqlite_writer"] = arguments.sqlite_writer
    else:
        async with fresh_database("postgres", arguments.dsn, "raw") as where:
            raw = await raw_postgres(where["dsn"], where["schema"], rows, batch, unnest=False)
        async with fresh_database("postgres", arguments.dsn, "unnest") as where:
            raw_unnest = await raw_postgres(where["dsn"], where["schema"], rows, batch, unnest=True)
    del rows  # 100k tuples the collector need not walk while the node runs
    async with fresh_database(arguments.store, arguments.dsn, "node") as where:
        store = open_store(arguments.store, where, arguments.sqlite_writer)
        measured = await node_run(store, actors, commands)
    result["events_per_s"] = round(measured["events_per_s"])
    result["p50_ms"] = rounded(measured["p50_ms"])
    result["p99_ms"] = rounded(measured["p99_ms"])
    result["raw_events_per_s"] = round(raw)
    result["ratio"] = rounded(measured["events_per_s"] / raw)
    if arguments.store == "postgres":
        result["raw_unnest_events_per_s"] = round(raw_unnest)
        result["ratio_unnest"] = rounded(measured["events_per_s"] / raw_unnest)
    result["events"] = measured["events"]
    result["elapsed_s"] = rounded(measured["elapsed_s"])
    result["commits"] = measured["commits"]
    result["requests_per_commit"] = rounded(measured["requests_per_commit"], 1)
    result["commit_s"] = rounded(measured["commit_s"])
    version = await postgres_version(arguments.dsn) if arguments.store == "postgres" else None
    result["environment"] = environment(arguments.store, version)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line, run once, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_store_arguments(parser)
    parser.add_argument("--actors", type=int, default=1000)
    parser.add_argument("--commands", type=int, default=100, help="asks per actor")
    parser.add_argument("--raw-batch", type=int, default=1000, help="rows per raw transaction")
    parser.add_argument(
        "--gc-threshold",
        type=int,
        default=GC_THRESHOLD_DEFAULT,
        help="the garbage collector setting of both phases, as `mainspring node "
        "--gc-threshold` (0: CPython's defaults, as in an untuned embedding process)",
    )
    arguments = parser.parse_args(argv)
    if arguments.actors < 1 or arguments.commands < 1 or arguments.raw_batch < 1:
        parser.error("--actors, --commands and --raw-batch must be >= 1")
    if arguments.gc_threshold < 0:
        parser.error("--gc-threshold must be >= 0 (0 keeps CPython's defaults)")
    result = asyncio.run(run(arguments))
    print_result(result, arguments.json)


if __name__ == "__main__":
    main(sys.argv[1:])
