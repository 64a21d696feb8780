"""PostgresStore against a real PostgreSQL: what the conformance suite cannot show.

Migrations under concurrent starts, several nodes racing on the same streams, lock ordering,
compare-and-set on rows that changed while the append waited, and the translation of driver
failures into ``StoreUnavailable``. Each test uses its own schema and drops it afterwards; the
tests marked ``postgres`` need the server, the others check what fails before any connection.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from mainspring.errors import ConcurrencyConflict, Fenced, StoreUnavailable, UsageError
from mainspring.persistence import postgres
from mainspring.persistence.memory import MemoryStore
from mainspring.persistence.postgres import PostgresStore, _text_array
from mainspring.persistence.store import (
    SCHEMA_VERSION,
    AppendRequest,
    DedupeRecord,
    NewEvent,
    Timer,
)
from tests.conftest import POSTGRES_DSN, drop_postgres_schema, require_postgres

TTL_MS = 10_000
NOW_MS = 1_700_000_000_000
WAIT_S = 30  # a guard against hangs, far above what any step here needs

StoreMaker = Callable[..., PostgresStore]


@pytest.fixture
async def make_store(postgres_schema: str) -> AsyncIterator[StoreMaker]:
    """Builds PostgresStores over this test's schema; closes them and drops the schema after."""
    await require_postgres()
    created: list[PostgresStore] = []

    def make(**options: Any) -> PostgresStore:
        store = PostgresStore(POSTGRES_DSN, schema=postgres_schema, **options)
        created.append(store)
        return store

    yield make
    for store in created:
        await store.close()
    await drop_postgres_schema(postgres_schema)


@pytest.fixture
async def admin(postgres_schema: str) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    """A plain connection with the test's schema on its search path, to look and meddle."""
    await require_postgres()
    connection = await asyncpg.connect(
        POSTGRES_DSN, server_settings={"search_path": postgres_schema}
    )
    yield connection
    await connection.close()


def request(stream_id: str, epoch: int, expected_seq: int, count: int = 1, **extra: Any) -> Any:
    return AppendRequest(
        stream_id=stream_id,
        epoch=epoch,
        expected_seq=expected_seq,
        events=[NewEvent("test.happened", 1, b"{}") for _ in range(count)],
        recorded_at_ms=NOW_MS,
        **extra,
    )


async def wait_for_lock_waiter(
    admin: asyncpg.Connection[asyncpg.Record], application_name: str
) -> int:
    """The pid of the store session named ``application_name`` that waits for a row lock
    (polls until there is one)."""
    async with asyncio.timeout(WAIT_S):
        while True:
            pid = await admin.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1 "
                "AND wait_event_type = 'Lock' AND datname = current_database()",
                application_name,
            )
            if pid is not None:
                return int(pid)
            await asyncio.sleep(0.01)


async def outcome(call: Awaitable[object]) -> object:
    """What the call returns, or the StoreUnavailable it raises."""
    try:
        return await call
    except StoreUnavailable as error:
        return error


# Migrations


@pytest.mark.postgres
async def test_concurrent_opens_apply_each_migration_once(
    make_store: StoreMaker, admin: asyncpg.Connection[asyncpg.Record]
) -> None:
    """Four nodes start together on a schema that does not exist yet: the advisory lock makes
    them take turns, so the schema is created and migrated exactly once and all four work."""
    stores = [make_store() for _ in range(4)]
    await asyncio.gather(*(store.open() for store in stores))
    versions = await admin.fetch("SELECT version FROM schema_migrations ORDER BY version")
    assert [row["version"] for row in versions] == list(range(1, SCHEMA_VERSION + 1))
    for number, store in enumerate(stores):
        lease = await store.acquire_lease(f"acct/{number}", f"node-{number}", NOW_MS, TTL_MS)
        assert lease.epoch == 1


@pytest.mark.postgres
async def test_reopening_applies_nothing(
    make_store: StoreMaker, admin: asyncpg.Connection[asyncpg.Record]
) -> None:
    first = make_store()
    await first.open()
    before = await admin.fetch("SELECT version, applied_at_ms FROM schema_migrations")
    await first.open()  # open on an open store is a no-op
    await first.close()
    second = make_store()
    await second.open()
    after = await admin.fetch("SELECT version, applied_at_ms FROM schema_migrations")
    assert [tuple(row) for row in after] == [tuple(row) for row in before]


