"""PostgresStore: the Store protocol on PostgreSQL through asyncpg, for clusters of nodes.

Every node opens its own ``PostgresStore`` over one database; fencing between them rests on the
database alone. The rules of ``mainspring.persistence.store`` are kept by SQL inside one
transaction:

* ``acquire_leases`` is one conditional upsert of the stream rows (plus their lease-history rows).
* ``append_batch`` is one call of the ``append_batch`` SQL function (see
  ``schema/postgres/0001_initial.sql``): it locks the named streams in stream-id order, decides
  each request on its locked row, and writes what the accepted ones carry. One round trip and one
  commit per batch, whatever its size.

The instance index lives in the stream row (an ``instances`` view shows it), so an append
updates one row per stream. Statements run in autocommit, one per operation, so an operation
costs one round trip. Schema changes are versioned migrations, applied by ``open`` under a
transaction-scoped advisory lock so that nodes starting together apply each one once.
"""

from __future__ import annotations

import asyncio
import logging
import re
import urllib.parse
import zlib
from collections.abc import Sequence
from importlib import resources
from typing import Any, Final, final

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from mainspring.errors import (
    ConcurrencyConflict,
    Fenced,
    LeaseHeld,
    StoreUnavailable,
    StreamExists,
    UsageError,
)
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
    check_incarnation,
    check_lease_requests,
    check_member_state,
    single_lease,
    split_stream_id,
)

__all__ = ["PostgresStore"]

logger = logging.getLogger(__name__)

_MIGRATIONS: Final = (
    (1, "0001_initial.sql"),
    (2, "0002_members.sql"),
    (3, "0003_dedupe_by_arrival.sql"),
    (4, "0004_append_in_one_update.sql"),
)
"""Every schema version with the file that creates it from the one before, oldest first."""
assert [version for version, _ in _MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))

_SCHEMA_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_IDENTIFIER_BYTES_MAX: Final = 63  # PostgreSQL's NAMEDATALEN - 1
_MIGRATION_LOCK_CLASS: Final = 0x6D6E7370  # "mnsp": the first key of the advisory lock
_LEASE_ATTEMPTS_MAX: Final = 3

# The connection-level SQLSTATEs: the server or the link failed, not the statement, so a write
# in flight may have committed.
_CONNECTION_SQLSTATE_CLASS: Final = "08"
_SHUTDOWN_SQLSTATES: Final = frozenset({"57P01", "57P02", "57P03"})
_DATA_EXCEPTION_SQLSTATE_CLASS: Final = "22"

_DRIVER_ERRORS: Final = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
    TimeoutError,
)

# The parameters of the append_batch SQL function, in order, with their types.
_APPEND_PARAMETERS: Final = (
    ("p_stream", "text[]"),
    ("p_epoch", "bigint[]"),
    ("p_expected", "bigint[]"),
    ("p_new_head", "bigint[]"),
    ("p_recorded_ms", "bigint[]"),
    ("p_dedupe_window", "bigint[]"),
    ("p_status", "text[]"),
    ("e_request", "integer[]"),
    ("e_stream", "text[]"),
    ("e_seq", "bigint[]"),
    ("e_type_name", "text[]"),
    ("e_type_version", "integer[]"),
    ("e_payload", "bytea[]"),
    ("e_message_id", "text[]"),
    ("d_request", "integer[]"),
    ("d_stream", "text[]"),
    ("d_message_id", "text[]"),
    ("d_seq", "bigint[]"),
    ("d_reply", "bytea[]"),
    ("o_request", "integer[]"),
    ("o_message_id", "text[]"),
    ("o_source", "text[]"),
    ("o_target_type", "text[]"),
    ("o_target_id", "text[]"),
    ("o_type_name", "text[]"),
    ("o_type_version", "integer[]"),
    ("o_payload", "bytea[]"),
    ("o_created_ms", "bigint[]"),
    ("t_request", "integer[]"),
    ("t_stream", "text[]"),
    ("t_name", "text[]"),
    ("t_due_ms", "bigint[]"),
    ("t_payload", "bytea[]"),
    ("c_request", "integer[]"),
    ("c_stream", "text[]"),
    ("c_name", "text[]"),
    ("s_request", "integer[]"),
    ("s_stream", "text[]"),
    ("s_seq", "bigint[]"),
    ("s_type_name", "text[]"),
    ("s_type_version", "integer[]"),
    ("s_payload", "bytea[]"),
    ("s_recorded_ms", "bigint[]"),
)

_INTEGER_ARRAYS: Final = frozenset({"bigint[]", "integer[]"})
_TEXT_ARRAYS: Final = frozenset({"text[]"})

_PACKED_BYTEA: Final = frozenset({"e_payload"})
"""Columns sent as two arguments, the values end to end in one ``bytea`` and their lengths,
which the server cuts apart. As an array, each of a batch's values would cost asyncpg two
abstract-base-class checks and an encoder call; one ``bytes`` and one text costs neither."""

_SPLIT_BYTEA_SQL: Final = (
    "ARRAY(SELECT substring($joined::bytea FROM (t.e - t.l + 1)::integer FOR t.l) "
    "FROM (SELECT u.l, u.n, sum(u.l) OVER (ORDER BY u.n) AS e "
    "FROM unnest($lengths::text::integer[]) WITH ORDINALITY AS u(l, n)) AS t ORDER BY t.n)"
)


def _append_statement() -> tuple[str, dict[str, int]]:
    """The append_batch call and, for each parameter sent, the index of its argument.

    Named notation: a parameter out of step with the function fails loudly instead of
    shifting. Integer and text arrays go as PostgreSQL's array text ('{1,2,3}', '{"a","b"}';
    see _integer_array and _text_array) that the server casts.
    """
    positions: dict[str, int] = {}
    expressions: list[str] = []
    sent = 0  # arguments so far
    for name, kind in _APPEND_PARAMETERS:
        if name == "e_stream":
            # NULL: the function takes each event's stream from its request (p_stream at the
            # event's e_request), so it is neither sent nor computed in the call.
            expressions.append("e_stream => NULL")
            continue
        positions[name] = sent
        sent += 2 if name in _PACKED_BYTEA else 1
        number = positions[name] + 1
        if name in _PACKED_BYTEA:
            expression = _SPLIT_BYTEA_SQL.replace("$joined", f"${number}").replace(
                "$lengths", f"${number + 1}"
            )
        elif kind in _INTEGER_ARRAYS or kind in _TEXT_ARRAYS:
            expression = f"${number}::text::{kind}"
        else:
            expression = f"${number}::{kind}"
        expressions.append(f"{name} => {expression}")
    call = ", ".join(expressions)
    return f"SELECT request_index, current_epoch, current_head FROM append_batch({call})", positions


