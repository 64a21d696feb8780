"""The SQLite store's SQL: the schema migrations and one synchronous function per transaction.

Every ``*_tx`` function runs a whole transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``) on a
``sqlite3.Connection`` opened with ``isolation_level=None``; every ``select_*`` function runs one
read statement. ``SqliteStore`` hands each function to a runner, so a transaction costs one hop to
aiosqlite's worker thread in production and none at all under the simulator's inline runner.

Fencing lives in the SQL: the lease upsert and the conditional head update decide, inside the
transaction that writes, whether a write may happen. Python never reads a value and then writes on
the strength of it.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator, Sequence
from typing import Any, Final

import attrs
import orjson

from mainspring.errors import ConcurrencyConflict, Fenced, LeaseHeld, StreamExists
from mainspring.persistence.store import (
    MEMBER_STATES,
    SCHEMA_VERSION,
    AppendRequest,
    AppendResult,
    DedupeRecord,
    InstanceInfo,
    Lease,
    LeaseOutcome,
    LeaseRecord,
    LeaseRequest,
    Member,
    OutboxMessage,
    Snapshot,
    StoredEvent,
    StreamHead,
    Timer,
    split_stream_id,
)

__all__ = [
    "MIGRATIONS",
    "SYNCHRONOUS_MODES",
    "CommitFailed",
    "Migration",
    "UnknownSchemaVersion",
    "UnsupportedSqlite",
    "acquire_leases_tx",
    "append_batch_tx",
    "configure_reader",
    "configure_writer",
    "connect",
    "delete_outbox_tx",
    "delete_timer_tx",
    "migrate_tx",
    "release_leases_tx",
    "renew_leases_tx",
    "schema_versions",
    "select_dedupe",
    "select_due_timers",
    "select_events",
    "select_head",
    "select_instance",
    "select_instances",
    "select_lease_history",
    "select_next_timer_due_ms",
    "select_outbox",
    "select_snapshot",
    "select_streams",
]

CACHED_STATEMENTS: Final = 256
"""Room for every statement below (about 40, plus the list_instances variants), so each one is
prepared once per connection and reused."""

SQLITE_VERSION_MIN: Final = (3, 37, 0)
"""STRICT tables need 3.37 (RETURNING and UPSERT need less); pruning needs the JSON functions."""

CACHE_MIB_DEFAULT: Final = 64
"""The writer's page cache, in MiB (SQLite's own default is 2). A group commit touches one
leaf page of each table and index per stream it writes to; with a cache that holds them, the
next commit finds them there instead of reading them back."""

CHECKPOINT_PAGES_DEFAULT: Final = 10_000
"""The writer's ``wal_autocheckpoint``, in pages (SQLite's own default is 1,000). A checkpoint
writes each page the WAL holds once, however many commits changed it: group commits over the
same streams change the same pages again and again, so checkpointing every few commits
instead of after every one writes and syncs a fraction of the pages. The WAL file grows to
about this many pages (~40 MiB with 4 KiB pages) and is reused from its start after each
checkpoint."""

WAL_SWITCH_PAUSE_MS: Final = 5
"""The pause between attempts to switch a new file to WAL while another connection does it."""

SYNCHRONOUS_MODES: Final = frozenset({"FULL", "EXTRA", "NORMAL"})
"""``OFF`` is left out on purpose: it would acknowledge commits that an OS crash can lose."""


# Schema


@attrs.frozen
class Migration:
    """One schema version: the statements that take the schema from ``version - 1`` to it."""

    version: int
    description: str
    statements: tuple[str, ...]


_SCHEMA_V1: Final = (
    # dedupe_count mirrors the number of dedupe rows of the stream (kept by the triggers below),
    # so pruning to a window costs one key lookup instead of a scan of the window. (Version 3
    # replaces all three with one range per stream in arrival order.)
    """CREATE TABLE streams (
        stream_id TEXT PRIMARY KEY,
        epoch INTEGER NOT NULL CHECK (epoch >= 1),
        head INTEGER NOT NULL CHECK (head >= 0),
        owner TEXT,
        lease_expires_ms INTEGER NOT NULL,
        dedupe_count INTEGER NOT NULL DEFAULT 0 CHECK (dedupe_count >= 0)
    ) STRICT, WITHOUT ROWID""",
    # Clustered by (stream_id, seq): hydration reads one contiguous key range.
    """CREATE TABLE events (
        stream_id TEXT NOT NULL,
        seq INTEGER NOT NULL CHECK (seq >= 1),
        epoch INTEGER NOT NULL CHECK (epoch >= 1),
        type_name TEXT NOT NULL,
        type_version INTEGER NOT NULL,
        payload BLOB NOT NULL,
        message_id TEXT,
        recorded_ms INTEGER NOT NULL,
        PRIMARY KEY (stream_id, seq)
    ) STRICT, WITHOUT ROWID""",
    """CREATE TABLE snapshots (
        stream_id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL CHECK (seq >= 0),
        type_name TEXT NOT NULL,
        type_version INTEGER NOT NULL,
        payload BLOB NOT NULL,
        recorded_ms INTEGER NOT NULL
    ) STRICT""",
    # position (the rowid) is insertion order; an upsert keeps it, so records with equal seq
    # keep the order the reference store gives them (a dict keeps a replaced key's place).
    """CREATE TABLE dedupe (
        position INTEGER PRIMARY KEY,
        stream_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        reply BLOB NOT NULL,
        UNIQUE (stream_id, message_id)
    ) STRICT""",
    "CREATE INDEX dedupe_by_seq ON dedupe (stream_id, seq, position)",
    """CREATE TRIGGER dedupe_counted AFTER INSERT ON dedupe BEGIN
        UPDATE streams SET dedupe_count = dedupe_count + 1 WHERE stream_id = NEW.stream_id;
    END""",
    """CREATE TRIGGER dedupe_uncounted AFTER DELETE ON dedupe BEGIN
        UPDATE streams SET dedupe_count = dedupe_count - 1 WHERE stream_id = OLD.stream_id;
    END""",
    # position orders the outbox oldest first; it only grows while rows exist.
    """CREATE TABLE outbox (
        position INTEGER PRIMARY KEY,
        message_id TEXT NOT NULL UNIQUE,
        source_stream_id TEXT NOT NULL,
        target_type TEXT NOT NULL,
        target_id TEXT NOT NULL,
        type_name TEXT NOT NULL,
        type_version INTEGER NOT NULL,
        payload BLOB NOT NULL,
        created_ms INTEGER NOT NULL
    ) STRICT""",
    """CREATE TABLE timers (
        stream_id TEXT NOT NULL,
        name TEXT NOT NULL,
        due_ms INTEGER NOT NULL,
        payload BLOB,
        PRIMARY KEY (stream_id, name)
    ) STRICT, WITHOUT ROWID""",
    "CREATE INDEX timers_by_due ON timers (due_ms, stream_id, name)",
    """CREATE TABLE instances (
        actor_type TEXT NOT NULL,
        actor_id TEXT NOT NULL,
        status TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        PRIMARY KEY (actor_type, actor_id)
    ) STRICT, WITHOUT ROWID""",
    "CREATE INDEX instances_by_status ON instances (actor_type, status, actor_id)",
    """CREATE TABLE lease_history (
        stream_id TEXT NOT NULL,
        epoch INTEGER NOT NULL CHECK (epoch >= 1),
        owner TEXT NOT NULL,
        acquired_ms INTEGER NOT NULL,
        PRIMARY KEY (stream_id, epoch)
    ) STRICT, WITHOUT ROWID""",
)

_SCHEMA_V2: Final = (
    # One row per node id; incarnation rises at every (re)join of that id.
    """CREATE TABLE members (
        node_id TEXT PRIMARY KEY,
        address TEXT NOT NULL,
        incarnation INTEGER NOT NULL CHECK (incarnation >= 1),
        state TEXT NOT NULL CHECK (state IN ('up', 'leaving', 'left')),
        heartbeat_ms INTEGER NOT NULL,
        joined_ms INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID""",
)

_SCHEMA_V3: Final = (
    # A stream's dedupe records become one key range in arrival order, so recording one writes
    # one B-tree (it wrote three: the rows, the message-id index and the age index, plus a
    # counting trigger per row). Arrival order is (seq, order of writing): a request's records
    # have seqs from the head it saw on, every stored one up to that head. Their ordinals
    # count the stream's records from 0; streams.dedupe_next is the next one, moved with the
    # head in the same update, and the window keeps the ordinals from dedupe_next - window.
    "DROP TRIGGER dedupe_counted",
    "DROP TRIGGER dedupe_uncounted",
    "ALTER TABLE streams RENAME COLUMN dedupe_count TO dedupe_next",
    """CREATE TABLE dedupe_by_arrival (
        stream_id TEXT NOT NULL,
        ordinal INTEGER NOT NULL CHECK (ordinal >= 0),
        message_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        reply BLOB NOT NULL,
        PRIMARY KEY (stream_id, ordinal)
    ) STRICT, WITHOUT ROWID""",
    """INSERT INTO dedupe_by_arrival (stream_id, ordinal, message_id, seq, reply)
    SELECT stream_id, row_number() OVER (PARTITION BY stream_id ORDER BY seq, position) - 1,
        message_id, seq, reply
    FROM dedupe""",
    """UPDATE streams SET dedupe_next = (
        SELECT count(*) FROM dedupe WHERE dedupe.stream_id = streams.stream_id)""",
    "DROP TABLE dedupe",
    "ALTER TABLE dedupe_by_arrival RENAME TO dedupe",
)

MIGRATIONS: Final = (
    Migration(1, "create the initial schema", _SCHEMA_V1),
    Migration(2, "add the cluster membership table", _SCHEMA_V2),
    Migration(3, "keep each stream's dedupe records in one range, in arrival order", _SCHEMA_V3),
    # Version 4 replaces PostgreSQL's append function; nothing changes on SQLite. Both stores
    # count versions alike, so a database says which mainspring wrote it whatever its kind.
    Migration(4, "nothing on SQLite (PostgreSQL's append takes one pass over the streams)", ()),
)
"""Every schema version in order; ``migrate_tx`` applies the ones a database lacks."""

assert [migration.version for migration in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
assert MIGRATIONS[-1].version == SCHEMA_VERSION


class UnknownSchemaVersion(Exception):
    """The database records schema versions unknown to this code (a newer mainspring wrote it)."""

    def __init__(self, found: list[int], supported: int) -> None:
        self.found = found
        self.supported = supported
        super().__init__(f"schema versions {found}, this code knows 1..{supported}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.found, self.supported))


class UnsupportedSqlite(Exception):
    """The SQLite library lacks something the schema or the statements need."""


class CommitFailed(Exception):
    """``COMMIT`` itself raised: the transaction may or may not be durable."""


# Connections


def connect(path: str) -> sqlite3.Connection:
    """A connection in autocommit mode, so ``BEGIN IMMEDIATE``/``COMMIT`` are ours alone."""
    return sqlite3.connect(path, isolation_level=None, cached_statements=CACHED_STATEMENTS)


def configure_writer(
    conn: sqlite3.Connection,
    synchronous: str,
    busy_timeout_ms: int,
    cache_mib: int = CACHE_MIB_DEFAULT,
    checkpoint_pages: int = CHECKPOINT_PAGES_DEFAULT,
) -> str:
    """Check the library and set the writer's PRAGMAs; returns the journal mode in effect
    (``wal``, or ``memory``).

    ``cache_mib`` bounds the connection's page cache; ``checkpoint_pages`` is the WAL size, in
    pages, past which a commit copies the WAL back into the database (``wal_autocheckpoint``).

    Raises:
        UnsupportedSqlite: the SQLite library is too old or lacks the JSON functions.
    """
    assert synchronous in SYNCHRONOUS_MODES, synchronous
    assert busy_timeout_ms >= 0, busy_timeout_ms
    assert cache_mib >= 1, cache_mib
    assert checkpoint_pages >= 1, checkpoint_pages
    _require_features(conn)
    conn.isolation_level = None
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    journal_mode = _switch_to_wal(conn, busy_timeout_ms)
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    [(level,)] = conn.execute("PRAGMA synchronous").fetchall()
    assert level == {"OFF": 0, "NORMAL": 1, "FULL": 2, "EXTRA": 3}[synchronous], level
    # A negative cache_size is in KiB.
    conn.execute(f"PRAGMA cache_size = {-1024 * int(cache_mib)}")
    [(pages,)] = conn.execute(f"PRAGMA wal_autocheckpoint = {int(checkpoint_pages)}").fetchall()
    assert pages == checkpoint_pages, pages
    return journal_mode


def _switch_to_wal(conn: sqlite3.Connection, busy_timeout_ms: int) -> str:
    """Set WAL mode (kept in the file, so only its first opener really switches); returns the
    journal mode in effect.

    Switching needs an exclusive lock, which SQLite requests without its busy handler (waiting
    while holding the shared lock it read the header with could deadlock). So when several
    stores open a new file at once, the losers see SQLITE_BUSY at once: they pause and try
    again, for up to ``busy_timeout_ms``, and then find the file in WAL mode already.
    """
    attempts = max(1, busy_timeout_ms // WAL_SWITCH_PAUSE_MS)
    for _ in range(attempts - 1):
        try:
            return _set_wal(conn)
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
        time.sleep(WAL_SWITCH_PAUSE_MS / 1000)
    return _set_wal(conn)


def _set_wal(conn: sqlite3.Connection) -> str:
    [(journal_mode,)] = conn.execute("PRAGMA journal_mode = WAL").fetchall()
    assert isinstance(journal_mode, str), journal_mode
    return journal_mode


def _require_features(conn: sqlite3.Connection) -> None:
    if sqlite3.sqlite_version_info < SQLITE_VERSION_MIN:
        raise UnsupportedSqlite(f"SQLite {sqlite3.sqlite_version} is older than 3.37")
    try:
        conn.execute("SELECT json_extract('[1]', '$[0]')").fetchall()
    except sqlite3.OperationalError as error:
        raise UnsupportedSqlite(f"SQLite {sqlite3.sqlite_version} lacks JSON: {error}") from error


def configure_reader(conn: sqlite3.Connection, busy_timeout_ms: int) -> None:
    """Set the reader's PRAGMAs; ``query_only`` makes any write through it an error."""
    assert busy_timeout_ms >= 0, busy_timeout_ms
    conn.isolation_level = None
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA query_only = ON")


@contextlib.contextmanager
def immediate_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """Run the body between ``BEGIN IMMEDIATE`` and ``COMMIT``; roll back if it raises.

    IMMEDIATE takes the write lock up front, so a second writer (another node on the same file)
    waits at BEGIN for ``busy_timeout`` instead of failing half-way through the transaction.

    Raises:
        CommitFailed: COMMIT raised, so the outcome is unknown.
    """
    assert not conn.in_transaction, "a transaction is already open on this connection"
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException as error:
        _roll_back(conn, error)
        raise
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as error:
        _roll_back(conn, error)
        raise CommitFailed(str(error)) from error
    assert not conn.in_transaction


def _roll_back(conn: sqlite3.Connection, error: BaseException) -> None:
    # SQLite rolls back by itself after some errors (SQLITE_FULL, SQLITE_IOERR), so only an open
    # transaction is rolled back. A failing ROLLBACK must not hide the error that caused it.
    if not conn.in_transaction:
        return
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error as rollback_error:
        error.add_note(f"ROLLBACK failed too: {rollback_error}")


# Migrations

_CREATE_MIGRATIONS_TABLE: Final = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    applied_at_ms INTEGER NOT NULL
) STRICT"""


def migrate_tx(conn: sqlite3.Connection, now_ms: int) -> list[int]:
    """Apply the migrations the database lacks, all in one transaction; returns their versions.

    Safe when several stores open one file at once: the write lock taken at BEGIN makes them
    take turns, and each sees what the others applied.

    Raises:
        UnknownSchemaVersion: the database has versions newer than ``SCHEMA_VERSION``.
    """
    with immediate_transaction(conn):
        conn.execute(_CREATE_MIGRATIONS_TABLE)
        found = schema_versions(conn)
        if any(version not in range(1, SCHEMA_VERSION + 1) for version in found):
            raise UnknownSchemaVersion(found, SCHEMA_VERSION)
        # Migrations run in order inside one transaction, so the versions form a prefix.
        assert found == list(range(1, len(found) + 1)), found
        pending = [migration for migration in MIGRATIONS if migration.version not in found]
        for migration in pending:
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, applied_at_ms) VALUES (?, ?)",
                (migration.version, now_ms),
            )
    return [migration.version for migration in pending]


def schema_versions(conn: sqlite3.Connection) -> list[int]:
    """The versions recorded in ``schema_migrations``, ascending."""
    rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    return [version for (version,) in rows]


# Leases

_ACQUIRE_LEASE: Final = """
INSERT INTO streams (stream_id, epoch, head, owner, lease_expires_ms)
VALUES (:stream_id, 1, 0, :owner, :expires_ms)
ON CONFLICT (stream_id) DO UPDATE
    SET epoch = epoch + 1, owner = :owner, lease_expires_ms = :expires_ms
    WHERE owner IS NULL OR owner = :owner OR lease_expires_ms <= :now_ms OR :steal
