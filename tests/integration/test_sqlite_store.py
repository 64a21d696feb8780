"""SqliteStore beyond the shared contract: migrations, PRAGMAs, runners, errors, several nodes on
one file, and a differential test that replays random operations on it and on the MemoryStore."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mainspring.errors import ConcurrencyConflict, StoreUnavailable, UsageError
from mainspring.persistence import _sqlite_sql as sql
from mainspring.persistence.memory import MemoryStore
from mainspring.persistence.sqlite import AiosqliteRunner, InlineRunner, SqliteRunner, SqliteStore
from mainspring.persistence.store import (
    SCHEMA_VERSION,
    AppendRequest,
    DedupeRecord,
    NewEvent,
    OutboxMessage,
    Snapshot,
    Timer,
)
from tests.support import sqlite_writer_calls as calls
from tests.support.clocks import FixedClock

TTL_MS = 10_000
NOW_MS = 1_700_000_000_000


class RecordingFactory:
    """Opens runners of one kind and keeps them, so a test can query the store's connections."""

    def __init__(self, kind: type[AiosqliteRunner] | type[InlineRunner]) -> None:
        self.kind = kind
        self.runners: list[SqliteRunner] = []

    async def __call__(self, path: str) -> SqliteRunner:
        runner = await self.kind.open(path)
        self.runners.append(runner)
        return runner


def one_event(stream_id: str, epoch: int, expected_seq: int) -> AppendRequest:
    return AppendRequest(
        stream_id, epoch, expected_seq, [NewEvent("test.happened", 1, b"{}")], NOW_MS
    )