_APPEND_SQL, _ARGUMENT_INDEX = _append_statement()
_ARGUMENT_COUNT: Final = len(_ARGUMENT_INDEX) + len(_PACKED_BYTEA)

# Every request of a batch is one row of ``wanted``; rows are upserted in stream-id order (the
# order append_batch locks in, so the two never deadlock). The conditions that depend on the
# request (its clock, whether it steals) are read back from ``wanted`` for the conflicting row.
_ACQUIRE_LEASES_SQL: Final = """
WITH wanted AS MATERIALIZED (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text::bigint[],
                         $6::text::bigint[], $7::boolean[])
        AS w(stream_id, actor_type, actor_id, owner, now_ms, expires_ms, steal)
), granted AS (
    INSERT INTO streams AS s (stream_id, actor_type, actor_id, epoch, head, owner, lease_expires_ms)
    SELECT stream_id, actor_type, actor_id, 1, 0, owner, expires_ms FROM wanted ORDER BY stream_id
    ON CONFLICT (stream_id) DO UPDATE
        SET epoch = s.epoch + 1,
            owner = excluded.owner,
            lease_expires_ms = excluded.lease_expires_ms
        WHERE s.owner IS NULL OR s.owner = excluded.owner OR EXISTS (
            SELECT FROM wanted w
            WHERE w.stream_id = excluded.stream_id AND (s.lease_expires_ms <= w.now_ms OR w.steal)
        )
    RETURNING s.stream_id, s.epoch, s.head
), recorded AS (
    INSERT INTO lease_history (stream_id, epoch, owner, acquired_ms)
    SELECT g.stream_id, g.epoch, w.owner, w.now_ms FROM granted g JOIN wanted w USING (stream_id)
)
SELECT stream_id, epoch, head FROM granted
"""

# The streams that append requests with a claim create, leased at epoch 1 (as _ACQUIRE_LEASES_SQL
# creates a stream), in stream-id order; a stream that exists is left alone and not returned.
_CREATE_STREAMS_SQL: Final = """
WITH wanted AS MATERIALIZED (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text::bigint[],
                         $6::text::bigint[])
        AS w(stream_id, actor_type, actor_id, owner, now_ms, expires_ms)
), created AS (
    INSERT INTO streams (stream_id, actor_type, actor_id, epoch, head, owner, lease_expires_ms)
    SELECT stream_id, actor_type, actor_id, 1, 0, owner, expires_ms FROM wanted ORDER BY stream_id
    ON CONFLICT (stream_id) DO NOTHING
    RETURNING stream_id
), recorded AS (
    INSERT INTO lease_history (stream_id, epoch, owner, acquired_ms)
    SELECT c.stream_id, 1, w.owner, w.now_ms FROM created c JOIN wanted w USING (stream_id)
)
SELECT stream_id FROM created
"""

# Renewal and release touch many stream rows: lock them in stream-id order first, as
# append_batch does, so that they never deadlock against a batch.
_RENEW_LEASES_SQL: Final = """
WITH locked AS MATERIALIZED (
    SELECT s.stream_id FROM streams s
    WHERE s.stream_id = ANY ($2::text[]) AND s.owner = $1
    ORDER BY s.stream_id
    FOR UPDATE
)
UPDATE streams s
SET lease_expires_ms = $4
FROM locked, unnest($2::text[], $3::bigint[]) AS held(stream_id, epoch)
WHERE s.stream_id = locked.stream_id
  AND held.stream_id = s.stream_id
  AND s.epoch = held.epoch
  AND s.owner = $1
RETURNING s.stream_id, s.epoch
"""

_RELEASE_LEASES_SQL: Final = """
WITH locked AS MATERIALIZED (
    SELECT s.stream_id FROM streams s
    WHERE s.stream_id = ANY ($2::text[]) AND s.owner = $1
    ORDER BY s.stream_id
    FOR UPDATE
)
UPDATE streams s
SET owner = NULL, lease_expires_ms = 0
FROM locked, unnest($2::text[], $3::bigint[]) AS held(stream_id, epoch)
WHERE s.stream_id = locked.stream_id
  AND held.stream_id = s.stream_id
  AND s.epoch = held.epoch
  AND s.owner = $1
"""

_DELETE_OUTBOX_SQL: Final = """
WITH doomed AS MATERIALIZED (
    SELECT message_id FROM outbox
    WHERE message_id = ANY ($1::text[])
    ORDER BY message_id
    FOR UPDATE
)
DELETE FROM outbox o USING doomed WHERE o.message_id = doomed.message_id
"""

_READ_EVENTS_SQL: Final = """
SELECT seq, epoch, type_name, type_version, payload, message_id, recorded_ms
FROM events
WHERE stream_id = $1 AND seq > $2
ORDER BY seq
LIMIT $3
"""

_READ_DEDUPE_SQL: Final = """
SELECT message_id, seq, reply FROM (
    SELECT message_id, seq, reply, ordinal FROM dedupe
    WHERE stream_id = $1
    ORDER BY ordinal DESC
    LIMIT $2
) newest
ORDER BY ordinal
"""

_STREAM_HEAD_COLUMNS: Final = "stream_id, epoch, head, owner, lease_expires_ms"
_INSTANCE_COLUMNS: Final = "actor_type, actor_id, status, created_ms, updated_ms"
_OUTBOX_COLUMNS: Final = (
    "message_id, source_stream_id, target_type, target_id, type_name, type_version, payload, "
    "created_ms"
)


async def _keep_session(connection: asyncpg.Connection[asyncpg.Record]) -> None:
    """Pool reset hook that leaves the session as it is.

    The store never changes session state (no SET, LISTEN, cursors or session advisory locks;
    the migration lock is transaction-scoped), and asyncpg rolls back an open transaction before
    calling this hook, so the default reset would only add a round trip to every operation.
    """
    del connection


