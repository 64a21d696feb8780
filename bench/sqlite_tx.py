"""The SQLite store's append transaction alone: ``append_batch_tx`` on a plain ``sqlite3``
connection, with no event loop and no writer thread, so the figure is the SQL's own cost.

``--streams`` actors take turns in batches of ``--batch`` requests (each request one event and
one dedupe record, as an ``ask`` of ``bench/journal.py`` commits), for ``--rounds`` batches; the
figure is the median over the last ``--measure`` batches. With rounds * batch / streams above
``--window``, the last batches run with every window full, so each request also prunes a record.
The connection has the store's writer settings (``configure_writer``).

Usage: python bench/sqlite_tx.py [--streams 1000] [--batch 500] [--rounds 2600]
       [--measure 400] [--window 1000] [--synchronous FULL] [--json]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _support import environment, print_result

from mainspring.persistence import _sqlite_sql as sql
from mainspring.persistence.store import AppendRequest, DedupeRecord, LeaseRequest, NewEvent

PAYLOAD = b'{"number":1,"note":"' + b"x" * 40 + b'"}'


def run(arguments: argparse.Namespace) -> dict[str, Any]:
    """Commit the batches; return the figures."""
    with tempfile.TemporaryDirectory() as directory:
        conn = sqlite3.connect(Path(directory) / "bench.db", isolation_level=None)
        sql.configure_writer(conn, arguments.synchronous, 5_000)
        conn.execute("PRAGMA journal_mode = WAL")
        sql.migrate_tx(conn, 0)
        heads: dict[str, int] = {}
        durations: list[float] = []
        message = 0
        for round_number in range(arguments.rounds):
            first = (round_number * arguments.batch) % arguments.streams
            requests = []
            for offset in range(arguments.batch):
                stream_id = f"bench/a{(first + offset) % arguments.streams:06d}"
                head = heads.get(stream_id, 0)
                message += 1
                message_id = f"m{message:012d}"
                requests.append(
                    AppendRequest(
                        stream_id,
                        1,
                        head,
                        [NewEvent("bench.recorded", 1, PAYLOAD, message_id)],
                        1_000 + round_number,
                        dedupe=[DedupeRecord(message_id, head + 1, b"null")],
                        dedupe_window=arguments.window,
                        claim=LeaseRequest(stream_id, "bench", 0, 10**12) if head == 0 else None,
                    )
                )
                heads[stream_id] = head + 1
            started = time.perf_counter()
            results = sql.append_batch_tx(conn, requests)
            durations.append(time.perf_counter() - started)
            assert all(result is None for result in results), results[:3]
        conn.close()
    measured = durations[-arguments.measure :]
    median_s = statistics.median(measured)
    return {
        "streams": arguments.streams,
        "batch": arguments.batch,
        "rounds": arguments.rounds,
        "window": arguments.window,
        "synchronous": arguments.synchronous,
        "appends_per_stream": arguments.rounds * arguments.batch // arguments.streams,
        "median_tx_ms": round(median_s * 1000, 2),
        "events_per_s": round(arguments.batch / median_s),
        "environment": environment("sqlite"),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line, run once, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2600)
    parser.add_argument("--measure", type=int, default=400)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--synchronous", default="FULL", choices=sql.SYNCHRONOUS_MODES)
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args(argv)
    if min(arguments.streams, arguments.batch, arguments.rounds, arguments.measure) < 1:
        parser.error("--streams, --batch, --rounds and --measure must be >= 1")
    if arguments.batch > arguments.streams:
        parser.error("--batch must be <= --streams (a batch names distinct streams)")
    if arguments.window < 0:
        parser.error("--window must be >= 0 (0: no window)")
    result = run(arguments)
    print_result(result, arguments.json)


if __name__ == "__main__":
    main(sys.argv[1:])