RETURNING epoch, head"""

_RECORD_LEASE: Final = """
INSERT INTO lease_history (stream_id, epoch, owner, acquired_ms) VALUES (?, ?, ?, ?)"""

_RENEW_LEASE: Final = """
UPDATE streams SET lease_expires_ms = ? WHERE stream_id = ? AND epoch = ? AND owner = ?"""

_RELEASE_LEASE: Final = """
UPDATE streams SET owner = NULL, lease_expires_ms = 0
WHERE stream_id = ? AND epoch = ? AND owner = ?"""


def acquire_leases_tx(
    conn: sqlite3.Connection, requests: Sequence[LeaseRequest]
) -> list[LeaseOutcome]:
    """See ``Store.acquire_leases``: per request, one conditional upsert bumps the epoch, then
    history; all in one transaction."""
    outcomes: list[LeaseOutcome] = []
    with immediate_transaction(conn):
        for request in requests:
            stream_id, owner, now_ms = request.stream_id, request.owner, request.now_ms
            expires_ms = now_ms + request.ttl_ms
            granted = conn.execute(
                _ACQUIRE_LEASE,
                {
                    "stream_id": stream_id,
                    "owner": owner,
                    "expires_ms": expires_ms,
                    "now_ms": now_ms,
                    "steal": request.steal,
                },
            ).fetchall()
            if not granted:
                outcomes.append(_lease_held(conn, stream_id))
                continue
            [(epoch, head)] = granted
            assert epoch >= 1, epoch
            assert head >= 0, head
            conn.execute(_RECORD_LEASE, (stream_id, epoch, owner, now_ms))
            outcomes.append(Lease(stream_id, owner, epoch, head, expires_ms))
    return outcomes


def _lease_held(conn: sqlite3.Connection, stream_id: str) -> LeaseHeld:
    row = conn.execute(
        "SELECT owner, lease_expires_ms FROM streams WHERE stream_id = ?", (stream_id,)
    ).fetchone()
    # The upsert declined, so the row exists and another owner holds it.
    assert row is not None, stream_id
    assert row[0] is not None, row
    return LeaseHeld(stream_id, row[0], row[1])


def renew_leases_tx(
    conn: sqlite3.Connection,
    owner: str,
    leases: Sequence[tuple[str, int]],
    now_ms: int,
    ttl_ms: int,
) -> list[str]:
    """See ``Store.renew_leases``; returns the stream ids whose lease was lost."""
    expires_ms = now_ms + ttl_ms
    rows = [(expires_ms, stream_id, epoch, owner) for stream_id, epoch in leases]
    with immediate_transaction(conn):
        if conn.executemany(_RENEW_LEASE, rows).rowcount == len(rows):
            return []
        # Some lease was lost. Renewing is idempotent, so renew again one by one to find out
        # which (the common case, nothing lost, costs one executemany).
        lost = [row[1] for row in rows if conn.execute(_RENEW_LEASE, row).rowcount == 0]
    assert lost, "the batch renewal missed a row, so at least one lease is lost"
    return lost


def release_leases_tx(
    conn: sqlite3.Connection, owner: str, leases: Sequence[tuple[str, int]]
) -> None:
    """See ``Store.release_leases``."""
    rows = [(stream_id, epoch, owner) for stream_id, epoch in leases]
    with immediate_transaction(conn):
        released = conn.executemany(_RELEASE_LEASE, rows).rowcount
    assert 0 <= released <= len(rows), (released, len(rows))


# Appends

JSON_ROWS_MAX: Final = 64
"""The most rows written through one JSON statement (``_Rows.all``). Reading a row's fields out
of JSON costs SQLite more than binding them; below this size the GIL round trips the JSON form
saves weigh more, above it the per-row parsing does."""


@attrs.frozen
class _Rows:
    """One write statement in two forms: ``each`` binds one row (for ``executemany``); ``all``
    reads every row from one JSON array (``?1``: an array of rows, each an array of ``each``'s
    parameters in order). A bytes value travels as ``[its text]`` and is cast back to a BLOB,
    so a str where bytes belong reads as NULL and is refused like any wrongly typed value.

    ``all`` writes the whole batch in one ``sqlite3_step``, which Python's ``sqlite3`` runs
    without holding the GIL: the writer thread takes the GIL back once per statement instead of
    once per row, so it is not held up row after row while the event loop's thread runs.
    """

    each: str
    all: str


def _field(index: int, *, blob: bool = False) -> str:
    if blob:
        return f"CAST(json_extract(row.value, '$[{index}][0]') AS BLOB)"
    return f"json_extract(row.value, '$[{index}]')"


# The head moves past the request's events, and dedupe_next past its dedupe records.
_ADVANCE_HEAD: Final = """
UPDATE streams SET head = ?1, dedupe_next = dedupe_next + ?5
WHERE stream_id = ?2 AND epoch = ?3 AND head = ?4"""

# Every head of the batch, or none: the uncorrelated subquery runs once, before any row changes,
# and counts the rows whose epoch and head are as expected.
_ADVANCE_HEADS: Final = f"""
UPDATE streams SET head = {_field(0)}, dedupe_next = dedupe_next + {_field(4)}
FROM json_each(?1) AS row
WHERE streams.stream_id = {_field(1)}
    AND (SELECT count(*) FROM json_each(?1) AS row JOIN streams
        ON streams.stream_id = {_field(1)} AND streams.epoch = {_field(2)}
            AND streams.head = {_field(3)}) = json_array_length(?1)"""

_INSERT_EVENT: Final = _Rows(
    each="""