@final
class PostgresStore:
    """The Store protocol on PostgreSQL, for nodes that share one database.

    All tables live in one schema (``schema``), which ``open`` creates and migrates; several
    independent deployments (or test runs) can share a database with one schema each.

    Args:
        dsn: a ``postgresql://user@host:port/database`` URI, as asyncpg accepts it.
        schema: the schema holding mainspring's tables: letters, digits and ``_``, not starting
            with a digit or ``pg_``, at most 63 bytes.
        pool_min_size: connections opened at ``open`` and kept.
        pool_max_size: the most connections (and so concurrent operations) this store uses.
        command_timeout_s: the longest any one statement may take before it is cancelled and
            the operation fails with ``StoreUnavailable``.
        connect_timeout_s: the longest a new connection may take to establish.
        application_name: how this store's sessions appear in ``pg_stat_activity`` (name the
            node here to tell nodes apart): printable ASCII, at most 63 characters.

    Raises:
        UsageError: an argument is invalid (the message names it).
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "public",
        pool_min_size: int = 1,
        pool_max_size: int = 10,
        command_timeout_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        application_name: str = "mainspring",
    ) -> None:
        _check_schema_name(schema)
        if (
            not isinstance(application_name, str)
            or not 0 < len(application_name) <= 63
            or not all(" " <= character <= "~" for character in application_name)
        ):
            raise UsageError(
                "application_name must be 1-63 printable ASCII characters, "
                f"got {application_name!r}"
            )
        if not 0 <= pool_min_size <= pool_max_size or pool_max_size < 1:
            raise UsageError(
                "need 0 <= pool_min_size <= pool_max_size and pool_max_size >= 1, got "
                f"pool_min_size={pool_min_size}, pool_max_size={pool_max_size}"
            )
        if command_timeout_s <= 0 or connect_timeout_s <= 0:
            raise UsageError(
                "command_timeout_s and connect_timeout_s must be > 0, got "
                f"{command_timeout_s} and {connect_timeout_s}"
            )
        self._dsn = dsn
        self._schema = schema
        self._pool_min_size = pool_min_size
        self._pool_max_size = pool_max_size
        self._command_timeout_s = command_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._application_name = application_name
        self._server = _describe_server(dsn)
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._open_lock = asyncio.Lock()

    # Lifecycle

    async def open(self) -> None:
        """Connect and apply pending schema migrations. Idempotent.

        Raises:
            StoreUnavailable: the server cannot be reached, or the schema was migrated by a
                newer mainspring than this one.
            UsageError: the DSN is malformed.
        """
        async with self._open_lock:
            if self._pool is not None:
                return
            pool = await self._create_pool()
            try:
                await self._migrate(pool)
            except BaseException:
                pool.terminate()
                raise
            self._pool = pool

    async def close(self) -> None:
        """Release every connection. Idempotent; the data stays for a later ``open``."""
        async with self._open_lock:
            pool, self._pool = self._pool, None
            if pool is None:
                return
            try:
                await asyncio.wait_for(pool.close(), timeout=self._command_timeout_s)
            except _DRIVER_ERRORS as error:
                # Closing gracefully failed (a dead server, a stuck query); dropping the
                # connections is all that is left to do, and the caller can do nothing more.
                logger.warning(
                    "PostgresStoreCloseFailed",
                    extra={"server": self._server, "error": repr(error)},
                )
                pool.terminate()

    async def _create_pool(self) -> asyncpg.Pool[asyncpg.Record]:
        try:
            return await asyncpg.create_pool(
                self._dsn,
                min_size=self._pool_min_size,
                max_size=self._pool_max_size,
                command_timeout=self._command_timeout_s,
                timeout=self._connect_timeout_s,
                server_settings={
                    "search_path": f'"{self._schema}"',
                    # The locking in append_batch relies on READ COMMITTED (a statement that
                    # waited for a row lock sees the row's newest version), whatever the
                    # database's default.
                    "default_transaction_isolation": "read committed",
                    # Lets operators find mainspring's sessions in pg_stat_activity.
                    "application_name": self._application_name,
                },
                reset=_keep_session,
            )
        except ValueError as error:  # asyncpg.ClientConfigurationError, or a bad port number
            raise UsageError(
                f"the PostgreSQL DSN is invalid: {self._redact(error)}. Pass a URI such as "
                "'postgresql://user@host:5432/database'."
            ) from error
        except _DRIVER_ERRORS as error:
            raise StoreUnavailable(
                f"cannot connect to {self._server} (schema {self._schema!r}): "
                f"{self._redact(error)}. Check that PostgreSQL runs there and accepts this "
                "user from this host, then open the store again."
            ) from error

    async def _migrate(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        """Create the schema and apply the migrations it lacks, one node at a time."""
        try:
            async with (
                pool.acquire(timeout=self._command_timeout_s) as connection,
                connection.transaction(),
            ):
                await _apply_migrations(connection, self._schema)
        except _DRIVER_ERRORS as error:
            raise StoreUnavailable(
                f"cannot open schema {self._schema!r} on {self._server}: "
                f"{self._redact(error)}. Check that PostgreSQL runs there, accepts this user "
                "from this host and lets it create the schema's tables, then open the store "
                "again."
            ) from error

    # Leases

    async def acquire_lease(
        self, stream_id: str, owner: str, now_ms: int, ttl_ms: int, *, steal: bool = False
    ) -> Lease:
        """See ``Store.acquire_lease``."""
        return single_lease(
            await self.acquire_leases([LeaseRequest(stream_id, owner, now_ms, ttl_ms, steal)])
        )

    async def acquire_leases(self, requests: Sequence[LeaseRequest]) -> list[LeaseOutcome]:
        """See ``Store.acquire_leases``: one statement, one round trip, per attempt.

        A request the upsert refused is retried (at most ``_LEASE_ATTEMPTS_MAX`` attempts in all)
        when its holder released the lease in the meantime; else its outcome is ``LeaseHeld``.
        """
        self._require_pool()
        check_lease_requests(requests)
        outcomes: dict[str, LeaseOutcome] = {}
        waiting = list(requests)
        for _ in range(_LEASE_ATTEMPTS_MAX):
            if not waiting:
                break
            waiting = await self._acquire_leases_once(waiting, outcomes)
        if waiting:
            raise StoreUnavailable(
                f"the lease of {waiting[0].stream_id!r} changed hands {_LEASE_ATTEMPTS_MAX} times "
                f"while {waiting[0].owner!r} tried to take it; retry later."
            )
        return [outcomes[request.stream_id] for request in requests]

    async def _acquire_leases_once(
        self, requests: list[LeaseRequest], outcomes: dict[str, LeaseOutcome]
    ) -> list[LeaseRequest]:
        """One attempt at ``requests``: records each grant or refusal in ``outcomes``; returns
        the refused requests whose holder let go since, to try again."""
        split = [split_stream_id(request.stream_id) for request in requests]
        rows = await self._fetch(
            "acquire_leases",
            _ACQUIRE_LEASES_SQL,
            [request.stream_id for request in requests],
            [actor_type for actor_type, _ in split],
            [actor_id for _, actor_id in split],
            [request.owner for request in requests],
            _integer_array([request.now_ms for request in requests]),
            _integer_array([request.now_ms + request.ttl_ms for request in requests]),
            [request.steal for request in requests],
            writes=True,
        )
        granted = {row[0]: (row[1], row[2]) for row in rows}
        refused: list[LeaseRequest] = []
        for request in requests:
            if request.stream_id not in granted:
                refused.append(request)
                continue
            epoch, head = granted[request.stream_id]
            assert epoch >= 1, (request.stream_id, epoch)
            outcomes[request.stream_id] = Lease(
                request.stream_id, request.owner, epoch, head, request.now_ms + request.ttl_ms
            )
        retry: list[LeaseRequest] = []
        # The upsert refused these, so another owner held an unexpired lease. It may have been
        # released since; then the next attempt takes it.
        for request in refused:
            holder = await self.read_head(request.stream_id)
            if holder is not None and _held_by_other(holder, request.owner, request.now_ms):
                assert holder.owner is not None
                outcomes[request.stream_id] = LeaseHeld(
                    request.stream_id, holder.owner, holder.lease_expires_at_ms
                )
            else:
                retry.append(request)
        return retry

    async def renew_leases(
        self, owner: str, leases: Sequence[tuple[str, int]], now_ms: int, ttl_ms: int
    ) -> list[str]:
        """See ``Store.renew_leases``."""
        self._require_pool()
        if not leases:
            return []
        stream_ids, epochs = _unzip_leases(leases)
        rows = await self._fetch(
            "renew_leases",
            _RENEW_LEASES_SQL,
            owner,
            stream_ids,
            epochs,
            now_ms + ttl_ms,
            writes=True,
        )
        renewed = {(row[0], row[1]) for row in rows}
        assert len(renewed) <= len(leases), (renewed, leases)
        return [stream_id for stream_id, epoch in leases if (stream_id, epoch) not in renewed]

    async def release_leases(self, owner: str, leases: Sequence[tuple[str, int]]) -> None:
        """See ``Store.release_leases``."""
        self._require_pool()
        if not leases:
            return
        stream_ids, epochs = _unzip_leases(leases)
        await self._fetch(
            "release_leases", _RELEASE_LEASES_SQL, owner, stream_ids, epochs, writes=True
        )

    # Appends

    async def append_batch(self, requests: Sequence[AppendRequest]) -> list[AppendResult]:
        """See ``Store.append_batch``.

        The whole batch is one statement: one round trip and one commit.

        Raises:
            UsageError: the batch names a stream twice.
            StoreUnavailable: the whole batch failed (``ambiguous`` if it may have committed).
        """
        self._require_pool()
        _check_distinct_streams(requests)
        if not requests:
            return []
        # Sorting by stream id makes the rows go to the database (and the events into the
        # index) in key order; the function itself locks the streams in that order.
        order = sorted(range(len(requests)), key=lambda index: requests[index].stream_id)
        arguments = _append_arguments(requests, order)
        claims = [request for request in requests if request.claim is not None]
        if claims:
            rows = await self._append_creating(claims, requests, order, arguments)
        else:
            rows = await self._fetch("append_batch", _APPEND_SQL, *arguments, writes=True)
        assert len(rows) <= len(requests), (len(rows), len(requests))
        results: list[AppendResult] = [None] * len(requests)
        for request_index, current_epoch, current_head in rows:
            original = order[request_index - 1]
            assert results[original] is None, request_index
            results[original] = _rejection(requests[original], current_epoch, current_head)
        return results

    async def _append_creating(
        self,
        claims: Sequence[AppendRequest],
        requests: Sequence[AppendRequest],
        order: Sequence[int],
        arguments: list[list[Any] | str | bytes | None],
    ) -> list[Any]:
        """``append_batch`` for a batch where some requests create their streams: one
        transaction creates the streams that do not exist yet (leased at epoch 1 to the claims'
        owners), then runs the batch with epoch 0, which no stream has, for the claims that
        found their stream there (so the function turns them down with its epoch and head)."""
        pool = self._require_pool()
        split = [split_stream_id(claim.stream_id) for claim in claims]
        sent = False
        try:
            async with pool.acquire(timeout=self._command_timeout_s) as connection:
                sent = True
                async with connection.transaction():
                    created = {
                        row[0]
                        for row in await connection.fetch(
                            _CREATE_STREAMS_SQL,
                            [claim.stream_id for claim in claims],
                            [actor_type for actor_type, _ in split],
                            [actor_id for _, actor_id in split],
                            [_claim_of(claim).owner for claim in claims],
                            _integer_array([_claim_of(claim).now_ms for claim in claims]),
                            _integer_array(
                                [_claim_of(c).now_ms + _claim_of(c).ttl_ms for c in claims]
                            ),
                        )
                    }
                    if len(created) < len(claims):
                        epochs = [
                            0
                            if request.claim is not None and request.stream_id not in created
                            else request.epoch
                            for request in (requests[original] for original in order)
                        ]
                        arguments = list(arguments)
                        arguments[_ARGUMENT_INDEX["p_epoch"]] = _integer_array(epochs)
                    return list(await connection.fetch(_APPEND_SQL, *arguments))
        except _DRIVER_ERRORS as error:
            ambiguous = sent and not _failed_before_commit(error)
            raise self._unavailable("append_batch", error, ambiguous=ambiguous) from error

    # Reads

    async def read_head(self, stream_id: str) -> StreamHead | None:
        """See ``Store.read_head``."""
        rows = await self._fetch(
            "read_head",
            f"SELECT {_STREAM_HEAD_COLUMNS} FROM streams WHERE stream_id = $1",
            stream_id,
        )
        return _stream_head(rows[0]) if rows else None

    async def read_events(
        self, stream_id: str, after_seq: int = 0, limit: int = 10_000
    ) -> list[StoredEvent]:
        """See ``Store.read_events``. One query, however many events."""
        self._require_pool()
        if limit <= 0:
            return []
        rows = await self._fetch("read_events", _READ_EVENTS_SQL, stream_id, after_seq, limit)
        # The columns come in StoredEvent's field order, so each row spreads into the class.
        events = [StoredEvent(stream_id, *row) for row in rows]
        if events:
            assert events[0].seq > after_seq, (stream_id, after_seq, events[0].seq)
            assert events[-1].seq - events[0].seq == len(events) - 1, "a gap in " + stream_id
        return events

    async def read_snapshot(self, stream_id: str) -> Snapshot | None:
        """See ``Store.read_snapshot``."""
        rows = await self._fetch(
            "read_snapshot",
            "SELECT seq, type_name, type_version, payload, recorded_ms FROM snapshots "
            "WHERE stream_id = $1",
            stream_id,
        )
        return Snapshot(stream_id, *rows[0]) if rows else None

    async def read_dedupe(self, stream_id: str, limit: int) -> list[DedupeRecord]:
        """See ``Store.read_dedupe``."""
        self._require_pool()
        if limit <= 0:
            return []
        rows = await self._fetch("read_dedupe", _READ_DEDUPE_SQL, stream_id, limit)
        return [DedupeRecord(*row) for row in rows]

    async def read_lease_history(self, stream_id: str) -> list[LeaseRecord]:
        """See ``Store.read_lease_history``."""
        rows = await self._fetch(
            "read_lease_history",
            "SELECT epoch, owner, acquired_ms FROM lease_history WHERE stream_id = $1 "
            "ORDER BY epoch",
            stream_id,
        )
        return [LeaseRecord(stream_id, *row) for row in rows]

    # Outbox and timers

    async def read_outbox(self, limit: int) -> list[OutboxMessage]:
        """See ``Store.read_outbox``."""
        self._require_pool()
        if limit <= 0:
            return []
        rows = await self._fetch(
            "read_outbox",
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox ORDER BY position LIMIT $1",
            limit,
        )
        return [OutboxMessage(*row) for row in rows]

    async def delete_outbox(self, message_ids: Sequence[str]) -> None:
        """See ``Store.delete_outbox``."""
        self._require_pool()
        if message_ids:
            await self._fetch("delete_outbox", _DELETE_OUTBOX_SQL, list(message_ids), writes=True)

    async def read_due_timers(self, now_ms: int, limit: int) -> list[Timer]:
        """See ``Store.read_due_timers``."""
        self._require_pool()
        if limit <= 0:
            return []
        rows = await self._fetch(
            "read_due_timers",
            "SELECT stream_id, name, due_ms, payload FROM timers WHERE due_ms <= $1 "
            "ORDER BY due_ms, stream_id, name LIMIT $2",
            now_ms,
            limit,
        )
        return [Timer(*row) for row in rows]

    async def next_timer_due_ms(self) -> int | None:
        """See ``Store.next_timer_due_ms``."""
        rows = await self._fetch("next_timer_due_ms", "SELECT min(due_ms) FROM timers")
        due_ms: int | None = rows[0][0]
        return due_ms

    async def delete_timer(self, stream_id: str, name: str, due_at_ms: int) -> bool:
        """See ``Store.delete_timer``."""
        rows = await self._fetch(
            "delete_timer",
            "DELETE FROM timers WHERE stream_id = $1 AND name = $2 AND due_ms = $3 "
            "RETURNING due_ms",
            stream_id,
            name,
            due_at_ms,
            writes=True,
        )
        assert len(rows) <= 1, rows
        return bool(rows)

    # The instance index

    async def read_instance(self, actor_type: str, actor_id: str) -> InstanceInfo | None:
        """See ``Store.read_instance``."""
        rows = await self._fetch(
            "read_instance",
            f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE actor_type = $1 AND actor_id = $2",
            actor_type,
            actor_id,
        )
        return InstanceInfo(*rows[0]) if rows else None

    async def list_instances(
        self,
        actor_type: str | None = None,
        status: str | None = None,
        limit: int = 100,
        after: tuple[str, str] | None = None,
    ) -> list[InstanceInfo]:
        """See ``Store.list_instances``."""
        self._require_pool()
        if limit <= 0:
            return []
        # Only the filters in use appear in the query, so each combination gets a plan that
        # walks the matching index.
        conditions: list[str] = []
        arguments: list[object] = []
        if actor_type is not None:
            arguments.append(actor_type)
            conditions.append(f"actor_type = ${len(arguments)}")
        if status is not None:
            arguments.append(status)
            conditions.append(f"status = ${len(arguments)}")
        if after is not None:
            arguments.extend(after)
            conditions.append(
                f"(actor_type, actor_id) > (${len(arguments) - 1}, ${len(arguments)})"
            )
        where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
        arguments.append(limit)
        query = (
            f"SELECT {_INSTANCE_COLUMNS} FROM instances {where}"
            f"ORDER BY actor_type, actor_id LIMIT ${len(arguments)}"
        )
        rows = await self._fetch("list_instances", query, *arguments)
        return [InstanceInfo(*row) for row in rows]

    async def list_streams(self) -> list[StreamHead]:
        """See ``Store.list_streams``."""
        rows = await self._fetch(
            "list_streams", f"SELECT {_STREAM_HEAD_COLUMNS} FROM streams ORDER BY stream_id"
        )
        return [_stream_head(row) for row in rows]

    # Cluster membership

    async def join_member(
        self, node_id: str, address: str, now_ms: int, after_incarnation: int
    ) -> Member | None:
        """See ``Store.join_member``."""
        check_incarnation(after_incarnation)
        rows = await self._fetch(
            "join_member",
            _JOIN_MEMBER_SQL,
            node_id,
            address,
            now_ms,
            after_incarnation,
            writes=True,
        )
        if not rows:
            return None
        [(incarnation,)] = rows
        assert incarnation == max(after_incarnation + 1, now_ms), (incarnation, after_incarnation)
        return Member(node_id, address, incarnation, "up", now_ms, now_ms)

    async def heartbeat_member(
        self, node_id: str, incarnation: int, now_ms: int, state: str = "up"
    ) -> bool:
        """See ``Store.heartbeat_member``."""
        check_member_state(state)
        rows = await self._fetch(
            "heartbeat_member",
            _HEARTBEAT_MEMBER_SQL,
            node_id,
            incarnation,
            now_ms,
            state,
            MEMBER_STATES.index(state),
            writes=True,
        )
        assert len(rows) <= 1, rows
        return bool(rows)

    async def list_members(self) -> list[Member]:
        """See ``Store.list_members``."""
        rows = await self._fetch(
            "list_members",
            "SELECT node_id, address, incarnation, state, heartbeat_ms, joined_ms FROM members "
            "ORDER BY node_id",
        )
        return [Member(*row) for row in rows]

    async def prune_member(self, node_id: str, incarnation: int, heartbeat_at_ms: int) -> bool:
        """See ``Store.prune_member``."""
        check_incarnation(incarnation)
        rows = await self._fetch(
            "prune_member",
            "DELETE FROM members WHERE node_id = $1 AND incarnation = $2 AND heartbeat_ms = $3 "
            "RETURNING node_id",
            node_id,
            incarnation,
            heartbeat_at_ms,
            writes=True,
        )
        assert len(rows) <= 1, rows
        return bool(rows)

    # Plumbing

    def _require_pool(self) -> asyncpg.Pool[asyncpg.Record]:
        if self._pool is None:
            raise UsageError("the PostgreSQL store is not open; call 'await store.open()' first")
        return self._pool

    async def _fetch(
        self, operation: str, query: str, *arguments: object, writes: bool = False
    ) -> list[asyncpg.Record]:
        """Run one statement on a pooled connection; driver errors become ``StoreUnavailable``.

        A write is ``ambiguous`` when the connection failed after the statement was sent: the
        server may have committed it before the link broke.
        """
        pool = self._require_pool()
        sent = False
        try:
            async with pool.acquire(timeout=self._command_timeout_s) as connection:
                sent = True
                return await connection.fetch(query, *arguments)
        except _DRIVER_ERRORS as error:
            if isinstance(error, asyncpg.InterfaceError) and isinstance(error, ValueError):
                # asyncpg refused an argument before sending anything (a value out of range).
                raise UsageError(f"{operation}: {error}") from error
            if isinstance(error, asyncpg.PostgresError) and (error.sqlstate or "").startswith(
                _DATA_EXCEPTION_SQLSTATE_CLASS
            ):
                # The server refused a value (an integer sent as text out of its column's
                # range): the statement failed, so nothing was written.
                raise UsageError(f"{operation}: {error}") from error
            ambiguous = writes and sent and not _failed_before_commit(error)
            raise self._unavailable(operation, error, ambiguous=ambiguous) from error

    def _unavailable(
        self, operation: str, error: BaseException, *, ambiguous: bool
    ) -> StoreUnavailable:
        if ambiguous:
            advice = (
                "The connection failed while the write was in flight, so it may or may not "
                "have committed: re-read the affected streams before retrying."
            )
        else:
            advice = "Nothing was written; check that the server is up and retry."
        return StoreUnavailable(
            f"{operation} failed on {self._server} (schema {self._schema!r}): "
            f"{type(error).__name__}: {self._redact(error)}. {advice}",
            ambiguous=ambiguous,
        )

    def _redact(self, error: BaseException) -> str:
        """The error's text, without the DSN's password should the driver have echoed it."""
        text = str(error) or repr(error)
        password = _dsn_password(self._dsn)
        return text.replace(password, "***") if password else text


_JOIN_MEMBER_SQL: Final = """
INSERT INTO members AS m (node_id, address, incarnation, state, heartbeat_ms, joined_ms)
VALUES ($1, $2, greatest($4::bigint + 1, $3), 'up', $3, $3)
ON CONFLICT (node_id) DO UPDATE
    SET address = $2, incarnation = EXCLUDED.incarnation, state = 'up', heartbeat_ms = $3,
        joined_ms = $3
    WHERE m.incarnation = $4