def migrations_of(path: Path) -> list[tuple[int, int]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT version, applied_at_ms FROM schema_migrations").fetchall()


# Migrations


async def test_migrations_are_recorded_once_and_reopening_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    first = SqliteStore(path, clock=FixedClock(NOW_MS))
    await first.open()
    await first.open()
    await first.close()
    again = SqliteStore(path, clock=FixedClock(NOW_MS + 60_000))
    await again.open()
    await again.close()
    assert migrations_of(path) == [(version, NOW_MS) for version in range(1, SCHEMA_VERSION + 1)]


async def test_migration_3_keeps_each_streams_dedupe_records_in_arrival_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Method: write dedupe rows into a version 2 schema (seqs out of insertion order, two
    streams), open it with this code, read the records, then append under a window."""
    path = tmp_path / "store.db"
    with monkeypatch.context() as patched:
        patched.setattr(sql, "MIGRATIONS", sql.MIGRATIONS[:2])
        patched.setattr(sql, "SCHEMA_VERSION", 2)
        conn = sqlite3.connect(path, isolation_level=None)
        assert sql.migrate_tx(conn, NOW_MS) == [1, 2]
    conn.executemany(
        "INSERT INTO streams (stream_id, epoch, head, owner, lease_expires_ms)"
        " VALUES (?, 1, ?, ?, ?)",
        [("acct/a", 3, "node-1", NOW_MS + TTL_MS), ("acct/b", 1, "node-1", NOW_MS + TTL_MS)],
    )
    conn.executemany(
        "INSERT INTO dedupe (stream_id, message_id, seq, reply) VALUES (?, ?, ?, ?)",
        [
            ("acct/a", "m1", 2, b"1"),
            ("acct/b", "b0", 1, b"b"),
            ("acct/a", "m0", 1, b"0"),
            ("acct/a", "m2", 2, b"2"),
            ("acct/a", "m3", 3, b"3"),
        ],
    )
    conn.close()

    store = SqliteStore(path, clock=FixedClock(NOW_MS))
    await store.open()
    assert migrations_of(path)[2:] == [(v, NOW_MS) for v in range(3, SCHEMA_VERSION + 1)]
    kept = await store.read_dedupe("acct/a", 10)
    assert [(r.message_id, r.seq, r.reply) for r in kept] == [
        ("m0", 1, b"0"),
        ("m1", 2, b"1"),
        ("m2", 2, b"2"),
        ("m3", 3, b"3"),
    ]
    assert [r.message_id for r in await store.read_dedupe("acct/b", 10)] == ["b0"]
    append = AppendRequest(
        "acct/a",
        1,
        3,
        [NewEvent("t", 1, b"{}")],
        NOW_MS,
        dedupe=[DedupeRecord("m4", 4, b"4")],
        dedupe_window=3,
    )
    assert await store.append_batch([append]) == [None]
    assert [r.message_id for r in await store.read_dedupe("acct/a", 10)] == ["m2", "m3", "m4"]
    await store.close()
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT stream_id, dedupe_next, (SELECT group_concat(ordinal) FROM dedupe "
            "WHERE dedupe.stream_id = streams.stream_id) FROM streams ORDER BY 1"
        ).fetchall()
        leftovers = conn.execute(
            "SELECT name FROM sqlite_schema WHERE name IN "
            "('dedupe_by_seq', 'dedupe_counted', 'dedupe_uncounted', 'dedupe_by_arrival')"
        ).fetchall()
    assert rows == [("acct/a", 5, "2,3,4"), ("acct/b", 1, "0")]
    assert leftovers == []


async def test_stores_opening_one_new_file_at_once_migrate_it_once(tmp_path: Path) -> None:
    """Method: six stores open each of ten new files at once; all of them must succeed (the WAL
    switch refuses the losers without waiting) and the schema must be applied once."""
    for attempt in range(10):
        path = tmp_path / f"store-{attempt}.db"
        stores = [SqliteStore(path) for _ in range(6)]
        await asyncio.gather(*(store.open() for store in stores))
        lease = await stores[0].acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
        assert (await stores[5].read_head("acct/a")) is not None
        for store in stores:
            await store.close()
        versions = [version for version, _ in migrations_of(path)]
        assert versions == list(range(1, SCHEMA_VERSION + 1))
        assert lease.epoch == 1


async def test_an_older_schema_is_migrated_at_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Method: write a database at the current version, then open it with code that knows one
    version more."""
    path = tmp_path / "store.db"
    old = SqliteStore(path, clock=FixedClock(NOW_MS))
    await old.open()
    lease = await old.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    await old.append_batch([one_event("acct/a", lease.epoch, 0)])
    await old.close()
    next_version = SCHEMA_VERSION + 1
    migration = sql.Migration(
        next_version, "add a note to timers", ("ALTER TABLE timers ADD COLUMN note TEXT",)
    )
    monkeypatch.setattr(sql, "MIGRATIONS", (*sql.MIGRATIONS, migration))
    monkeypatch.setattr(sql, "SCHEMA_VERSION", next_version)

    # The writer runs in this process, where the patched migrations are.
    new = SqliteStore(path, clock=FixedClock(NOW_MS + 5), writer="thread")
    await new.open()
    assert [event.seq for event in await new.read_events("acct/a")] == [1]
    await new.close()
    assert migrations_of(path)[-2:] == [(SCHEMA_VERSION, NOW_MS), (next_version, NOW_MS + 5)]
    with sqlite3.connect(path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(timers)")]
    assert "note" in columns


async def test_a_database_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = SqliteStore(path)
    await store.open()
    await store.close()
    unknown = SCHEMA_VERSION + 1
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (?, 0)", (unknown,))
    versions = ", ".join(str(version) for version in range(1, unknown + 1))
    named = rf"versions \[{versions}\].*versions 1\.\.{SCHEMA_VERSION}"
    with pytest.raises(StoreUnavailable, match=named) as caught:
        await SqliteStore(path).open()
    assert str(path) in str(caught.value)
    assert caught.value.ambiguous is False


# Connections, PRAGMAs and runners


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL", "extra"])
async def test_wal_mode_and_the_synchronous_setting_are_in_effect(
    tmp_path: Path, synchronous: str
) -> None:
    factory = RecordingFactory(AiosqliteRunner)
    store = SqliteStore(tmp_path / "store.db", synchronous=synchronous, runner_factory=factory)
    await store.open()
    writer, reader = factory.runners

    def pragmas(conn: sqlite3.Connection) -> tuple[str, int, int]:
        [(mode,)] = conn.execute("PRAGMA journal_mode").fetchall()
        [(level,)] = conn.execute("PRAGMA synchronous").fetchall()
        [(query_only,)] = conn.execute("PRAGMA query_only").fetchall()
        return mode, level, query_only

    expected_level = {"FULL": 2, "NORMAL": 1, "EXTRA": 3}[synchronous.upper()]
    assert await writer.run(pragmas) == ("wal", expected_level, 0)
    assert (await reader.run(pragmas))[::2] == ("wal", 1)
    await store.close()


@pytest.mark.parametrize(
    ("options", "expected"),
    [({}, (-64 * 1024, 10_000)), ({"cache_mib": 8, "checkpoint_pages": 123}, (-8 * 1024, 123))],
)
async def test_the_writers_page_cache_and_checkpoint_interval_are_in_effect(
    tmp_path: Path, options: dict[str, int], expected: tuple[int, int]
) -> None:
    factory = RecordingFactory(AiosqliteRunner)
    store = SqliteStore(tmp_path / "store.db", runner_factory=factory, **options)
    await store.open()
    writer, reader = factory.runners
    assert await writer.run(calls.cache_and_checkpoint) == expected
    # The reader keeps SQLite's defaults: it never checkpoints a WAL it cannot write to.
    assert await reader.run(calls.cache_and_checkpoint) == (-2000, 1000)
    await store.close()


@pytest.mark.parametrize("name", ["cache_mib", "checkpoint_pages"])
@pytest.mark.parametrize("value", [0, -1, True, 1.5, "64"])
def test_a_cache_or_checkpoint_setting_that_is_not_a_positive_int_is_refused(
    name: str, value: object
) -> None:
    with pytest.raises(UsageError, match=rf"{name} must be an int >= 1, got {value!r}"):
        SqliteStore("x.db", **{name: value})  # type: ignore[arg-type]


def test_an_unknown_synchronous_setting_is_refused() -> None:
    with pytest.raises(UsageError, match="synchronous"):
        SqliteStore("x.db", synchronous="OFF")


def new_threads(before: set[threading.Thread]) -> set[threading.Thread]:
    """Threads alive now that were not in ``before`` (threads of earlier tests may still be
    ending, so counting them would be flaky)."""
    return set(threading.enumerate()) - before


async def test_the_inline_runner_works_without_starting_a_thread(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    count_before = threading.active_count()
    store = SqliteStore(tmp_path / "store.db", runner_factory=InlineRunner.open)
    await store.open()
    lease = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    [result] = await store.append_batch([one_event("acct/a", lease.epoch, 0)])
    assert result is None
    assert [event.seq for event in await store.read_events("acct/a")] == [1]
    assert new_threads(before) == set()
    await store.close()
    assert new_threads(before) == set()
    assert threading.active_count() <= count_before


async def test_the_aiosqlite_runner_runs_on_worker_threads(tmp_path: Path) -> None:
    """The counterpart of the inline test: it shows that the check detects threads."""
    before = set(threading.enumerate())
    store = SqliteStore(tmp_path / "store.db")
    await store.open()
    workers = new_threads(before)
    assert len(workers) == 2  # the writer's and the reader's
    await store.close()
    for worker in workers:
        worker.join(timeout=5)
        assert not worker.is_alive()


@pytest.mark.parametrize("runner", [AiosqliteRunner, InlineRunner])
async def test_an_in_memory_database_serves_reads_and_writes_on_one_connection(
    runner: type[AiosqliteRunner] | type[InlineRunner],
) -> None:
    factory = RecordingFactory(runner)
    store = SqliteStore(":memory:", runner_factory=factory)
    await store.open()
    lease = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    await store.append_batch([one_event("acct/a", lease.epoch, 0)])
    assert [event.seq for event in await store.read_events("acct/a")] == [1]
    assert len(factory.runners) == 1
    await store.close()


# Errors


@pytest.mark.parametrize("runner", [AiosqliteRunner, InlineRunner])
async def test_a_missing_directory_is_a_clear_store_unavailable(
    tmp_path: Path, runner: type[AiosqliteRunner] | type[InlineRunner]
) -> None:
    path = tmp_path / "no-such-directory" / "store.db"
    store = SqliteStore(path, runner_factory=runner.open)
    with pytest.raises(StoreUnavailable, match="does not exist: create it") as caught:
        await store.open()
    assert str(path) in str(caught.value)
    with pytest.raises(UsageError, match="open"):
        await store.read_head("acct/a")


async def test_a_sqlite_library_too_old_is_refused_at_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sql, "SQLITE_VERSION_MIN", (99, 0, 0))
    store = SqliteStore(tmp_path / "store.db", runner_factory=InlineRunner.open)
    with pytest.raises(StoreUnavailable, match=r"needs SQLite 3\.37 or newer"):
        await store.open()
    with pytest.raises(UsageError, match="open"):
        await store.read_head("acct/a")


async def test_a_write_lock_held_too_long_is_a_clear_store_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = SqliteStore(path, busy_timeout_ms=50)
    await store.open()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreUnavailable, match="busy_timeout_ms=50") as caught:
            await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
        assert caught.value.ambiguous is False
        assert str(path) in str(caught.value)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert (await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)).epoch == 1
    await store.close()