INSERT INTO events
    (stream_id, seq, epoch, type_name, type_version, payload, message_id, recorded_ms)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
    all=f"""
INSERT INTO events
    (stream_id, seq, epoch, type_name, type_version, payload, message_id, recorded_ms)
SELECT {_field(0)}, {_field(1)}, {_field(2)}, {_field(3)}, {_field(4)}, {_field(5, blob=True)},
    {_field(6)}, {_field(7)}
FROM json_each(?1) AS row""",
)

# A record's ordinal counts back from the stream's dedupe_next, which the head's update has
# already moved past the request's records: ?2 is 1 for its last record, 2 for the one before.
_INSERT_DEDUPE: Final = _Rows(
    each="""
INSERT INTO dedupe (stream_id, ordinal, message_id, seq, reply)
VALUES (?1, (SELECT dedupe_next FROM streams WHERE stream_id = ?1) - ?2, ?3, ?4, ?5)""",
    all=f"""
INSERT INTO dedupe (stream_id, ordinal, message_id, seq, reply)
SELECT {_field(0)}, (SELECT dedupe_next FROM streams WHERE stream_id = {_field(0)}) - {_field(1)},
    {_field(2)}, {_field(3)}, {_field(4, blob=True)}
FROM json_each(?1) AS row""",
)