RETURNING incarnation"""

_HEARTBEAT_MEMBER_SQL: Final = """
UPDATE members SET heartbeat_ms = greatest(heartbeat_ms + 1, $3), state = $4
WHERE node_id = $1 AND incarnation = $2
    AND (CASE state WHEN 'up' THEN 0 WHEN 'leaving' THEN 1 ELSE 2 END) <= $5
RETURNING incarnation"""


# Migrations


async def _apply_migrations(connection: PoolConnectionProxy[asyncpg.Record], schema: str) -> None:
    """Bring ``schema`` to ``SCHEMA_VERSION``; runs inside the caller's transaction.

    The advisory lock is held until that transaction ends, so nodes opening together take turns:
    the first applies the migrations, the others then find nothing left to do.
    """
    assert connection.is_in_transaction()
    await connection.execute(
        "SELECT pg_advisory_xact_lock($1, $2)", _MIGRATION_LOCK_CLASS, _lock_key(schema)
    )
    # Creating only when missing (rather than CREATE SCHEMA IF NOT EXISTS) lets a user without
    # the CREATE privilege on the database use a schema prepared for it.
    exists = await connection.fetchval("SELECT true FROM pg_namespace WHERE nspname = $1", schema)
    if not exists:
        await connection.execute(f'CREATE SCHEMA "{schema}"')
    await connection.execute(f'SET LOCAL search_path TO "{schema}"')
    await connection.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        "version integer PRIMARY KEY, applied_at_ms bigint NOT NULL)"
    )
    applied = {row[0] for row in await connection.fetch("SELECT version FROM schema_migrations")}
    newest = max(applied, default=0)
    if newest > SCHEMA_VERSION:
        raise StoreUnavailable(
            f"schema {schema!r} is at version {newest}, written by a newer mainspring; this one "
            f"knows versions up to {SCHEMA_VERSION}. Upgrade mainspring on this node (or use "
            "another schema)."
        )
    for version, file_name in _MIGRATIONS:
        if version in applied:
            continue
        await connection.execute(_migration_sql(file_name))
        # The server's clock stamps the row: it records when, for operators, and decides nothing.
        await connection.execute(
            "INSERT INTO schema_migrations (version, applied_at_ms) "
            "VALUES ($1, (extract(epoch FROM clock_timestamp()) * 1000)::bigint)",
            version,
        )
        logger.info("PostgresMigrationApplied", extra={"schema": schema, "version": version})


def _migration_sql(file_name: str) -> str:
    return (
        resources.files("mainspring.persistence")
        .joinpath("schema", "postgres", file_name)
        .read_text(encoding="utf-8")
    )


def _lock_key(schema: str) -> int:
    """The second key of the migration lock: one lock per schema, as a signed 32-bit integer."""
    key = zlib.crc32(schema.encode())
    return key - 2**32 if key >= 2**31 else key


# Arguments of append_batch


_NULLABLE_COLUMNS: Final = frozenset({"p_status", "e_message_id"})
"""The columns that are usually all NULL (no status change, events without a message id); each
is read only through a multi-array unnest(), which pads a NULL array with NULLs."""


def _integer_array(values: list[int]) -> str:
    """An array of integers as PostgreSQL's array text (``{1,2,3}``).

    asyncpg checks every element of an array argument against three abstract base classes
    before it encodes it; for the integer columns of a batch that cost more than the rest of
    the call. Decimal text is exact for any int, and the server checks each value's range.

    Raises:
        UsageError: a value is not an int (a float equal to an int below 8192 passes as that
            int: the number written is the same).
    """
    try:
        # Most columns hold only small numbers (epochs, request indexes, versions, lengths,
        # windows): their texts come from a table, three times as fast as int.__repr__.
        return "{" + ",".join(map(_SMALL_INT_TEXTS.__getitem__, values)) + "}"
    except (KeyError, TypeError):
        pass
    try:
        return "{" + ",".join(map(int.__repr__, values)) + "}"
    except TypeError as error:
        raise UsageError(f"the store takes ints in its records' integer fields: {error}") from None


_SMALL_INT_TEXTS: Final = {number: str(number) for number in range(8192)}
"""The decimal text of 0 to 8191, for ``_integer_array``."""


def _text_array(values: Sequence[str | None]) -> str:
    """An array of texts (or NULLs) as PostgreSQL's array text (``{"a","b",NULL}``).

    For the reason _integer_array gives: asyncpg encodes a text array element by element, at
    ~0.5 µs each, where one join costs a few ns per element. Every element is double-quoted,
    so only '"' and backslash need escaping, and ids rarely hold either.

    Raises:
        UsageError: a value is neither a str nor None.
    """
    if not values:
        return "{}"
    try:
        joined = '","'.join(values)  # type: ignore[arg-type]  # None falls to the slow path
    except TypeError:
        return "{" + ",".join(map(_text_element, values)) + "}"
    if joined.count('"') != 2 * (len(values) - 1) or "\\" in joined:
        # A quote or backslash of a value's own (the separators hold two quotes each).
        return "{" + ",".join(map(_text_element, values)) + "}"
    return '{"' + joined + '"}'


def _text_element(value: str | None) -> str:
    """One element of ``_text_array``: NULL, or the text quoted and escaped."""
    if value is None:
        return "NULL"
    if not isinstance(value, str):
        raise UsageError(
            f"the store takes str in its records' text fields, got {type(value).__name__}"
        )
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _append_arguments(
    requests: Sequence[AppendRequest], order: Sequence[int]
) -> list[list[Any] | str | bytes | None]:
    """The arguments of ``_APPEND_SQL``: the parallel arrays of the append_batch function, in
    ``_APPEND_PARAMETERS`` order, some of them packed (``_PACKED_BYTEA``) and one left to the
    server (``e_stream``).

    ``order`` lists the requests' indexes sorted by stream id; a request is named in the arrays
    by its 1-based place in that order. Each array is one list comprehension: this runs for
    every batch, and per-row appends would cost more than the database's work on small rows.
    """
    ordered = [requests[original] for original in order]
    numbered = list(enumerate(ordered, start=1))
    columns = {
        **_request_columns(ordered),
        **_event_columns(numbered),
        **_dedupe_columns(numbered),
        **_timer_columns(numbered),
        **_snapshot_columns(numbered),
        **_outbox_columns(requests, order),
    }
    assert columns.keys() == _ARGUMENT_INDEX.keys(), sorted(columns)
    assert len(columns["p_stream"]) == len(requests)
    assert len(columns["e_seq"]) == sum(len(request.events) for request in requests)
    arguments: list[list[Any] | str | bytes | None] = []
    for name, kind in _APPEND_PARAMETERS:
        if name not in _ARGUMENT_INDEX:
            continue  # derived by the server
        column = columns[name]
        if name in _NULLABLE_COLUMNS and column.count(None) == len(column):
            # A column of NULLs goes as one NULL array, which costs nothing to encode.
            arguments.append(None)
        elif name in _PACKED_BYTEA:
            arguments.append(b"".join(column))
            arguments.append(_integer_array([len(value) for value in column]))
        elif kind in _INTEGER_ARRAYS:
            arguments.append(_integer_array(column))
        elif kind in _TEXT_ARRAYS:
            arguments.append(_text_array(column))
        else:
            arguments.append(column)
    assert len(arguments) == _ARGUMENT_COUNT, (len(arguments), _ARGUMENT_COUNT)
    return arguments


def _request_columns(ordered: list[AppendRequest]) -> dict[str, list[Any]]:
    return {
        "p_stream": [request.stream_id for request in ordered],
        "p_epoch": [request.epoch for request in ordered],
        "p_expected": [request.expected_seq for request in ordered],
        "p_new_head": [request.new_head_seq for request in ordered],
        "p_recorded_ms": [request.recorded_at_ms for request in ordered],
        "p_dedupe_window": [request.dedupe_window for request in ordered],
        "p_status": [request.status for request in ordered],
    }


def _event_columns(numbered: list[tuple[int, AppendRequest]]) -> dict[str, list[Any]]:
    # Not e_stream: the function takes each event's stream from its request.
    events = [event for _, request in numbered for event in request.events]
    if len(events) == len(numbered) and all(len(request.events) == 1 for _, request in numbered):
        # One event per request, as most batches are: no per-request iterator.
        e_request = [index for index, _ in numbered]
        e_seq = [request.expected_seq + 1 for _, request in numbered]
    else:
        e_request = [index for index, request in numbered for _ in request.events]
        e_seq = [
            seq
            for _, request in numbered
            for seq in range(request.expected_seq + 1, request.new_head_seq + 1)
        ]
    return {
        "e_request": e_request,
        "e_seq": e_seq,
        "e_type_name": [event.type_name for event in events],
        "e_type_version": [event.type_version for event in events],
        "e_payload": [event.payload for event in events],
        "e_message_id": [event.message_id for event in events],
    }


def _dedupe_columns(numbered: list[tuple[int, AppendRequest]]) -> dict[str, list[Any]]:
    rows = [
        (index, request.stream_id, record)
        for index, request in numbered
        if request.dedupe
        for record in request.dedupe
    ]
    return {
        "d_request": [row[0] for row in rows],
        "d_stream": [row[1] for row in rows],
        "d_message_id": [row[2].message_id for row in rows],
        "d_seq": [row[2].seq for row in rows],
        "d_reply": [row[2].reply for row in rows],
    }


def _timer_columns(numbered: list[tuple[int, AppendRequest]]) -> dict[str, list[Any]]:
    # Few requests touch timers: the others are passed over without a call or an iterator each.
    touching = [
        (index, request)
        for index, request in numbered
        if request.timers_set or request.timers_cancelled
    ]
    cancelled = [
        (index, request.stream_id, name)
        for index, request in touching
        for name in request.timers_cancelled
    ]
    timers = [(index, timer) for index, request in touching for timer in _distinct_timers(request)]
    assert all(timer.stream_id == numbered[index - 1][1].stream_id for index, timer in timers)
    return {
        "t_request": [index for index, _ in timers],
        "t_stream": [timer.stream_id for _, timer in timers],
        "t_name": [timer.name for _, timer in timers],
        "t_due_ms": [timer.due_at_ms for _, timer in timers],
        "t_payload": [timer.payload for _, timer in timers],
        "c_request": [row[0] for row in cancelled],
        "c_stream": [row[1] for row in cancelled],
        "c_name": [row[2] for row in cancelled],
    }


def _distinct_timers(request: AppendRequest) -> Sequence[Timer]:
    """One timer per name, the last set (one upsert may not touch a row twice)."""
    if len(request.timers_set) <= 1:
        return request.timers_set
    return list({timer.name: timer for timer in request.timers_set}.values())


def _snapshot_columns(numbered: list[tuple[int, AppendRequest]]) -> dict[str, list[Any]]:
    snapshots = [
        (index, request.snapshot) for index, request in numbered if request.snapshot is not None
    ]
    assert all(snapshot.stream_id == numbered[i - 1][1].stream_id for i, snapshot in snapshots)
    return {
        "s_request": [index for index, _ in snapshots],
        "s_stream": [snapshot.stream_id for _, snapshot in snapshots],
        "s_seq": [snapshot.seq for _, snapshot in snapshots],
        "s_type_name": [snapshot.type_name for _, snapshot in snapshots],
        "s_type_version": [snapshot.type_version for _, snapshot in snapshots],
        "s_payload": [snapshot.payload for _, snapshot in snapshots],
        "s_recorded_ms": [snapshot.recorded_at_ms for _, snapshot in snapshots],
    }


def _outbox_columns(
    requests: Sequence[AppendRequest], order: Sequence[int]
) -> dict[str, list[Any]]:
    """The outbox rows in the order the requests came, which is the order they are delivered
    in; each names its request by its place in ``order``."""
    messages: list[tuple[int, OutboxMessage]] = []
    if any(request.outbox for request in requests):
        index_of = {original: index for index, original in enumerate(order, start=1)}
        messages = [
            (index_of[n], message)
            for n, request in enumerate(requests)
            for message in request.outbox
        ]
    return {
        "o_request": [index for index, _ in messages],
        "o_message_id": [message.message_id for _, message in messages],
        "o_source": [message.source_stream_id for _, message in messages],
        "o_target_type": [message.target_type for _, message in messages],
        "o_target_id": [message.target_id for _, message in messages],
        "o_type_name": [message.type_name for _, message in messages],
        "o_type_version": [message.type_version for _, message in messages],
        "o_payload": [message.payload for _, message in messages],
        "o_created_ms": [message.created_at_ms for _, message in messages],
    }


def _claim_of(request: AppendRequest) -> LeaseRequest:
    claim = request.claim
    assert claim is not None, request
    return claim


def _rejection(
    request: AppendRequest, current_epoch: int | None, current_head: int | None
) -> BaseException:
    """Why the function turned ``request`` down, from the stream's epoch and head it saw."""
    if request.claim is not None:
        assert current_epoch is not None, request
        assert current_head is not None, request
        return StreamExists(request.stream_id, current_epoch, current_head)
    if current_epoch is None or current_epoch != request.epoch:
        return Fenced(request.stream_id, request.epoch, current_epoch or 0)
    assert current_head is not None
    assert current_head != request.expected_seq, (request, current_epoch, current_head)
    return ConcurrencyConflict(request.stream_id, request.expected_seq, current_head)


