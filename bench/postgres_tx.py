"""The PostgreSQL store's append transaction alone: ``PostgresStore.append_batch`` called one
batch at a time, with no node around it, beside the driver inserting the same events.

``--streams`` actors take turns in batches of ``--batch`` requests of one event each (as an
``ask`` of ``bench/journal.py`` commits), ``--rounds`` rounds over all streams; the figures are
medians over the rounds after the first third. Each batch waits for the one before, so the time
is one transaction's: the arguments' encoding on the client (``encode_ms``, also reported
alone), the round trip, the function and the commit. ``wal_bytes_per_event`` is the write-ahead
log the measured rounds wrote (``pg_current_wal_lsn``), per event: unlike the times, it does not
depend on how busy the machine is. ``raw_insert_ms`` is one ``INSERT ... SELECT FROM unnest``
of the same events per batch, into the ``events`` table of a fresh schema made by the store.

Usage: python bench/postgres_tx.py [--streams 1000] [--batch 500] [--rounds 45] [--dsn DSN]
       [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import asyncpg
from _support import (
    DEFAULT_POSTGRES_DSN,
    NOTE,
    Recorded,
    environment,
    fresh_database,
    postgres_version,
    print_result,
)

import mainspring
from mainspring.persistence import postgres
from mainspring.persistence.postgres import PostgresStore
from mainspring.persistence.store import AppendRequest, LeaseRequest, NewEvent

_RAW_INSERT_SQL = (
    "INSERT INTO events (stream_id, seq, epoch, type_name, type_version, payload, message_id, "
    "recorded_ms) SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], "
    "$5::integer[], $6::bytea[], $7::text[], $8::bigint[])"
)


def stream_ids(count: int) -> list[str]:
    """The bench's stream ids, in the order batches take them."""
    return [f"bench-recorder/a{index:06d}" for index in range(count)]


async def store_transactions(arguments: argparse.Namespace) -> dict[str, float]:
    """Time ``append_batch`` batch by batch; return the medians and the WAL per event."""
    encoded = mainspring.registry.encode(Recorded(1, NOTE))
    event = NewEvent(encoded.type_name, encoded.type_version, encoded.payload)
    ids = stream_ids(arguments.streams)
    async with fresh_database("postgres", arguments.dsn, "tx") as where:
        store = PostgresStore(where["dsn"], schema=where["schema"])
        await store.open()
        monitor = await asyncpg.connect(arguments.dsn)
        try:
            now_ms = int(time.time() * 1000)
            leases = await store.acquire_leases(
                [LeaseRequest(stream_id, "bench", now_ms, 3_600_000) for stream_id in ids]
            )
            epochs = {stream_id: lease.epoch for stream_id, lease in zip(ids, leases, strict=True)}
            heads = dict.fromkeys(ids, 0)
            warm_up = arguments.rounds // 3
            commits: list[float] = []
            encodings: list[float] = []
            wal_from = None
            for round_number in range(arguments.rounds):
                if round_number == warm_up:
                    wal_from = await monitor.fetchval("SELECT pg_current_wal_lsn()")
                for first in range(0, len(ids), arguments.batch):
                    batch = ids[first : first + arguments.batch]
                    requests = [
                        AppendRequest(
                            stream_id=stream_id,
                            epoch=epochs[stream_id],
                            expected_seq=heads[stream_id],
                            events=[event],
                            recorded_at_ms=now_ms,
                        )
                        for stream_id in batch
                    ]
                    started = time.perf_counter()
                    order = sorted(range(len(requests)), key=lambda i: requests[i].stream_id)
                    postgres._append_arguments(requests, order)
                    encoded_at = time.perf_counter()
                    results = await store.append_batch(requests)
                    finished = time.perf_counter()
                    assert results == [None] * len(requests), results[:3]
                    for stream_id in batch:
                        heads[stream_id] += 1
                    if round_number >= warm_up:
                        encodings.append(encoded_at - started)
                        commits.append(finished - encoded_at)
            wal_to = await monitor.fetchval("SELECT pg_current_wal_lsn()")
            wal = await monitor.fetchval("SELECT pg_wal_lsn_diff($1, $2)", wal_to, wal_from)
        finally:
            await monitor.close()
            await store.close()
    events = (arguments.rounds - warm_up) * len(ids)
    return {
        "append_batch_ms": statistics.median(commits) * 1000,
        "encode_ms": statistics.median(encodings) * 1000,
        "wal_bytes_per_event": float(wal) / events,
    }


async def raw_inserts(arguments: argparse.Namespace) -> float:
    """The median time of one ``unnest`` insert of a batch's events, in ms."""
    encoded = mainspring.registry.encode(Recorded(1, NOTE))
    ids = stream_ids(arguments.streams)
    async with fresh_database("postgres", arguments.dsn, "rawtx") as where:
        store = PostgresStore(where["dsn"], schema=where["schema"])
        await store.open()  # the schema exactly as the store makes it
        await store.close()
        connection = await asyncpg.connect(
            where["dsn"], server_settings={"search_path": f'"{where["schema"]}"'}
        )
        try:
            now_ms = int(time.time() * 1000)
            durations: list[float] = []
            for round_number in range(arguments.rounds):
                for first in range(0, len(ids), arguments.batch):
                    batch = ids[first : first + arguments.batch]
                    count = len(batch)
                    started = time.perf_counter()
                    await connection.execute(
                        _RAW_INSERT_SQL,
                        batch,
                        [round_number + 1] * count,
                        [1] * count,
                        [encoded.type_name] * count,
                        [encoded.type_version] * count,
                        [encoded.payload] * count,
                        [None] * count,
                        [now_ms] * count,
                    )
                    if round_number >= arguments.rounds // 3:
                        durations.append(time.perf_counter() - started)
        finally:
            await connection.close()
    return statistics.median(durations) * 1000


async def run(arguments: argparse.Namespace) -> dict[str, Any]:
    """Both measurements; return the figures."""
    store = await store_transactions(arguments)
    raw_ms = await raw_inserts(arguments)
    return {
        "streams": arguments.streams,
        "batch": arguments.batch,
        "rounds": arguments.rounds,
        "schema_version": postgres.SCHEMA_VERSION,
        "append_batch_ms": round(store["append_batch_ms"], 2),
        "encode_ms": round(store["encode_ms"], 2),
        "wal_bytes_per_event": round(store["wal_bytes_per_event"]),
        "raw_insert_ms": round(raw_ms, 2),
        "environment": environment("postgres", await postgres_version(arguments.dsn)),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line, run once, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=45)
    parser.add_argument("--dsn", default=DEFAULT_POSTGRES_DSN)
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args(argv)
    if min(arguments.streams, arguments.batch) < 1 or arguments.rounds < 3:
        parser.error("--streams and --batch must be >= 1, --rounds >= 3")
    if arguments.batch > arguments.streams:
        parser.error("--batch must be <= --streams (a batch names distinct streams)")
    result = asyncio.run(run(arguments))
    print_result(result, arguments.json)


if __name__ == "__main__":
    main(sys.argv[1:])