# The streams of the batch that have recorded more than their window, each with the first
# ordinal its window keeps: ? is a JSON array of [stream_id, window] pairs.
_OVER_WINDOW: Final = """
SELECT streams.stream_id, streams.dedupe_next - json_extract(value, '$[1]') FROM json_each(?)
JOIN streams ON streams.stream_id = json_extract(value, '$[0]')
WHERE streams.dedupe_next > json_extract(value, '$[1]')"""

_PRUNE_DEDUPE: Final = "DELETE FROM dedupe WHERE stream_id = ? AND ordinal < ?"

_INSERT_OUTBOX: Final = """
INSERT INTO outbox (message_id, source_stream_id, target_type, target_id, type_name,
    type_version, payload, created_ms)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (message_id) DO NOTHING"""

_CANCEL_TIMER: Final = "DELETE FROM timers WHERE stream_id = ? AND name = ?"

_SET_TIMER: Final = """
INSERT INTO timers (stream_id, name, due_ms, payload) VALUES (?, ?, ?, ?)
ON CONFLICT (stream_id, name) DO UPDATE SET due_ms = excluded.due_ms, payload = excluded.payload"""

# An equal seq replaces the stored snapshot: the same state, re-encoded by newer code.
_SAVE_SNAPSHOT: Final = """
INSERT INTO snapshots (stream_id, seq, type_name, type_version, payload, recorded_ms)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (stream_id) DO UPDATE SET seq = excluded.seq, type_name = excluded.type_name,
    type_version = excluded.type_version, payload = excluded.payload,
    recorded_ms = excluded.recorded_ms
WHERE excluded.seq >= snapshots.seq"""

