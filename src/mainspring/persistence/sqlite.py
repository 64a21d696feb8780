"""SqliteStore: the embedded Store, one SQLite file in WAL mode shared by the nodes that open it.

Each operation is one synchronous function over a ``sqlite3.Connection`` (in ``_sqlite_sql``)
that does a whole transaction. A *runner* executes it: ``AiosqliteRunner`` on aiosqlite's worker
thread (one thread hop per transaction, not per statement), ``InlineRunner`` in the calling thread
(for the deterministic simulator, which allows no threads), ``ProcessRunner`` in a child process
with a GIL of its own (``writer="process"``). Writes go through one writer connection and reads
through one reader connection; in WAL mode readers never block the writer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Protocol, TypeVar, cast, final

import aiosqlite
import attrs

from mainspring.errors import MainspringInternalError, StoreUnavailable, UsageError
from mainspring.persistence import _sqlite_sql as sql
from mainspring.persistence._sqlite_process import ProcessRunner, WriterProcessLost
from mainspring.persistence.store import (
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
    check_incarnation,
    check_lease_requests,
    check_member_state,
    single_lease,
)
from mainspring.seams import Clock, SystemClock

__all__ = [
    "WRITERS",
    "AiosqliteRunner",
    "InlineRunner",
    "ProcessRunner",
    "RunnerFactory",
    "SqliteRunner",
    "SqliteStore",
    "default_writer",
]

T = TypeVar("T")

log: Final = logging.getLogger(__name__)

_MEMORY_PATH = ":memory:"

_RESTART_INTERVAL_S: Final = 1.0
"""After a failed attempt to start a new writer process, writes fail at once (instead of each
trying again) for this long."""

WRITERS: Final = ("thread", "process")
"""Where ``SqliteStore(writer=...)`` runs its writer connection."""


def default_writer(path: str | os.PathLike[str], *, custom_runner: bool = False) -> str:
    """The writer ``SqliteStore`` picks when none is named: ``"process"`` for a database file on
    a POSIX system, ``"thread"`` for ``":memory:"`` (which a child process cannot share), on
    other systems, and when a ``runner_factory`` is given (it then runs the writer too)."""
    if custom_runner or os.name != "posix" or os.fspath(path) == _MEMORY_PATH:
        return "thread"
    return "process"


class SqliteRunner(Protocol):
    """Runs functions over one ``sqlite3.Connection``, one at a time, in submission order."""

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Call ``fn(connection, *args)`` and return its result (or raise its exception)."""
        ...

    async def close(self) -> None:
        """Close the connection. Idempotent."""
        ...


RunnerFactory = Callable[[str], Awaitable[SqliteRunner]]
"""Opens a runner over a new connection to the database at a path (``AiosqliteRunner.open``)."""