@pytest.mark.postgres
async def test_migration_3_keeps_each_streams_dedupe_records_in_arrival_order(
    make_store: StoreMaker,
    admin: asyncpg.Connection[asyncpg.Record],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Method: write dedupe rows into a version 2 schema (seqs out of insertion order, two
    streams), open it with this code, read the records, then append under a window."""
    with monkeypatch.context() as patched:
        patched.setattr(postgres, "_MIGRATIONS", postgres._MIGRATIONS[:2])
        patched.setattr(postgres, "SCHEMA_VERSION", 2)
        old = make_store()
        await old.open()
        await old.close()
    await admin.execute(
        """INSERT INTO streams (stream_id, actor_type, actor_id, epoch, head, owner,
            lease_expires_ms, dedupe_count)
        VALUES ('acct/a', 'acct', 'a', 1, 3, 'node-1', $1, 4),
            ('acct/b', 'acct', 'b', 1, 1, 'node-1', $1, 1)""",
        NOW_MS + TTL_MS,
    )
    await admin.executemany(
        "INSERT INTO dedupe (stream_id, message_id, seq, reply) VALUES ($1, $2, $3, $4)",
        [
            ("acct/a", "m1", 2, b"1"),
            ("acct/b", "b0", 1, b"b"),
            ("acct/a", "m0", 1, b"0"),
            ("acct/a", "m2", 2, b"2"),
            ("acct/a", "m3", 3, b"3"),
        ],
    )

    store = make_store()
    await store.open()
    versions = await admin.fetch("SELECT version FROM schema_migrations ORDER BY version")
    assert [row["version"] for row in versions] == list(range(1, SCHEMA_VERSION + 1))
    kept = await store.read_dedupe("acct/a", 10)
    assert [(r.message_id, r.seq, r.reply) for r in kept] == [
        ("m0", 1, b"0"),
        ("m1", 2, b"1"),
        ("m2", 2, b"2"),
        ("m3", 3, b"3"),
    ]
    assert [r.message_id for r in await store.read_dedupe("acct/b", 10)] == ["b0"]
    append = request("acct/a", 1, 3, 1, dedupe=[DedupeRecord("m4", 4, b"4")], dedupe_window=3)
    assert await store.append_batch([append]) == [None]
    assert [r.message_id for r in await store.read_dedupe("acct/a", 10)] == ["m2", "m3", "m4"]
    rows = await admin.fetch(
        """SELECT s.stream_id, s.dedupe_next,
            array(SELECT d.ordinal FROM dedupe d WHERE d.stream_id = s.stream_id
                ORDER BY d.ordinal) AS ordinals
        FROM streams s ORDER BY 1"""
    )
    assert [tuple(row) for row in rows] == [("acct/a", 5, [2, 3, 4]), ("acct/b", 1, [0])]


@pytest.mark.postgres
async def test_the_previous_clients_append_call_works_on_schema_4(
    make_store: StoreMaker, admin: asyncpg.Connection[asyncpg.Record]
) -> None:
    """Goal: a node still running the schema 3 client (it sends each event's stream in the call)
    keeps appending correctly after another node migrated the database to schema 4 (whose
    client sends e_stream as NULL). Method: make the previous call's SQL from today's (its
    e_stream was the join below) and run it on a migrated schema."""
    store = make_store()
    await store.open()
    leases = [await store.acquire_lease(s, "node-1", NOW_MS, TTL_MS) for s in ("acct/a", "acct/b")]
    assert "e_stream => NULL" in postgres._APPEND_SQL
    p_stream = postgres._ARGUMENT_INDEX["p_stream"] + 1
    e_request = postgres._ARGUMENT_INDEX["e_request"] + 1
    previous_sql = postgres._APPEND_SQL.replace(
        "e_stream => NULL",
        f"e_stream => ARRAY(SELECT p.stream_id "
        f"FROM unnest(${e_request}::text::integer[]) WITH ORDINALITY AS u(i, n) "
        f"JOIN unnest(${p_stream}::text::text[]) WITH ORDINALITY AS p(stream_id, i) "
        f"ON p.i = u.i ORDER BY u.n)",
    )
    requests = [request("acct/b", leases[1].epoch, 0, 1), request("acct/a", leases[0].epoch, 0, 2)]
    arguments = postgres._append_arguments(requests, [1, 0])
    assert await admin.fetch(previous_sql, *arguments) == []
    assert [(e.stream_id, e.seq) for e in await store.read_events("acct/a")] == [
        ("acct/a", 1),
        ("acct/a", 2),
    ]
    assert [(e.stream_id, e.seq) for e in await store.read_events("acct/b")] == [("acct/b", 1)]
    # And the call of this version, on the same streams.
    assert await store.append_batch([request("acct/a", leases[0].epoch, 2, 1)]) == [None]
    assert [e.seq for e in await store.read_events("acct/a")] == [1, 2, 3]


@pytest.mark.postgres
async def test_a_schema_from_a_newer_mainspring_fails_open_clearly(
    make_store: StoreMaker, admin: asyncpg.Connection[asyncpg.Record]
) -> None:
    await make_store().open()
    newer = SCHEMA_VERSION + 1
    await admin.execute(
        "INSERT INTO schema_migrations (version, applied_at_ms) VALUES ($1, 0)", newer
    )
    store = make_store()
    with pytest.raises(StoreUnavailable, match=rf"version {newer}.*newer mainspring"):
        await store.open()
    # The failed open leaves the store closed, not half open.
    with pytest.raises(UsageError, match="open"):
        await store.read_head("acct/a")


# Several nodes on the same streams


@pytest.mark.postgres
async def test_appends_racing_from_two_stores_commit_once(make_store: StoreMaker) -> None:
    node_1, node_2 = make_store(), make_store()
    await node_1.open()
    await node_2.open()
    lease = await node_1.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    attempts = [
        store.append_batch([request("acct/a", lease.epoch, 0, 3)])
        for store in (node_1, node_2)
        for _ in range(8)
    ]
    outcomes = [result for [result] in await asyncio.gather(*attempts)]
    assert sum(outcome is None for outcome in outcomes) == 1
    assert all(isinstance(o, ConcurrencyConflict) for o in outcomes if o is not None)
    assert [event.seq for event in await node_2.read_events("acct/a")] == [1, 2, 3]


@pytest.mark.postgres
async def test_batches_over_the_same_streams_in_opposite_orders_never_deadlock(
    make_store: StoreMaker,
) -> None:
    """Two nodes append to the same 50 streams at once, listing them in opposite orders.

    Locking in stream-id order makes one batch wait for the other; without it PostgreSQL would
    detect a deadlock and fail one of them (a StoreUnavailable here).
    """
    node_1, node_2 = make_store(), make_store()
    await node_1.open()
    await node_2.open()
    stream_ids = [f"acct/{number:02d}" for number in range(50)]
    epochs = {}
    for stream_id in stream_ids:
        epochs[stream_id] = (await node_1.acquire_lease(stream_id, "node-1", NOW_MS, TTL_MS)).epoch
    heads = dict.fromkeys(stream_ids, 0)
    for _ in range(10):
        forward = [request(s, epochs[s], heads[s], 2) for s in stream_ids]
        backward = [request(s, epochs[s], heads[s], 3) for s in reversed(stream_ids)]
        async with asyncio.timeout(WAIT_S):
            results_1, results_2 = await asyncio.gather(
                node_1.append_batch(forward), node_2.append_batch(backward)
            )
        by_stream_2 = dict(zip(reversed(stream_ids), results_2, strict=True))
        for stream_id, result_1 in zip(stream_ids, results_1, strict=True):
            result_2 = by_stream_2[stream_id]
            # Exactly one of the two appends to each stream commits.
            assert (result_1 is None) != (result_2 is None), (stream_id, result_1, result_2)
            heads[stream_id] += 2 if result_1 is None else 3
    for stream_id in stream_ids:
        seqs = [event.seq for event in await node_1.read_events(stream_id)]
        assert seqs == list(range(1, heads[stream_id] + 1))
    assert [(h.stream_id, h.head_seq) for h in await node_2.list_streams()] == list(heads.items())


@pytest.mark.postgres
async def test_an_append_waiting_behind_a_lease_renewal_commits_on_the_renewed_row(
    make_store: StoreMaker, admin: asyncpg.Connection[asyncpg.Record]
) -> None:
    """The stream row changes (same epoch) while the append waits for its lock: the append
    must decide and write on the new row version."""
    name = f"mainspring-waiter-{os.getpid()}"
    store = make_store(application_name=name)
    await store.open()
    lease = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    renewal = admin.transaction()
    await renewal.start()
    await admin.execute(
        "UPDATE streams SET lease_expires_ms = lease_expires_ms + 1 WHERE stream_id = 'acct/a'"
    )
    append = asyncio.create_task(store.append_batch([request("acct/a", lease.epoch, 0, 2)]))
    await wait_for_lock_waiter(admin, name)
    await renewal.commit()
    assert await append == [None]
    head = await store.read_head("acct/a")
    assert head is not None
    assert (head.head_seq, head.lease_expires_at_ms) == (2, NOW_MS + TTL_MS + 1)


@pytest.mark.postgres
async def test_an_append_waiting_behind_a_takeover_is_fenced(
    make_store: StoreMaker, admin: asyncpg.Connection[asyncpg.Record]
) -> None:
    name = f"mainspring-waiter-{os.getpid()}"
    store = make_store(application_name=name)
    await store.open()
    lease = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    takeover = admin.transaction()
    await takeover.start()
    await admin.execute("UPDATE streams SET epoch = epoch + 1 WHERE stream_id = 'acct/a'")
    append = asyncio.create_task(store.append_batch([request("acct/a", lease.epoch, 0)]))
    await wait_for_lock_waiter(admin, name)
    await takeover.commit()
    [result] = await append
    assert isinstance(result, Fenced)
    assert (result.epoch, result.current_epoch) == (lease.epoch, lease.epoch + 1)
    assert await store.read_events("acct/a") == []


@pytest.mark.postgres
async def test_dedupe_records_stay_one_range_of_ordinals_through_windows(
    make_store: StoreMaker, admin: asyncpg.Connection[asyncpg.Record]
) -> None:
    """Each stream's records hold the ordinals from some first one up to dedupe_next - 1,
    whatever the window does, when a forgotten message id comes again, and when a request's
    records are not in seq order; the records kept are those the reference store keeps."""
    store, reference = make_store(), MemoryStore()
    await store.open()
    await reference.open()
    lease = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    await reference.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    # (window, [(message id, offset from the head the request saw)])
    plan = [
        (0, [("m1", 1), ("m2", 1)]),
        (0, [("m3", 1)]),
        (2, [("m4", 1), ("m5", 1)]),
        (5, [("m6", 1), ("m7", 1), ("m8", 1)]),
        (1, []),
        (3, [("m1", 1), ("m9", 1)]),  # m1 was forgotten: it comes again as the newest
        (0, [("m10", 1), ("m11", 0), ("m2", 1)]),  # m11 (no events) sorts first
    ]
    for head, (window, records_planned) in enumerate(plan):
        records = [
            DedupeRecord(message_id, head + offset, b"%d" % number)
            for number, (message_id, offset) in enumerate(records_planned)
        ]
        append = request("acct/a", lease.epoch, head, 1, dedupe=records, dedupe_window=window)
        assert await store.append_batch([append]) == [None]
        await reference.append_batch([append])
        row = await admin.fetchrow(
            """SELECT s.dedupe_next, count(d.ordinal) AS kept, min(d.ordinal) AS first,
                max(d.ordinal) AS last
            FROM streams s LEFT JOIN dedupe d ON d.stream_id = s.stream_id
            GROUP BY s.dedupe_next"""
        )
        assert row is not None
        assert (row["first"], row["last"]) == (
            row["dedupe_next"] - row["kept"],
            row["dedupe_next"] - 1,
        )
        assert await store.read_dedupe("acct/a", 20) == await reference.read_dedupe("acct/a", 20)
    kept = await store.read_dedupe("acct/a", 20)
    assert [record.message_id for record in kept] == ["m8", "m1", "m9", "m11", "m10", "m2"]


# Failures and their translation


async def test_open_against_an_unreachable_server_fails_promptly_and_clearly() -> None:
    store = PostgresStore("postgresql://someone:s3cret@127.0.0.1:1/nowhere", connect_timeout_s=5.0)
    async with asyncio.timeout(WAIT_S):
        with pytest.raises(StoreUnavailable) as caught:
            await store.open()
    message = str(caught.value)
    assert "cannot connect to PostgreSQL at 127.0.0.1:1/nowhere" in message
    assert "s3cret" not in message
    assert caught.value.ambiguous is False
    with pytest.raises(UsageError, match="open"):
        await store.read_head("acct/a")


@pytest.mark.parametrize(
    "schema", ["", "1st", "with-dash", 'quote"d', "semi;colon", "pg_mine", "x" * 64, "ü"]
)
def test_a_schema_name_that_is_not_a_plain_identifier_is_refused(schema: str) -> None:
    with pytest.raises(UsageError, match="schema"):
        PostgresStore(POSTGRES_DSN, schema=schema)


def test_invalid_pool_sizes_and_timeouts_are_refused() -> None:
    with pytest.raises(UsageError, match="pool_min_size"):
        PostgresStore(POSTGRES_DSN, pool_min_size=5, pool_max_size=2)
    with pytest.raises(UsageError, match="command_timeout_s"):
        PostgresStore(POSTGRES_DSN, command_timeout_s=0)


@pytest.mark.postgres
async def test_the_store_reconnects_after_its_sessions_are_terminated(
    make_store: StoreMaker, admin: asyncpg.Connection[asyncpg.Record]
) -> None:
    # A name of its own, so only this store's sessions are killed (other test processes may
    # share the database).
    name = f"mainspring-terminated-{os.getpid()}"
    store = make_store(pool_min_size=1, pool_max_size=1, application_name=name)
    await store.open()
    await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    killed = await admin.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = $1 AND datname = current_database()",
        name,
    )
    assert killed == 1
    # The pool may notice the dead connection before using it, or on the first use; either
    # way a read fails at most once, cleanly, and the next one works.
    first = await outcome(store.read_head("acct/a"))
    if isinstance(first, StoreUnavailable):
        assert first.ambiguous is False
        assert "read_head failed on PostgreSQL at" in str(first)
    head = await store.read_head("acct/a")
    assert head is not None
    assert head.owner == "node-1"


@pytest.mark.postgres
async def test_a_statement_the_server_rejects_is_unavailable_but_not_ambiguous(
    make_store: StoreMaker, admin: asyncpg.Connection[asyncpg.Record]
) -> None:
    """The server reported the failure, so nothing committed: ``ambiguous`` stays false."""
    store = make_store()
    await store.open()
    await admin.execute("DROP TABLE lease_history")
    with pytest.raises(StoreUnavailable, match=r"acquire_leases failed.*lease_history") as caught:
        await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    assert caught.value.ambiguous is False
    assert await store.read_head("acct/a") is None


@pytest.mark.postgres
async def test_append_values_the_columns_cannot_hold_are_usage_errors(
    make_store: StoreMaker,
) -> None:
    """Integer and text columns travel as array text: a value out of range, or not an int or
    a str, is refused as the caller's mistake, and the batch writes nothing."""
    store = make_store()
    await store.open()
    lease = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    with pytest.raises(UsageError, match=r"append_batch.*out of range"):
        await store.append_batch([request("acct/a", lease.epoch, 0, dedupe_window=2**63)])
    with pytest.raises(UsageError, match="the store takes ints"):
        await store.append_batch([request("acct/a", lease.epoch, 0, dedupe_window=1.5)])
    with pytest.raises(UsageError, match="the store takes str"):
        await store.append_batch([request("acct/a", lease.epoch, 0, status=7)])
    assert await store.read_events("acct/a") == []
    assert await store.append_batch([request("acct/a", lease.epoch, 0)]) == [None]
    assert [event.seq for event in await store.read_events("acct/a")] == [1]


# Text that array text must quote or escape: its own syntax, whitespace, the word NULL.
AWKWARD_TEXTS = [
    'a"quote',
    "back\\slash",
    '\\"',
    "{braces},commas",
    " leading and trailing ",
    "NULL",
    "null",
    "",
    "tab\tnewline\n",
    "ünïcödé ☃ 𝄞",
    "plain",
]


@pytest.mark.postgres
async def test_text_array_is_read_back_exactly(
    admin: asyncpg.Connection[asyncpg.Record],
) -> None:
    """Text columns travel as array text (_text_array): every character comes back as it was,
    NULL stays NULL and the word 'NULL' stays a word."""
    for values in ([], AWKWARD_TEXTS, [None, "x", None], ["only"], [None]):
        assert await admin.fetchval("SELECT $1::text::text[]", _text_array(values)) == values


@pytest.mark.postgres
async def test_ids_with_array_syntax_in_them_are_stored_exactly(make_store: StoreMaker) -> None:
    """Stream ids, message ids, timer names and type names that hold quotes, backslashes,
    braces or commas are written and read back unchanged, each in its own stream."""
    store = make_store()
    await store.open()
    streams = [f"acct/{text}" for text in AWKWARD_TEXTS if text]
    epochs = {}
    for stream_id in streams:
        epochs[stream_id] = (await store.acquire_lease(stream_id, "node-1", NOW_MS, TTL_MS)).epoch
    requests = [
        AppendRequest(
            stream_id=stream_id,
            epoch=epochs[stream_id],
            expected_seq=0,
            events=[NewEvent("test.happened", 1, stream_id.encode(), message_id=f"m,{stream_id}")],
            recorded_at_ms=NOW_MS,
            dedupe=[DedupeRecord(f"m,{stream_id}", 1, b"r")],
            timers_set=[Timer(stream_id, f'"{stream_id}"', NOW_MS + index, None)],
        )
        for index, stream_id in enumerate(streams)
    ]
    assert await store.append_batch(requests) == [None] * len(requests)
    for stream_id in streams:
        [event] = await store.read_events(stream_id)
        assert (event.payload, event.message_id) == (stream_id.encode(), f"m,{stream_id}")
        assert await store.read_dedupe(stream_id, 10) == [DedupeRecord(f"m,{stream_id}", 1, b"r")]
    timers = await store.read_due_timers(NOW_MS + len(streams), 100)
    assert sorted((timer.stream_id, timer.name) for timer in timers) == sorted(
        (stream_id, f'"{stream_id}"') for stream_id in streams
    )


@pytest.mark.postgres
async def test_a_write_cut_off_in_flight_is_ambiguous(
    make_store: StoreMaker, admin: asyncpg.Connection[asyncpg.Record]
) -> None:
    """The append's session is terminated while the append runs: it may or may not have
    committed as far as the caller can tell, so the error says ``ambiguous``."""
    name = f"mainspring-cut-off-{os.getpid()}"
    store = make_store(application_name=name)
    await store.open()
    lease = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    blocker = admin.transaction()
    await blocker.start()
    await admin.execute("SELECT * FROM streams WHERE stream_id = 'acct/a' FOR UPDATE")
    append = asyncio.create_task(store.append_batch([request("acct/a", lease.epoch, 0)]))
    await admin.execute("SELECT pg_terminate_backend($1)", await wait_for_lock_waiter(admin, name))
    with pytest.raises(StoreUnavailable, match="may or may not have committed") as caught:
        await append
    assert caught.value.ambiguous is True
    await blocker.rollback()
    assert await store.read_events("acct/a") == []


@pytest.mark.postgres
async def test_a_statement_over_the_command_timeout_is_ambiguous(
    make_store: StoreMaker, admin: asyncpg.Connection[asyncpg.Record]
) -> None:
    store = make_store(command_timeout_s=0.2)
    await store.open()
    lease = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    blocker = admin.transaction()
    await blocker.start()
    await admin.execute("SELECT * FROM streams WHERE stream_id = 'acct/a' FOR UPDATE")
    with pytest.raises(StoreUnavailable) as caught:
        await store.append_batch([request("acct/a", lease.epoch, 0)])
    assert caught.value.ambiguous is True
    await blocker.rollback()
    await store.append_batch([request("acct/a", lease.epoch, 0)])
    assert len(await store.read_events("acct/a")) == 1


@pytest.mark.parametrize(
    "dsn", ["not a dsn", "mysql://someone@127.0.0.1/db", "postgresql://u@127.0.0.1:port/db"]
)
async def test_a_malformed_dsn_is_a_usage_error(dsn: str) -> None:
    store = PostgresStore(dsn)
    with pytest.raises(UsageError, match="DSN is invalid"):
        await store.open()