# Two statements, because assigning status (even its own value) rewrites the status index entry:
# the common request, which leaves the status alone, then costs half as much.
_INDEX_INSTANCE: Final = _Rows(
    each="""
INSERT INTO instances (actor_type, actor_id, status, created_ms, updated_ms)
VALUES (?1, ?2, 'active', ?3, ?3)
ON CONFLICT (actor_type, actor_id) DO UPDATE SET updated_ms = ?3""",
    all=f"""
INSERT INTO instances (actor_type, actor_id, status, created_ms, updated_ms)
SELECT {_field(0)}, {_field(1)}, 'active', {_field(2)}, {_field(2)} FROM json_each(?1) AS row
WHERE true
ON CONFLICT (actor_type, actor_id) DO UPDATE SET updated_ms = excluded.updated_ms""",
)

_INDEX_INSTANCE_STATUS: Final = _Rows(
    each="""
INSERT INTO instances (actor_type, actor_id, status, created_ms, updated_ms)
VALUES (?1, ?2, ?3, ?4, ?4)
ON CONFLICT (actor_type, actor_id) DO UPDATE SET status = ?3, updated_ms = ?4""",
    all=f"""
INSERT INTO instances (actor_type, actor_id, status, created_ms, updated_ms)
SELECT {_field(0)}, {_field(1)}, {_field(2)}, {_field(3)}, {_field(3)} FROM json_each(?1) AS row
WHERE true
ON CONFLICT (actor_type, actor_id) DO UPDATE SET status = excluded.status,
    updated_ms = excluded.updated_ms""",
)


def append_batch_tx(
    conn: sqlite3.Connection, requests: Sequence[AppendRequest]
) -> list[AppendResult]:
    """See ``Store.append_batch``: check every request's epoch and head, write the accepted ones.

    The requests must name distinct streams (the caller checks), so no two of them touch one
    stream, timer, dedupe record, snapshot or instance row, and each table's rows of the whole
    batch can go in one ``executemany``.
    """
    with immediate_transaction(conn):
        refused = _claim_streams(conn, requests)
        if refused:
            advanced = iter(
                _advance_heads(conn, [r for r in requests if r.stream_id not in refused])
            )
            results = [
                refused[request.stream_id] if request.stream_id in refused else next(advanced)
                for request in requests
            ]
        else:
            results = _advance_heads(conn, requests)
        accepted = [
            request for request, result in zip(requests, results, strict=True) if result is None
        ]
        _write_accepted(conn, accepted)
    assert len(results) == len(requests)
    return results


_CLAIM_STREAM: Final = """
INSERT INTO streams (stream_id, epoch, head, owner, lease_expires_ms) VALUES (?, 1, 0, ?, ?)
ON CONFLICT (stream_id) DO NOTHING"""

# Every stream of the batch, or none when any of them exists already.
_CLAIM_STREAMS: Final = f"""
INSERT INTO streams (stream_id, epoch, head, owner, lease_expires_ms)
SELECT {_field(0)}, 1, 0, {_field(1)}, {_field(2)} FROM json_each(?1) AS row
WHERE NOT EXISTS (
    SELECT 1 FROM json_each(?1) AS row JOIN streams ON streams.stream_id = {_field(0)})"""

_RECORD_CLAIM: Final = _Rows(
    each="INSERT INTO lease_history (stream_id, epoch, owner, acquired_ms) VALUES (?, 1, ?, ?)",
    all=f"""
INSERT INTO lease_history (stream_id, epoch, owner, acquired_ms)
SELECT {_field(0)}, 1, {_field(1)}, {_field(2)} FROM json_each(?1) AS row""",
)


def _claim_streams(
    conn: sqlite3.Connection, requests: Sequence[AppendRequest]
) -> dict[str, AppendResult]:
    """Create the streams the requests with a ``claim`` name, each at epoch 1 leased to the
    claim's owner (and recorded in the lease history); the ``StreamExists`` of every claim
    whose stream was there already, by stream id."""
    claims = [(request, claim) for request in requests if (claim := request.claim) is not None]
    if not claims:
        return {}
    rows = [
        (request.stream_id, claim.owner, claim.now_ms + claim.ttl_ms) for request, claim in claims
    ]
    history = [(request.stream_id, claim.owner, claim.now_ms) for request, claim in claims]
    # Usually every claimed stream is new: create them all in one statement, which creates
    # all of them or none (the streams are distinct). When one exists, go one by one.
    text = _rows_as_json(rows)
    if text is not None:
        created = conn.execute(_CLAIM_STREAMS, (text,)).rowcount
        if created == len(rows):
            _write_rows(conn, _RECORD_CLAIM, history)
            return {}
        assert created == 0, (created, len(rows))
    refused: dict[str, AppendResult] = {}
    for (request, _), row, record in zip(claims, rows, history, strict=True):
        if conn.execute(_CLAIM_STREAM, row).rowcount == 1:
            conn.execute(_RECORD_CLAIM.each, record)
            continue
        current = conn.execute(
            "SELECT epoch, head FROM streams WHERE stream_id = ?", (request.stream_id,)
        ).fetchone()
        assert current is not None, request.stream_id
        refused[request.stream_id] = StreamExists(request.stream_id, current[0], current[1])
    return refused