@final
class AiosqliteRunner:
    """Runs each function on the worker thread of an ``aiosqlite.Connection``.

    aiosqlite offers no public way to run a function of ours on its thread, and an ``await`` per
    statement would cost a thread hop (~65 µs on a busy VM) per statement. This class is the
    only user of two private members, ``Connection._execute`` (queue a callable on the worker
    thread) and ``Connection._conn`` (the ``sqlite3.Connection`` that thread owns); ``open``
    checks both exist, so an aiosqlite release without them fails there with a clear message.
    """

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._connection = connection
        self._raw = connection._conn

    @classmethod
    async def open(cls, path: str) -> AiosqliteRunner:
        """Connect to the database at ``path`` (autocommit mode) and start the worker thread.

        Raises:
            StoreUnavailable: the installed aiosqlite lacks the members this runner needs.
            sqlite3.Error: the database could not be opened.
        """
        missing = [
            name for name in ("_execute", "_conn") if not hasattr(aiosqlite.Connection, name)
        ]
        if missing:
            raise StoreUnavailable(
                f"aiosqlite {getattr(aiosqlite, '__version__', '?')} lacks Connection."
                f"{', Connection.'.join(missing)}, which SqliteStore uses to run a transaction in "
                "one call on its worker thread; install aiosqlite>=0.20,<0.23 as pyproject.toml "
                "declares, or pass runner_factory=InlineRunner.open."
            )
        connection = await aiosqlite.connect(
            path, isolation_level=None, cached_statements=sql.CACHED_STATEMENTS
        )
        return cls(connection)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(connection, *args)`` on the worker thread: one thread hop, however many
        statements it runs."""
        result = await self._connection._execute(fn, self._raw, *args)  # type: ignore[no-untyped-call]
        return cast("T", result)

    async def close(self) -> None:
        """Close the connection and stop the worker thread (after queued functions). Idempotent."""
        await self._connection.close()


@final
class InlineRunner:
    """Runs each function directly in the calling thread: no threads, no suspension.

    For the deterministic simulator (and tools that want no threads). A function that waits for
    a lock held by another connection blocks the event loop for up to the busy timeout.
    """

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection: sqlite3.Connection | None = connection

    @classmethod
    async def open(cls, path: str) -> InlineRunner:
        """Connect to the database at ``path`` in autocommit mode, in the calling thread.

        Raises:
            sqlite3.Error: the database could not be opened.
        """
        return cls(sql.connect(path))

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Call ``fn(connection, *args)``, right now."""
        if self._connection is None:
            raise UsageError("this InlineRunner is closed; open a new one")
        return fn(self._connection, *args)

    async def close(self) -> None:
        """Close the connection. Idempotent."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None


@attrs.frozen
class _Connections:
    writer: SqliteRunner
    reader: SqliteRunner
    """The writer itself for ``:memory:``, where a second connection would see another database."""


@final
class SqliteStore:
    """The Store on one SQLite file in WAL mode, with one writer and one reader connection.

    Several ``SqliteStore`` objects (in one process or several) may open the same file: SQLite's
    write lock serialises their transactions, and the epochs fence stale writers.

    ``":memory:"`` gives a private database that lives while the store is open, over a single
    connection that serves both reads and writes (a second connection would see an empty
    database); other store objects cannot share it.

    Args:
        path: The database file; created, with its schema, if missing. Its directory must exist.
        synchronous: ``"FULL"`` (the default) syncs the WAL at every commit, so an acknowledged
            append survives power loss. ``"NORMAL"`` syncs only at checkpoints: faster, and
            still consistent, but the last commits before a power loss may roll back.
            ``"EXTRA"`` also syncs the directory.
        busy_timeout_ms: How long a transaction waits for another connection's write lock
            (another node on the same file) before failing with ``StoreUnavailable``.
        runner_factory: Opens the runner of each connection; ``AiosqliteRunner.open`` by default,
            ``InlineRunner.open`` to run everything in the calling thread. With
            ``writer="process"`` it opens the reader only.
        clock: Stamps applied schema migrations; ``SystemClock()`` by default.
        writer: ``"process"`` runs the writer connection in a child process of its own
            (``ProcessRunner``), so its transactions never wait for the event loop's thread to
            let go of the GIL (see docs/node.md). The child starts at ``open`` and exits at
            ``close`` or when this process dies; if it is lost while the store is open, the
            calls it had been sent fail as ambiguous and the next write starts a new one.
            POSIX only, and not with ``":memory:"``. ``"thread"`` runs it through
            ``runner_factory`` (aiosqlite's worker thread by default), in this process. By
            default (``None``), ``default_writer`` chooses: ``"process"`` for a file on POSIX
            without a ``runner_factory``, else ``"thread"``.
        cache_mib: The writer connection's page cache, in MiB (default 64; SQLite's own
            default is 2). Memory is taken as pages are read, up to this bound.
        checkpoint_pages: The WAL size, in pages, past which a commit checkpoints it into the
            database file (SQLite's ``wal_autocheckpoint``; default 10,000, about 40 MiB of
            WAL, against SQLite's own 1,000). Higher means fewer, larger checkpoints: each
            page is written back once per checkpoint however many commits changed it.

    Raises:
        UsageError: ``synchronous``, ``busy_timeout_ms``, ``writer``, ``cache_mib`` or
            ``checkpoint_pages`` is invalid.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 5_000,
        runner_factory: RunnerFactory | None = None,
        clock: Clock | None = None,
        writer: str | None = None,
        cache_mib: int = sql.CACHE_MIB_DEFAULT,
        checkpoint_pages: int = sql.CHECKPOINT_PAGES_DEFAULT,
    ) -> None:
        if synchronous.upper() not in sql.SYNCHRONOUS_MODES:
            raise UsageError(
                f"synchronous must be one of {sorted(sql.SYNCHRONOUS_MODES)}, got {synchronous!r}"
            )
        if busy_timeout_ms < 0:
            raise UsageError(f"busy_timeout_ms must be >= 0, got {busy_timeout_ms}")
        for name, value in (("cache_mib", cache_mib), ("checkpoint_pages", checkpoint_pages)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{name} must be an int >= 1, got {value!r}")
        if writer is None:
            writer = default_writer(path, custom_runner=runner_factory is not None)
        if writer not in WRITERS:
            raise UsageError(f"writer must be one of {list(WRITERS)} or None, got {writer!r}")
        if writer == "process" and os.fspath(path) == _MEMORY_PATH:
            raise UsageError(
                "writer='process' cannot share a ':memory:' database with this process; name a "
                "file, or use writer='thread'"
            )
        if writer == "process" and os.name != "posix":
            raise UsageError(
                "writer='process' needs a POSIX system (Linux, macOS); use writer='thread'"
            )
        self._writer_kind = writer
        self._path = os.fspath(path)
        self._synchronous = synchronous.upper()
        self._busy_timeout_ms = busy_timeout_ms
        self._cache_mib = cache_mib
        self._checkpoint_pages = checkpoint_pages
        self._runner_factory: RunnerFactory = runner_factory or AiosqliteRunner.open
        self._clock: Clock = clock or SystemClock()
        self._connections: _Connections | None = None
        self._open_lock = asyncio.Lock()
        self._restart_failed: tuple[float, StoreUnavailable] | None = None
        self._writer_restarts = 0

    @property
    def path(self) -> str:
        """The database path this store opens."""
        return self._path

    @property
    def writer(self) -> str:
        """Where the writer connection runs: ``"thread"`` or ``"process"``."""
        return self._writer_kind

    @property
    def writer_pid(self) -> int | None:
        """The writer process's id while the store is open with ``writer="process"``; else
        ``None``."""
        connections = self._connections
        if connections is None or not isinstance(connections.writer, ProcessRunner):
            return None
        return connections.writer.pid

    @property
    def writer_restarts(self) -> int:
        """How many times this store started a new writer process after losing one."""
        return self._writer_restarts

    async def open(self) -> None:
        """Connect, switch the file to WAL mode and apply pending migrations. Idempotent.

        Raises:
            StoreUnavailable: the database cannot be opened or migrated, or it was written by a
                newer mainspring (its schema version is unknown here).
        """
        async with self._open_lock:
            if self._connections is None:
                self._connections = await self._connect()

    async def close(self) -> None:
        """Close both connections (after the operations already submitted). Idempotent."""
        async with self._open_lock:  # not halfway through an open or a writer restart
            connections, self._connections = self._connections, None
        if connections is None:
            return
        try:
            if connections.reader is not connections.writer:
                await connections.reader.close()
        finally:
            await connections.writer.close()

    async def _connect(self) -> _Connections:
        writer = await self._start_runner(
            ProcessRunner.open if self._writer_kind == "process" else self._runner_factory
        )
        reader: SqliteRunner | None = None
        try:
            await self._prepare_writer(writer)
            if self._path == _MEMORY_PATH:
                return _Connections(writer, writer)
            reader = await self._start_runner(self._runner_factory)
            busy_timeout_ms = self._busy_timeout_ms
            await self._call(reader, "configure", sql.configure_reader, busy_timeout_ms)
            return _Connections(writer, reader)
        except BaseException:
            if reader is not None:
                await reader.close()
            await writer.close()
            raise

    async def _start_runner(self, factory: RunnerFactory) -> SqliteRunner:
        try:
            return await factory(self._path)
        except sqlite3.Error as error:
            raise self._unavailable(error, "open") from error
        except WriterProcessLost as error:
            raise StoreUnavailable(
                f"cannot open SQLite database {self._path!r}: {error}. Check that the Python "
                "running this process can start another one, or use writer='thread'."
            ) from error

    async def _restart_writer(self, lost: ProcessRunner) -> SqliteRunner:
        """A new writer process in place of ``lost``, which is gone (``lost.lost`` says why).

        Raises:
            StoreUnavailable: the new process could not be started or prepared (nothing was
                written), now or less than ``_RESTART_INTERVAL_S`` ago.
        """
        async with self._open_lock:
            connections = self._require_open()
            if connections.writer is not lost:
                return connections.writer  # another write restarted it meanwhile
            now = self._clock.monotonic_s()
            if self._restart_failed is not None:
                failed_at, error = self._restart_failed
                if now - failed_at < _RESTART_INTERVAL_S:
                    raise StoreUnavailable(
                        f"the SQLite writer process for {self._path!r} is gone ({lost.lost}), and "
                        f"starting a new one failed {now - failed_at:.1f}s ago: {error} The next "
                        f"write after {_RESTART_INTERVAL_S:g}s tries again. Nothing was written."
                    )
            try:
                runner = cast("ProcessRunner", await self._start_runner(ProcessRunner.open))
                try:
                    await self._prepare_writer(runner)
                except BaseException:
                    await runner.close()
                    raise
            except StoreUnavailable as error:
                self._restart_failed = (now, error)
                raise
            self._restart_failed = None
            self._connections = attrs.evolve(connections, writer=runner)
            self._writer_restarts += 1
        log.warning(
            "SqliteWriterRestarted",
            extra={"path": self._path, "pid": runner.pid, "lost": str(lost.lost)},
        )
        await lost.close()
        return runner

    async def _prepare_writer(self, writer: SqliteRunner) -> None:
        synchronous, busy_timeout_ms = self._synchronous, self._busy_timeout_ms
        try:
            journal_mode = await self._call(
                writer,
                "configure",
                sql.configure_writer,
                synchronous,
                busy_timeout_ms,
                self._cache_mib,
                self._checkpoint_pages,
            )
        except sql.UnsupportedSqlite as error:
            raise StoreUnavailable(
                f"cannot use SQLite database {self._path!r}: {error}. SqliteStore needs SQLite "
                "3.37 or newer with the JSON functions: run a Python linked against such a "
                "library (sqlite3.sqlite_version shows which one it uses)."
            ) from error
        expected_mode = "memory" if self._path == _MEMORY_PATH else "wal"
        if journal_mode.lower() != expected_mode:
            raise StoreUnavailable(
                f"SQLite database {self._path!r} is in journal mode {journal_mode!r} and could "
                "not be switched to WAL; the file system may not support the shared memory WAL "
                "needs (network file systems often do not): put the database on a local disk."
            )
        now_ms = self._clock.wall_ms()
        try:
            await self._call(writer, "migrate", sql.migrate_tx, now_ms)
        except sql.UnknownSchemaVersion as error:
            raise StoreUnavailable(
                f"SQLite database {self._path!r} has schema versions {error.found}, but this "
                f"mainspring knows only versions 1..{error.supported}: a newer mainspring wrote "
                "it. Upgrade mainspring, or point this node at another database."
            ) from error

    # Calls and errors

    def _require_open(self) -> _Connections:
        if self._connections is None:
            raise UsageError(
                f"the SQLite store at {self._path!r} is not open; call 'await store.open()' first"
            )
        return self._connections

    async def _write(self, operation: str, fn: Callable[..., T], *args: Any) -> T:
        writer = self._require_open().writer
        if isinstance(writer, ProcessRunner) and writer.lost is not None:
            writer = await self._restart_writer(writer)
        return await self._call(writer, operation, fn, *args)

    async def _read(self, operation: str, fn: Callable[..., T], *args: Any) -> T:
        return await self._call(self._require_open().reader, operation, fn, *args)

    async def _call(
        self, runner: SqliteRunner, operation: str, fn: Callable[..., T], *args: Any
    ) -> T:
        """``fn(connection, *args)`` on ``runner``, with its errors as mainspring errors. ``fn``
        is a module-level function of ``_sqlite_sql``, so any runner can send it anywhere."""
        try:
            return await runner.run(fn, *args)
        except WriterProcessLost as error:
            outcome = (
                "It may or may not have committed: read the state back before retrying."
                if error.ambiguous
                else "Nothing was written."
            )
            raise StoreUnavailable(
                f"{operation} on SQLite database {self._path!r} failed: {error}. {outcome} The "
                "next write starts a new writer process.",
                ambiguous=error.ambiguous,
            ) from error
        except sql.CommitFailed as error:
            raise StoreUnavailable(
                f"COMMIT of {operation} failed on SQLite database {self._path!r}: {error}. It may "
                "or may not have committed: read the state back before retrying. Check the disk "
                "(space, I/O errors) if this repeats.",
                ambiguous=True,
            ) from error
        except sqlite3.Error as error:
            raise self._translate(error, operation) from error

    def _translate(self, error: sqlite3.Error, operation: str) -> Exception:
        """The mainspring error for a driver error: operational trouble, a bad value, or a bug."""
        if isinstance(error, sqlite3.IntegrityError) and error.sqlite_errorcode in (
            sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY,
            sqlite3.SQLITE_CONSTRAINT_UNIQUE,
        ):
            return MainspringInternalError(
                f"{operation} broke a key of SQLite database {self._path!r} ({error}); the "
                "fencing checks should have prevented it. Please report this with the traceback."
            )
        if isinstance(
            error,
            sqlite3.IntegrityError
            | sqlite3.DataError
            | sqlite3.InterfaceError
            | sqlite3.ProgrammingError,
        ):
            return UsageError(
                f"SQLite refused a value passed to {operation} ({error}); check the types of the "
                "record fields (str, int, bytes, as the record classes declare)."
            )
        return self._unavailable(error, operation)

    def _unavailable(self, error: sqlite3.Error, operation: str) -> StoreUnavailable:
        advice = (
            "Check that the file is a mainspring SQLite database, that its directory is "
            "writable and the disk is not full, and that no other process holds the write lock "
            f"for longer than busy_timeout_ms={self._busy_timeout_ms}."
        )
        directory = os.path.dirname(os.path.abspath(self._path))
        if self._path != _MEMORY_PATH and not os.path.isdir(directory):
            advice = f"The directory {directory!r} does not exist: create it first."
        return StoreUnavailable(
            f"{operation} failed on SQLite database {self._path!r}: {error}. {advice}"
        )

    # Leases

    async def acquire_lease(
        self, stream_id: str, owner: str, now_ms: int, ttl_ms: int, *, steal: bool = False
    ) -> Lease:
        """See ``Store.acquire_lease``.

        Raises:
            LeaseHeld: another owner holds an unexpired lease and ``steal`` is false.
            StoreUnavailable: the transaction failed.
        """
        return single_lease(
            await self.acquire_leases([LeaseRequest(stream_id, owner, now_ms, ttl_ms, steal)])
        )

    async def acquire_leases(self, requests: Sequence[LeaseRequest]) -> list[LeaseOutcome]:
        """See ``Store.acquire_leases``: one transaction, one thread hop, for the whole batch.

        Raises:
            UsageError: two requests name one stream, or a stream id is malformed.
            StoreUnavailable: the transaction failed.
        """
        self._require_open()
        check_lease_requests(requests)
        if not requests:
            return []
        return await self._write("acquire_leases", sql.acquire_leases_tx, requests)

    async def renew_leases(
        self, owner: str, leases: Sequence[tuple[str, int]], now_ms: int, ttl_ms: int
    ) -> list[str]:
        """See ``Store.renew_leases``."""
        if not leases:
            self._require_open()
            return []
        return await self._write("renew_leases", sql.renew_leases_tx, owner, leases, now_ms, ttl_ms)

    async def release_leases(self, owner: str, leases: Sequence[tuple[str, int]]) -> None:
        """See ``Store.release_leases``."""
        if not leases:
            self._require_open()
            return
        await self._write("release_leases", sql.release_leases_tx, owner, leases)

    # Appends

    async def append_batch(self, requests: Sequence[AppendRequest]) -> list[AppendResult]:
        """See ``Store.append_batch``: one transaction, one thread hop, for the whole batch.

        Raises:
            UsageError: two requests name the same stream.
            StoreUnavailable: the whole batch failed (``ambiguous`` if it may have committed).
        """
        self._require_open()
        stream_ids = {request.stream_id for request in requests}
        if len(stream_ids) != len(requests):
            raise UsageError(_twice_named(requests))
        if not requests:
            return []
        return await self._write("append_batch", sql.append_batch_tx, requests)

    # Reads

    async def read_head(self, stream_id: str) -> StreamHead | None:
        """See ``Store.read_head``."""
        return await self._read("read_head", sql.select_head, stream_id)

    async def read_events(
        self, stream_id: str, after_seq: int = 0, limit: int = 10_000
    ) -> list[StoredEvent]:
        """See ``Store.read_events``."""
        return await self._read("read_events", sql.select_events, stream_id, after_seq, limit)

    async def read_snapshot(self, stream_id: str) -> Snapshot | None:
        """See ``Store.read_snapshot``."""
        return await self._read("read_snapshot", sql.select_snapshot, stream_id)

    async def read_dedupe(self, stream_id: str, limit: int) -> list[DedupeRecord]:
        """See ``Store.read_dedupe``."""
        return await self._read("read_dedupe", sql.select_dedupe, stream_id, limit)

    async def read_lease_history(self, stream_id: str) -> list[LeaseRecord]:
        """See ``Store.read_lease_history``."""
        return await self._read("read_lease_history", sql.select_lease_history, stream_id)

    # Outbox and timers

    async def read_outbox(self, limit: int) -> list[OutboxMessage]:
        """See ``Store.read_outbox``."""
        return await self._read("read_outbox", sql.select_outbox, limit)

    async def delete_outbox(self, message_ids: Sequence[str]) -> None:
        """See ``Store.delete_outbox``."""
        if not message_ids:
            self._require_open()
            return
        await self._write("delete_outbox", sql.delete_outbox_tx, message_ids)

    async def read_due_timers(self, now_ms: int, limit: int) -> list[Timer]:
        """See ``Store.read_due_timers``."""
        return await self._read("read_due_timers", sql.select_due_timers, now_ms, limit)

    async def next_timer_due_ms(self) -> int | None:
        """See ``Store.next_timer_due_ms``."""
        return await self._read("next_timer_due_ms", sql.select_next_timer_due_ms)

    async def delete_timer(self, stream_id: str, name: str, due_at_ms: int) -> bool:
        """See ``Store.delete_timer``."""
        return await self._write("delete_timer", sql.delete_timer_tx, stream_id, name, due_at_ms)

    # Instance index

    async def read_instance(self, actor_type: str, actor_id: str) -> InstanceInfo | None:
        """See ``Store.read_instance``."""
        return await self._read("read_instance", sql.select_instance, actor_type, actor_id)

    async def list_instances(
        self,
        actor_type: str | None = None,
        status: str | None = None,
        limit: int = 100,
        after: tuple[str, str] | None = None,
    ) -> list[InstanceInfo]:
        """See ``Store.list_instances``."""
        return await self._read(
            "list_instances",
            sql.select_instances,
            actor_type,
            status,
            limit,
            after,
        )

    async def list_streams(self) -> list[StreamHead]:
        """See ``Store.list_streams``."""
        return await self._read("list_streams", sql.select_streams)

    # Cluster membership

    async def join_member(
        self, node_id: str, address: str, now_ms: int, after_incarnation: int
    ) -> Member | None:
        """See ``Store.join_member``."""
        check_incarnation(after_incarnation)
        return await self._write(
            "join_member",
            sql.join_member_tx,
            node_id,
            address,
            now_ms,
            after_incarnation,
        )

    async def heartbeat_member(
        self, node_id: str, incarnation: int, now_ms: int, state: str = "up"
    ) -> bool:
        """See ``Store.heartbeat_member``."""
        check_member_state(state)
        return await self._write(
            "heartbeat_member",
            sql.heartbeat_member_tx,
            node_id,
            incarnation,
            now_ms,
            state,
        )

    async def list_members(self) -> list[Member]:
        """See ``Store.list_members``."""
        return await self._read("list_members", sql.select_members)

    async def prune_member(self, node_id: str, incarnation: int, heartbeat_at_ms: int) -> bool:
        """See ``Store.prune_member``."""
        check_incarnation(incarnation)
        return await self._write(
            "prune_member",
            sql.prune_member_tx,
            node_id,
            incarnation,
            heartbeat_at_ms,
        )


def _twice_named(requests: Sequence[AppendRequest]) -> str:
    seen: set[str] = set()
    for request in requests:
        if request.stream_id in seen:
            return (
                f"a batch names stream {request.stream_id!r} twice; merge the two requests "
                "into one, or append them in separate batches."
            )
        seen.add(request.stream_id)
    raise MainspringInternalError("no stream is named twice, yet the ids are not distinct")