# Small helpers


def _check_schema_name(schema: str) -> None:
    if not _SCHEMA_NAME.match(schema):
        raise UsageError(
            f"schema must be a plain identifier (letters, digits and '_', not starting with a "
            f"digit), got {schema!r}"
        )
    if len(schema.encode()) > _IDENTIFIER_BYTES_MAX:
        raise UsageError(
            f"schema must be at most {_IDENTIFIER_BYTES_MAX} bytes long (PostgreSQL truncates "
            f"longer names), got {len(schema.encode())}: {schema!r}"
        )
    if schema.lower().startswith("pg_"):
        raise UsageError(f"schema names starting with 'pg_' are reserved by PostgreSQL: {schema!r}")


def _check_distinct_streams(requests: Sequence[AppendRequest]) -> None:
    seen: set[str] = set()
    for request in requests:
        if request.stream_id in seen:
            raise UsageError(
                f"a batch names stream {request.stream_id!r} twice; merge its requests into one"
            )
        seen.add(request.stream_id)


def _unzip_leases(leases: Sequence[tuple[str, int]]) -> tuple[list[str], list[int]]:
    stream_ids = [stream_id for stream_id, _ in leases]
    epochs = [epoch for _, epoch in leases]
    return stream_ids, epochs


def _held_by_other(head: StreamHead, owner: str, now_ms: int) -> bool:
    return head.owner is not None and head.owner != owner and head.lease_expires_at_ms > now_ms