def _advance_heads(
    conn: sqlite3.Connection, requests: Sequence[AppendRequest]
) -> list[AppendResult]:
    """Move each stream's head from ``expected_seq`` to ``new_head_seq`` under its epoch."""
    rows = [
        (
            request.new_head_seq,
            request.stream_id,
            request.epoch,
            request.expected_seq,
            len(request.dedupe),
        )
        for request in requests
    ]
    # Usually every request passes: move them all at once. The streams are distinct, so the
    # batch passed exactly when every row was moved; when one fails, go one by one to learn
    # which. A small batch takes one statement that moves every head or none; a large one an
    # executemany that is undone when it fell short.
    text = _rows_as_json(rows)
    if text is not None:
        moved = conn.execute(_ADVANCE_HEADS, (text,)).rowcount
        if moved == len(rows):
            return [None] * len(requests)
        assert moved == 0, (moved, len(rows))
    else:
        conn.execute("SAVEPOINT advance_heads")
        if conn.executemany(_ADVANCE_HEAD, rows).rowcount == len(rows):
            conn.execute("RELEASE advance_heads")
            return [None] * len(requests)
        conn.execute("ROLLBACK TO advance_heads")
        conn.execute("RELEASE advance_heads")
    return [_advance_head(conn, request, row) for request, row in zip(requests, rows, strict=True)]


def _advance_head(
    conn: sqlite3.Connection, request: AppendRequest, row: tuple[int, str, int, int, int]
) -> AppendResult:
    if conn.execute(_ADVANCE_HEAD, row).rowcount == 1:
        return None
    current = conn.execute(
        "SELECT epoch, head FROM streams WHERE stream_id = ?", (request.stream_id,)
    ).fetchone()
    if current is None or current[0] != request.epoch:
        current_epoch = 0 if current is None else current[0]
        return Fenced(request.stream_id, request.epoch, current_epoch)
    assert current[1] != request.expected_seq, (request.stream_id, current)
    return ConcurrencyConflict(request.stream_id, request.expected_seq, current[1])


def _write_accepted(conn: sqlite3.Connection, accepted: Sequence[AppendRequest]) -> None:
    """Insert everything the accepted requests carry, one statement per kind of row."""
    # Each event's seq follows from the head the conditional update just moved past, so the
    # stream's seqs stay 1..head; the (stream_id, seq) key rejects any overlap.
    event_rows = [
        (
            request.stream_id,
            seq,
            request.epoch,
            event.type_name,
            event.type_version,
            event.payload,
            event.message_id,
            request.recorded_at_ms,
        )
        for request in accepted
        for seq, event in enumerate(request.events, start=request.expected_seq + 1)
    ]
    inserted = _write_rows(conn, _INSERT_EVENT, event_rows)
    assert inserted == sum(len(request.events) for request in accepted), inserted
    _write_dedupe(conn, accepted)
    _write_outbox(conn, accepted)
    _write_timers(conn, accepted)
    _write_snapshots(conn, accepted)
    _write_instances(conn, accepted)


def _write_rows(
    conn: sqlite3.Connection, statement: _Rows, rows: Sequence[tuple[object, ...]]
) -> int:
    """Write ``rows`` with ``statement``'s JSON form, or with ``executemany`` when there are
    more than ``JSON_ROWS_MAX`` or a value cannot make the trip through JSON unchanged (bytes
    that are not UTF-8, a NUL character, an integer beyond 64 bits); returns the number of rows
    changed. Skips the call when there is nothing to write.
    """
    if not rows:
        return 0
    text = _rows_as_json(rows)
    if text is None:
        return conn.executemany(statement.each, rows).rowcount
    return conn.execute(statement.all, (text,)).rowcount


def _rows_as_json(rows: Sequence[tuple[object, ...]]) -> str | None:
    """``rows`` as the JSON array a ``_Rows.all`` statement reads, or None when they go row by
    row: more than ``JSON_ROWS_MAX`` of them, or a value that cannot make the trip unchanged.
    A str, not bytes: SQLite 3.45+ reads a BLOB argument as JSONB."""
    if len(rows) > JSON_ROWS_MAX:
        return None
    try:
        text = orjson.dumps(rows, default=_bytes_as_text).decode()
    except orjson.JSONEncodeError:
        return None
    # orjson writes every NUL as this escape, and SQLite's JSON would cut a string short at it.
    # (The test also matches an escaped backslash before "u0000": that only costs the fast path.)
    return None if "\\u0000" in text else text


def _bytes_as_text(value: object) -> list[str]:
    """orjson's ``default``: bytes as ``[the text they encode]`` (see ``_Rows``)."""
    if isinstance(value, bytes):
        return [value.decode("utf-8")]  # a UnicodeDecodeError makes orjson refuse the rows
    raise TypeError(f"{type(value).__name__} does not go into a row")


def _execute_many(conn: sqlite3.Connection, sql: str, rows: Sequence[tuple[object, ...]]) -> int:
    """``executemany`` that skips the call when there is nothing to write; returns rowcount."""
    if not rows:
        return 0
    return conn.executemany(sql, rows).rowcount