class CommitFailsOnce(sqlite3.Connection):
    """A connection whose next COMMIT raises, as a failing disk would."""

    fail_next_commit = False

    def execute(self, statement: str, *args: Any) -> sqlite3.Cursor:
        if statement == "COMMIT" and self.fail_next_commit:
            self.fail_next_commit = False
            raise sqlite3.OperationalError("disk I/O error")
        return super().execute(statement, *args)


async def test_a_failing_commit_is_ambiguous_and_leaves_the_connection_usable(
    tmp_path: Path,
) -> None:
    connections: list[CommitFailsOnce] = []

    async def open_runner(path: str) -> SqliteRunner:
        conn = sqlite3.connect(path, isolation_level=None, factory=CommitFailsOnce)
        connections.append(conn)
        return InlineRunner(conn)

    store = SqliteStore(tmp_path / "store.db", runner_factory=open_runner)
    await store.open()
    lease = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    connections[0].fail_next_commit = True
    with pytest.raises(StoreUnavailable, match="may or may not have committed") as caught:
        await store.append_batch([one_event("acct/a", lease.epoch, 0)])
    assert caught.value.ambiguous is True
    assert await store.read_events("acct/a") == []
    assert await store.append_batch([one_event("acct/a", lease.epoch, 0)]) == [None]
    await store.close()


