"""Module-level functions a test sends to ``SqliteStore(writer="process")``'s writer process
(a lambda or a nested function cannot be pickled by name)."""

from __future__ import annotations

import os
import sqlite3
import time


def process_id(conn: sqlite3.Connection) -> int:
    """The id of the process that runs the connection."""
    return os.getpid()


def pragmas(conn: sqlite3.Connection) -> tuple[str, int, int]:
    """The connection's journal mode, synchronous level and query_only flag."""
    [(mode,)] = conn.execute("PRAGMA journal_mode").fetchall()
    [(level,)] = conn.execute("PRAGMA synchronous").fetchall()
    [(query_only,)] = conn.execute("PRAGMA query_only").fetchall()
    return mode, level, query_only


def cache_and_checkpoint(conn: sqlite3.Connection) -> tuple[int, int]:
    """The connection's page cache bound (KiB, negative as SQLite reports it) and its
    ``wal_autocheckpoint`` (pages)."""
    [(cache,)] = conn.execute("PRAGMA cache_size").fetchall()
    [(pages,)] = conn.execute("PRAGMA wal_autocheckpoint").fetchall()
    return cache, pages


def break_a_key(conn: sqlite3.Connection) -> None:
    """Insert one migration row twice, which the primary key refuses."""
    conn.execute("INSERT INTO schema_migrations (version, applied_at_ms) VALUES (-1, 0)")
    conn.execute("INSERT INTO schema_migrations (version, applied_at_ms) VALUES (-1, 0)")


def sleep(conn: sqlite3.Connection, seconds: float) -> None:
    """Hold the writer for ``seconds``."""
    time.sleep(seconds)


class Unpicklable(Exception):
    """An exception whose field pickle cannot carry."""

    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = __import__("threading").Lock()

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("cannot pickle a lock")


def raise_unpicklable(conn: sqlite3.Connection) -> None:
    """Fail with an error that cannot travel back as itself."""
    raise Unpicklable