def _write_dedupe(conn: sqlite3.Connection, accepted: Sequence[AppendRequest]) -> None:
    records = [
        (request.stream_id, back, record.message_id, record.seq, record.reply)
        for request in accepted
        for back, record in zip(
            range(len(request.dedupe), 0, -1), request.dedupe_in_arrival_order(), strict=True
        )
    ]
    inserted = _write_rows(conn, _INSERT_DEDUPE, records)
    assert inserted == len(records), (inserted, len(records))
    # The reference store prunes whenever a window is given, even without new records. One
    # statement finds the streams that have recorded more than their window (none until an
    # actor has handled that many messages); only those streams are pruned.
    windows = [
        (request.stream_id, request.dedupe_window)
        for request in accepted
        if request.dedupe_window > 0
    ]
    if not windows:
        return
    # A str, not bytes: SQLite 3.45+ reads a BLOB argument as binary JSONB.
    over = conn.execute(_OVER_WINDOW, (orjson.dumps(windows).decode(),)).fetchall()
    _execute_many(conn, _PRUNE_DEDUPE, over)


def _write_outbox(conn: sqlite3.Connection, accepted: Sequence[AppendRequest]) -> None:
    messages = [
        (
            message.message_id,
            message.source_stream_id,
            message.target_type,
            message.target_id,
            message.type_name,
            message.type_version,
            message.payload,
            message.created_at_ms,
        )
        for request in accepted
        for message in request.outbox
    ]
    _execute_many(conn, _INSERT_OUTBOX, messages)


def _write_timers(conn: sqlite3.Connection, accepted: Sequence[AppendRequest]) -> None:
    # Cancellations go first, so a timer both cancelled and set by one request ends up set.
    cancelled = [
        (request.stream_id, name) for request in accepted for name in request.timers_cancelled
    ]
    _execute_many(conn, _CANCEL_TIMER, cancelled)
    timers = [
        (timer.stream_id, timer.name, timer.due_at_ms, timer.payload)
        for request in accepted
        for timer in request.timers_set
    ]
    _execute_many(conn, _SET_TIMER, timers)


def _write_snapshots(conn: sqlite3.Connection, accepted: Sequence[AppendRequest]) -> None:
    snapshots = [
        (
            snapshot.stream_id,
            snapshot.seq,
            snapshot.type_name,
            snapshot.type_version,
            snapshot.payload,
            snapshot.recorded_at_ms,
        )
        for request in accepted
        if (snapshot := request.snapshot) is not None
    ]
    _execute_many(conn, _SAVE_SNAPSHOT, snapshots)


def _write_instances(conn: sqlite3.Connection, accepted: Sequence[AppendRequest]) -> None:
    # An empty status counts as none ("or" in the reference store): the row keeps its status.
    unchanged = [
        (*split_stream_id(request.stream_id), request.recorded_at_ms)
        for request in accepted
        if not request.status
    ]
    changed = [
        (*split_stream_id(request.stream_id), request.status, request.recorded_at_ms)
        for request in accepted
        if request.status
    ]
    indexed = _write_rows(conn, _INDEX_INSTANCE, unchanged)
    indexed += _write_rows(conn, _INDEX_INSTANCE_STATUS, changed)
    assert indexed == len(accepted), (indexed, len(accepted))


# Outbox and timers


def delete_outbox_tx(conn: sqlite3.Connection, message_ids: Sequence[str]) -> None:
    """See ``Store.delete_outbox``."""
    with immediate_transaction(conn):
        deleted = _execute_many(
            conn,
            "DELETE FROM outbox WHERE message_id = ?",
            [(message_id,) for message_id in message_ids],
        )
    assert 0 <= deleted <= len(message_ids), (deleted, len(message_ids))


def delete_timer_tx(conn: sqlite3.Connection, stream_id: str, name: str, due_at_ms: int) -> bool:
    """See ``Store.delete_timer``."""
    with immediate_transaction(conn):
        deleted = conn.execute(
            "DELETE FROM timers WHERE stream_id = ? AND name = ? AND due_ms = ?",
            (stream_id, name, due_at_ms),
        ).rowcount
    assert deleted in (0, 1), deleted
    return deleted == 1


# Reads: one statement each, so each sees one committed state of the database.


def select_head(conn: sqlite3.Connection, stream_id: str) -> StreamHead | None:
    """See ``Store.read_head``."""
    row = conn.execute(
        "SELECT epoch, head, owner, lease_expires_ms FROM streams WHERE stream_id = ?",
        (stream_id,),
    ).fetchone()
    return None if row is None else StreamHead(stream_id, *row)


def select_events(
    conn: sqlite3.Connection, stream_id: str, after_seq: int, limit: int
) -> list[StoredEvent]:
    """See ``Store.read_events``."""
    rows = conn.execute(
        """SELECT seq, epoch, type_name, type_version, payload, message_id, recorded_ms
        FROM events WHERE stream_id = ? AND seq > ? ORDER BY seq LIMIT ?""",
        (stream_id, after_seq, max(limit, 0)),
    ).fetchall()
    events = [StoredEvent(stream_id, *row) for row in rows]
    # Gapless: the page starts right after after_seq and its seqs are consecutive.
    if events:
        assert events[0].seq == max(after_seq, 0) + 1, (stream_id, after_seq, events[0].seq)
        assert events[-1].seq == events[0].seq + len(events) - 1, (stream_id, after_seq)
    return events


def select_snapshot(conn: sqlite3.Connection, stream_id: str) -> Snapshot | None:
    """See ``Store.read_snapshot``."""
    row = conn.execute(
        """SELECT seq, type_name, type_version, payload, recorded_ms
        FROM snapshots WHERE stream_id = ?""",
        (stream_id,),
    ).fetchone()
    return None if row is None else Snapshot(stream_id, *row)


def select_dedupe(conn: sqlite3.Connection, stream_id: str, limit: int) -> list[DedupeRecord]:
    """See ``Store.read_dedupe``: the newest ``limit`` records, returned oldest first."""
    rows = conn.execute(
        """SELECT message_id, seq, reply FROM (
            SELECT ordinal, message_id, seq, reply FROM dedupe WHERE stream_id = ?
            ORDER BY ordinal DESC LIMIT ?)
        ORDER BY ordinal""",
        (stream_id, max(limit, 0)),
    ).fetchall()
    return [DedupeRecord(*row) for row in rows]


def select_lease_history(conn: sqlite3.Connection, stream_id: str) -> list[LeaseRecord]:
    """See ``Store.read_lease_history``."""
    rows = conn.execute(
        """SELECT epoch, owner, acquired_ms FROM lease_history
        WHERE stream_id = ? ORDER BY epoch""",
        (stream_id,),
    ).fetchall()
    return [LeaseRecord(stream_id, *row) for row in rows]