async def test_a_value_of_the_wrong_type_is_a_usage_error(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.db", runner_factory=InlineRunner.open)
    await store.open()
    lease = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    not_bytes: Any = "not bytes"
    wrong = AppendRequest("acct/a", lease.epoch, 0, [NewEvent("t", 1, not_bytes)], NOW_MS)
    with pytest.raises(UsageError, match="types of the record fields"):
        await store.append_batch([wrong])
    assert await store.read_events("acct/a") == []
    await store.close()


# Dedupe records


async def test_a_message_id_the_window_forgot_is_recorded_again_as_the_newest(
    tmp_path: Path,
) -> None:
    """Method: record m0..m4 under a window of 3, then m0 again (forgotten by then); read the
    records and the rows: one range of ordinals per stream, ending at dedupe_next."""
    store = SqliteStore(tmp_path / "store.db", runner_factory=InlineRunner.open)
    await store.open()
    lease = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    for seq, message_id in enumerate(["m0", "m1", "m2", "m3", "m4", "m0"]):
        record = DedupeRecord(message_id, seq + 1, b"%d" % seq)
        request = AppendRequest(
            "acct/a",
            lease.epoch,
            seq,
            [NewEvent("t", 1, b"{}")],
            NOW_MS,
            dedupe=[record],
            dedupe_window=3,
        )
        assert await store.append_batch([request]) == [None]
    kept = await store.read_dedupe("acct/a", 10)
    assert [(r.message_id, r.seq, r.reply) for r in kept] == [
        ("m3", 4, b"3"),
        ("m4", 5, b"4"),
        ("m0", 6, b"5"),
    ]
    with sqlite3.connect(tmp_path / "store.db") as conn:
        ordinals = [row[0] for row in conn.execute("SELECT ordinal FROM dedupe ORDER BY 1")]
        [(next_ordinal,)] = conn.execute("SELECT dedupe_next FROM streams").fetchall()
    assert (ordinals, next_ordinal) == ([3, 4, 5], 6)
    await store.close()


# Several nodes on one file


async def test_two_stores_racing_appends_on_one_stream_commit_exactly_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    node_1, node_2 = SqliteStore(path), SqliteStore(path)
    await node_1.open()
    await node_2.open()
    lease = await node_1.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    for expected_seq in range(20):
        attempts = [
            node.append_batch([one_event("acct/a", lease.epoch, expected_seq)])
            for node in (node_1, node_2, node_1, node_2)
        ]
        outcomes = [result for [result] in await asyncio.gather(*attempts)]
        assert sum(outcome is None for outcome in outcomes) == 1
        assert all(isinstance(o, ConcurrencyConflict) for o in outcomes if o is not None)
    assert [event.seq for event in await node_2.read_events("acct/a")] == list(range(1, 21))
    await node_1.close()
    await node_2.close()


# The same operations on SQLite and on the reference store

STREAM_IDS = ("acct/a", "acct/b", "order/c")
OWNERS = ("node-1", "node-2")
MESSAGE_IDS = ("m0", "m1", "m2", "m3")
TIMER_NAMES = ("t0", "t1")
STATUSES = (None, "", "busy", "done")

appends = st.fixed_dictionaries(
    {
        "stream_id": st.sampled_from(STREAM_IDS),
        "epoch_delta": st.sampled_from((0, 0, 0, -1, 1)),
        "seq_delta": st.sampled_from((0, 0, 0, -1, 1)),
        "events": st.integers(0, 3),
        "dedupe": st.lists(
            st.tuples(st.sampled_from(MESSAGE_IDS), st.integers(0, 3)),
            max_size=3,
            unique_by=lambda record: record[0],
        ),
        "window": st.integers(0, 4),
        "outbox": st.lists(st.sampled_from(MESSAGE_IDS), max_size=2),
        "timers_set": st.lists(
            st.tuples(st.sampled_from(TIMER_NAMES), st.integers(0, 50)), max_size=2
        ),
        "timers_cancelled": st.lists(st.sampled_from(TIMER_NAMES), max_size=2),
        "snapshot": st.none() | st.binary(min_size=1, max_size=1),
        "status": st.sampled_from(STATUSES),
    }
)
lease_choices = st.lists(st.tuples(st.sampled_from(STREAM_IDS), st.sampled_from((0, 0, -1))))
operations_by_kind = {
    "append": st.tuples(
        st.just("append"),
        st.lists(appends, min_size=1, max_size=3, unique_by=lambda a: a["stream_id"]),
    ),
    "acquire": st.tuples(
        st.just("acquire"), st.sampled_from(STREAM_IDS), st.sampled_from(OWNERS), st.booleans()
    ),
    "renew": st.tuples(st.just("renew"), st.sampled_from(OWNERS), lease_choices),
    "release": st.tuples(st.just("release"), st.sampled_from(OWNERS), lease_choices),
    "delete_outbox": st.tuples(st.just("delete_outbox"), st.lists(st.sampled_from(MESSAGE_IDS))),
    "delete_timer": st.tuples(
        st.just("delete_timer"),
        st.sampled_from(STREAM_IDS),
        st.sampled_from(TIMER_NAMES),
        st.integers(0, 50),
    ),
    "wait": st.tuples(st.just("wait"), st.integers(0, 2 * TTL_MS)),
}
# Half of the operations are appends, so most scripts commit many of them.
operations = st.sampled_from(["append"] * 6 + sorted(operations_by_kind)).flatmap(
    operations_by_kind.__getitem__
)


async def build_request(reference: MemoryStore, spec: dict[str, Any], now_ms: int) -> AppendRequest:
    stream_id = spec["stream_id"]
    head = await reference.read_head(stream_id)
    epoch = max(1, (head.epoch if head else 1) + spec["epoch_delta"])
    expected = max(0, (head.head_seq if head else 0) + spec["seq_delta"])
    count = spec["events"]
    # A caller never records again a message id the stream still holds (the window exists to
    # catch that duplicate); an id the window forgot may come again.
    held = {record.message_id for record in await reference.read_dedupe(stream_id, 100)}
    # Offset 0 is a message that only sent or scheduled, recorded at the head it saw.
    dedupe = [
        DedupeRecord(message_id, expected + min(offset, count), b"%d" % offset)
        for message_id, offset in spec["dedupe"]
        if message_id not in held
    ]
    return AppendRequest(
        stream_id=stream_id,
        epoch=epoch,
        expected_seq=expected,
        events=[NewEvent("test.happened", 1, b"%d" % n, None) for n in range(count)],
        recorded_at_ms=now_ms,
        dedupe=dedupe,
        dedupe_window=spec["window"],
        outbox=[
            OutboxMessage(message_id, stream_id, "acct", "x", "t", 1, b"{}", now_ms)
            for message_id in spec["outbox"]
        ],
        timers_set=[Timer(stream_id, name, due, b"%d" % due) for name, due in spec["timers_set"]],
        timers_cancelled=spec["timers_cancelled"],
        snapshot=None
        if spec["snapshot"] is None
        else Snapshot(stream_id, expected + count, "s", 1, spec["snapshot"], now_ms),
        status=spec["status"],
    )


async def build_leases(
    reference: MemoryStore, choices: list[tuple[str, int]]
) -> list[tuple[str, int]]:
    leases = []
    for stream_id, epoch_delta in choices:
        head = await reference.read_head(stream_id)
        leases.append((stream_id, max(1, (head.epoch if head else 1) + epoch_delta)))
    return leases


async def apply(store: Any, operation: tuple[Any, ...], inputs: Any, now_ms: int) -> Any:
    """Run one operation; return its result, or its error as (type, message)."""
    kind = operation[0]
    try:
        if kind == "acquire":
            _, stream_id, owner, steal = operation
            return await store.acquire_lease(stream_id, owner, now_ms, TTL_MS, steal=steal)
        if kind == "append":
            results = await store.append_batch(inputs)
            return [None if r is None else (type(r), str(r)) for r in results]
        if kind == "renew":
            return sorted(await store.renew_leases(operation[1], inputs, now_ms, TTL_MS))
        if kind == "release":
            return await store.release_leases(operation[1], inputs)
        if kind == "delete_outbox":
            return await store.delete_outbox(operation[1])
        assert kind == "delete_timer", kind
        return await store.delete_timer(*operation[1:])
    except Exception as error:
        return (type(error), str(error))


async def state(store: Any) -> dict[str, Any]:
    return {
        "streams": await store.list_streams(),
        "events": [await store.read_events(s) for s in STREAM_IDS],
        "pages": [await store.read_events(s, after_seq=1, limit=2) for s in STREAM_IDS],
        "snapshots": [await store.read_snapshot(s) for s in STREAM_IDS],
        "dedupe": [await store.read_dedupe(s, 100) for s in STREAM_IDS],
        "dedupe_newest": [await store.read_dedupe(s, 2) for s in STREAM_IDS],
        "leases": [await store.read_lease_history(s) for s in STREAM_IDS],
        "outbox": await store.read_outbox(100),
        "timers": await store.read_due_timers(NOW_MS * 2, 100),
        "next_timer": await store.next_timer_due_ms(),
        "instances": await store.list_instances(),
        "busy": await store.list_instances(status="busy", limit=1),
        "after": await store.list_instances(after=("acct", "a")),
        "order": await store.read_instance("order", "c"),
    }


async def run_both(script: list[tuple[Any, ...]]) -> None:
    reference = MemoryStore()
    factory = RecordingFactory(InlineRunner)
    sqlite = SqliteStore(":memory:", runner_factory=factory)
    await reference.open()
    await sqlite.open()
    now_ms = NOW_MS
    # Every stream starts leased, so appends can commit from the first operation on.
    leases = [("acquire", stream_id, "node-1", False) for stream_id in STREAM_IDS]
    for operation in [*leases, *script]:
        if operation[0] == "wait":
            now_ms += operation[1]
            continue
        inputs: Any = None
        if operation[0] == "append":
            inputs = [await build_request(reference, spec, now_ms) for spec in operation[1]]
        elif operation[0] in ("renew", "release"):
            inputs = await build_leases(reference, operation[2])
        expected = await apply(reference, operation, inputs, now_ms)
        actual = await apply(sqlite, operation, inputs, now_ms)
        assert expected == actual, operation
    assert await state(reference) == await state(sqlite)
    # Each stream's records hold one range of ordinals that ends right before dedupe_next.
    [connection] = factory.runners
    ranges = await connection.run(
        lambda conn: conn.execute(
            """SELECT streams.stream_id, dedupe_next, count(ordinal), min(ordinal), max(ordinal)
            FROM streams LEFT JOIN dedupe ON dedupe.stream_id = streams.stream_id
            GROUP BY streams.stream_id"""
        ).fetchall()
    )
    for stream_id, next_ordinal, count, first, last in ranges:
        if count:
            assert (first, last) == (next_ordinal - count, next_ordinal - 1), stream_id
    await sqlite.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=st.lists(operations, min_size=10, max_size=40))
def test_sqlite_behaves_like_the_reference_store(script: list[tuple[Any, ...]]) -> None:
    """Method: replay random operations (stale epochs, wrong heads, forgotten message ids
    recorded again, shrinking windows, re-set timers) on both stores; compare every result and
    the end state, and check that each stream's dedupe ordinals form one range."""
    asyncio.run(run_both(script))