def _stream_head(row: asyncpg.Record) -> StreamHead:
    return StreamHead(row[0], row[1], row[2], row[3], row[4])


def _failed_before_commit(error: BaseException) -> bool:
    """Whether the server reported that the statement failed, so it cannot have committed.

    Connection-level errors (SQLSTATE class 08, shutdowns) and errors raised on this side of
    the link (timeouts, broken sockets) say nothing about the commit.
    """
    if not isinstance(error, asyncpg.PostgresError):
        return False
    sqlstate = error.sqlstate or ""
    connection_failed = sqlstate.startswith(_CONNECTION_SQLSTATE_CLASS)
    return not connection_failed and sqlstate not in _SHUTDOWN_SQLSTATES


def _describe_server(dsn: str) -> str:
    """``host:port/database`` from the DSN, for messages; never the user's password."""
    try:
        parts = urllib.parse.urlsplit(dsn)
        port = parts.port
    except ValueError:
        return "the PostgreSQL server of the DSN"
    if parts.scheme not in ("postgres", "postgresql"):
        return "the PostgreSQL server of the DSN"
    host = parts.hostname or "localhost"
    database = parts.path.lstrip("/") or "(the user's default database)"
    return f"PostgreSQL at {host}:{port or 5432}/{database}"


def _dsn_password(dsn: str) -> str | None:
    try:
        return urllib.parse.urlsplit(dsn).password or None
    except ValueError:
        return None