def select_outbox(conn: sqlite3.Connection, limit: int) -> list[OutboxMessage]:
    """See ``Store.read_outbox``."""
    rows = conn.execute(
        """SELECT message_id, source_stream_id, target_type, target_id, type_name,
            type_version, payload, created_ms
        FROM outbox ORDER BY position LIMIT ?""",
        (max(limit, 0),),
    ).fetchall()
    return [OutboxMessage(*row) for row in rows]


def select_due_timers(conn: sqlite3.Connection, now_ms: int, limit: int) -> list[Timer]:
    """See ``Store.read_due_timers``."""
    rows = conn.execute(
        """SELECT stream_id, name, due_ms, payload FROM timers
        WHERE due_ms <= ? ORDER BY due_ms, stream_id, name LIMIT ?""",
        (now_ms, max(limit, 0)),
    ).fetchall()
    return [Timer(*row) for row in rows]


def select_next_timer_due_ms(conn: sqlite3.Connection) -> int | None:
    """See ``Store.next_timer_due_ms``."""
    [(due_ms,)] = conn.execute("SELECT min(due_ms) FROM timers").fetchall()
    assert due_ms is None or isinstance(due_ms, int), due_ms
    return due_ms


def select_instance(
    conn: sqlite3.Connection, actor_type: str, actor_id: str
) -> InstanceInfo | None:
    """See ``Store.read_instance``."""
    row = conn.execute(
        """SELECT status, created_ms, updated_ms FROM instances
        WHERE actor_type = ? AND actor_id = ?""",
        (actor_type, actor_id),
    ).fetchone()
    return None if row is None else InstanceInfo(actor_type, actor_id, *row)


def select_instances(
    conn: sqlite3.Connection,
    actor_type: str | None,
    status: str | None,
    limit: int,
    after: tuple[str, str] | None,
) -> list[InstanceInfo]:
    """See ``Store.list_instances``.

    Only the filters in use go into the WHERE clause (from constant fragments), so each of the
    eight shapes gets a plan that uses the primary key or the status index.
    """
    conditions: list[str] = []
    parameters: list[object] = []
    if actor_type is not None:
        conditions.append("actor_type = ?")
        parameters.append(actor_type)
    if status is not None:
        conditions.append("status = ?")
        parameters.append(status)
    if after is not None:
        conditions.append("(actor_type, actor_id) > (?, ?)")
        parameters.extend(after)
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    rows = conn.execute(
        f"""SELECT actor_type, actor_id, status, created_ms, updated_ms FROM instances {where}
        ORDER BY actor_type, actor_id LIMIT ?""",
        (*parameters, max(limit, 0)),
    ).fetchall()
    return [InstanceInfo(*row) for row in rows]


def select_streams(conn: sqlite3.Connection) -> list[StreamHead]:
    """See ``Store.list_streams``."""
    rows = conn.execute(
        """SELECT stream_id, epoch, head, owner, lease_expires_ms
        FROM streams ORDER BY stream_id"""
    ).fetchall()
    return [StreamHead(*row) for row in rows]


# Cluster membership

_JOIN_MEMBER: Final = """
INSERT INTO members (node_id, address, incarnation, state, heartbeat_ms, joined_ms)
VALUES (:node_id, :address, max(:after + 1, :now_ms), 'up', :now_ms, :now_ms)
ON CONFLICT (node_id) DO UPDATE
    SET address = :address, incarnation = excluded.incarnation, state = 'up',
        heartbeat_ms = :now_ms, joined_ms = :now_ms
    WHERE members.incarnation = :after
RETURNING incarnation"""

_HEARTBEAT_MEMBER: Final = """
UPDATE members SET heartbeat_ms = max(heartbeat_ms + 1, :now_ms), state = :state
WHERE node_id = :node_id AND incarnation = :incarnation
    AND (CASE state WHEN 'up' THEN 0 WHEN 'leaving' THEN 1 ELSE 2 END) <= :rank"""


def join_member_tx(
    conn: sqlite3.Connection, node_id: str, address: str, now_ms: int, after_incarnation: int
) -> Member | None:
    """See ``Store.join_member``: one conditional upsert takes the next incarnation."""
    with immediate_transaction(conn):
        rows = conn.execute(
            _JOIN_MEMBER,
            {"node_id": node_id, "address": address, "now_ms": now_ms, "after": after_incarnation},
        ).fetchall()
    if not rows:
        return None
    [(incarnation,)] = rows
    assert incarnation == max(after_incarnation + 1, now_ms), (incarnation, after_incarnation)
    return Member(node_id, address, incarnation, "up", now_ms, now_ms)


def heartbeat_member_tx(
    conn: sqlite3.Connection, node_id: str, incarnation: int, now_ms: int, state: str
) -> bool:
    """See ``Store.heartbeat_member``."""
    with immediate_transaction(conn):
        updated = conn.execute(
            _HEARTBEAT_MEMBER,
            {
                "node_id": node_id,
                "incarnation": incarnation,
                "now_ms": now_ms,
                "state": state,
                "rank": MEMBER_STATES.index(state),
            },
        ).rowcount
    assert updated in (0, 1), updated
    return updated == 1


def prune_member_tx(
    conn: sqlite3.Connection, node_id: str, incarnation: int, heartbeat_at_ms: int
) -> bool:
    """See ``Store.prune_member``."""
    with immediate_transaction(conn):
        deleted = conn.execute(
            "DELETE FROM members WHERE node_id = ? AND incarnation = ? AND heartbeat_ms = ?",
            (node_id, incarnation, heartbeat_at_ms),
        ).rowcount
    assert deleted in (0, 1), deleted
    return deleted == 1


def select_members(conn: sqlite3.Connection) -> list[Member]:
    """See ``Store.list_members``."""
    rows = conn.execute(
        "SELECT node_id, address, incarnation, state, heartbeat_ms, joined_ms FROM members "
        "ORDER BY node_id"
    ).fetchall()
    return [Member(*row) for row in rows]
