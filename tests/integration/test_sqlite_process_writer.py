"""SqliteStore(writer="process"): the writer connection in a child process.

The shared contract runs against it in the conformance suite (``store_factory``'s
``sqlite-process``) and the SIGKILL crash test runs with it too (``test_crash.py``); this file
covers what is particular to the process: where the writer runs, how its errors come back, and
what happens when the process goes away.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import sqlite3
import sys
from pathlib import Path

import attrs
import pytest

from mainspring.errors import (
    LeaseHeld,
    MainspringInternalError,
    StoreUnavailable,
    UsageError,
)
from mainspring.persistence import _sqlite_sql as sql
from mainspring.persistence.sqlite import InlineRunner, ProcessRunner, SqliteStore
from mainspring.persistence.store import (
    AppendRequest,
    DedupeRecord,
    Lease,
    LeaseRequest,
    NewEvent,
    OutboxMessage,
    Snapshot,
    Timer,
)
from tests.support import sqlite_writer_calls as calls
from tests.support.clocks import FixedClock
from tests.support.processes import process_gone

TTL_MS = 10_000
NOW_MS = 1_700_000_000_000


def one_event(stream_id: str, epoch: int, expected_seq: int) -> AppendRequest:
    return AppendRequest(
        stream_id, epoch, expected_seq, [NewEvent("test.happened", 1, b"{}")], NOW_MS
    )


async def wait_gone(pid: int) -> None:
    """Wait until process ``pid`` has exited."""
    for _ in range(500):
        if process_gone(pid):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"process {pid} is still running")


@pytest.fixture
async def store(tmp_path: Path) -> SqliteStore:
    opened = SqliteStore(tmp_path / "store.db", writer="process")
    await opened.open()
    yield opened  # type: ignore[misc]
    await opened.close()


async def test_the_writer_runs_in_another_process_and_reads_stay_here(store: SqliteStore) -> None:
    pid = store.writer_pid
    assert pid is not None
    assert pid != os.getpid()
    assert await store._write("pid", calls.process_id) == pid
    assert await store._read("pid", calls.process_id) == os.getpid()
    # The writer is configured as a thread writer is: WAL, synchronous=FULL, writable.
    assert await store._write("pragmas", calls.pragmas) == ("wal", 2, 0)
    assert await store._write("pragmas", calls.cache_and_checkpoint) == (-64 * 1024, 10_000)


async def test_writes_made_in_the_process_are_read_here(store: SqliteStore) -> None:
    lease = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    assert await store.append_batch([one_event("acct/a", lease.epoch, 0)]) == [None]
    assert [event.seq for event in await store.read_events("acct/a")] == [1]
    # A stale expectation comes back as a rejection, not an exception.
    [rejected] = await store.append_batch([one_event("acct/a", lease.epoch, 0)])
    assert rejected is not None


async def test_an_outcome_that_is_an_error_comes_back_with_its_fields(store: SqliteStore) -> None:
    await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    [held] = await store.acquire_leases([LeaseRequest("acct/a", "node-2", NOW_MS, TTL_MS)])
    assert isinstance(held, LeaseHeld)
    assert (held.stream_id, held.owner, held.expires_at_ms) == ("acct/a", "node-1", NOW_MS + TTL_MS)
    with pytest.raises(LeaseHeld, match="leased by node 'node-1'"):
        await store.acquire_lease("acct/a", "node-2", NOW_MS, TTL_MS)


async def test_a_driver_error_keeps_its_sqlite_code(store: SqliteStore) -> None:
    """The store tells a broken key (a bug) from a bad value by the error's SQLite code, which
    pickle alone would drop on the way back."""
    with pytest.raises(MainspringInternalError, match="broke a key") as caught:
        await store._write("break_a_key", calls.break_a_key)
    cause = caught.value.__cause__
    assert isinstance(cause, sqlite3.IntegrityError)
    assert cause.sqlite_errorcode == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
    assert any("in the SQLite writer process" in note for note in cause.__notes__)
    # The failed transaction left the connection usable.
    assert await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)


async def test_a_wrongly_typed_value_is_a_usage_error(store: SqliteStore) -> None:
    lease = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    bad = AppendRequest(
        "acct/a",
        lease.epoch,
        0,
        [NewEvent("test.happened", 1, {"not": "bytes"})],
        NOW_MS,  # type: ignore[arg-type]
    )
    with pytest.raises(UsageError, match="SQLite refused a value"):
        await store.append_batch([bad])
    assert await store.read_events("acct/a") == []


async def test_an_error_that_does_not_pickle_is_described(store: SqliteStore) -> None:
    with pytest.raises(RuntimeError, match="Unpicklable: holds a lock") as caught:
        await store._write("raise_unpicklable", calls.raise_unpicklable)
    assert "raise_unpicklable" in str(caught.value)  # the child's traceback


async def test_a_function_that_does_not_pickle_is_refused(store: SqliteStore) -> None:
    with pytest.raises(UsageError, match="module-level function"):
        await store._write("lambda", lambda conn: None)
    assert await store._write("pid", calls.process_id) == store.writer_pid


async def test_a_killed_writer_fails_calls_in_flight_as_ambiguous_and_the_next_write_restarts_it(
    store: SqliteStore,
) -> None:
    """Goal: losing the writer process loses nothing acknowledged and stops nothing for good.
    Method: acknowledge a write, kill the child inside a call; that call fails as ambiguous, the
    next write runs in a new child, and the acknowledged write is still there."""
    lease = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    assert await store.append_batch([one_event("acct/a", lease.epoch, 0)]) == [None]
    pid = store.writer_pid
    assert pid is not None
    holding = asyncio.ensure_future(store._write("sleep", calls.sleep, 30.0))
    await asyncio.sleep(0.2)  # the child is inside the call
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(StoreUnavailable, match="may or may not have committed") as in_flight:
        await holding
    assert in_flight.value.ambiguous is True
    assert "exit status -9" in str(in_flight.value)
    assert "next write starts a new writer process" in str(in_flight.value)
    assert store.writer_restarts == 0
    # Two writes at once after the loss: one restart serves both.
    appended, renewed = await asyncio.gather(
        store.append_batch([one_event("acct/a", lease.epoch, 1)]),
        store._write("pid", calls.process_id),
    )
    assert appended == [None]
    assert store.writer_restarts == 1
    assert store.writer_pid == renewed
    assert renewed not in (None, pid)
    assert process_gone(pid)
    assert [event.seq for event in await store.read_events("acct/a")] == [1, 2]


async def test_a_failed_restart_is_retried_after_an_interval_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Goal: a writer process that cannot be started again gives clear, fast failures, then
    recovers. Method: lose the child, make starting Python fail (no such executable), write,
    write again within the interval, then restore the executable and move the clock on."""
    clock = FixedClock(NOW_MS)
    store = SqliteStore(tmp_path / "store.db", writer="process", clock=clock)
    await store.open()
    try:
        pid = store.writer_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        runner = store._require_open().writer
        assert isinstance(runner, ProcessRunner)
        for _ in range(500):  # until the runner has seen its channel close
            if runner.lost is not None:
                break
            await asyncio.sleep(0.02)
        assert runner.lost is not None
        monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
        with pytest.raises(StoreUnavailable, match="could not start the SQLite writer") as first:
            await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
        assert first.value.ambiguous is False
        clock.now_ms += 500
        with pytest.raises(StoreUnavailable, match=r"failed 0\.5s ago.*Nothing was written"):
            await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
        assert store.writer_restarts == 0
        monkeypatch.undo()
        clock.now_ms += 600
        lease = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
        assert lease.epoch == 1  # the failed attempts took no lease
        assert store.writer_restarts == 1
        assert store.writer_pid not in (None, pid)
    finally:
        await store.close()


async def test_a_new_store_after_a_lost_writer_sees_every_acknowledged_write(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    first = SqliteStore(path, writer="process")
    await first.open()
    lease = await first.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    assert await first.append_batch([one_event("acct/a", lease.epoch, 0)]) == [None]
    pid = first.writer_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await wait_gone(pid)
    await first.close()
    again = SqliteStore(path, writer="process")
    await again.open()
    assert again.writer_pid not in (None, pid)
    assert [event.seq for event in await again.read_events("acct/a")] == [1]
    assert await again.append_batch([one_event("acct/a", lease.epoch, 1)]) == [None]
    await again.close()


async def test_the_writer_ignores_interrupts_and_exits_at_close(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.db", writer="process")
    await store.open()
    pid = store.writer_pid
    assert pid is not None
    # A terminal's Ctrl-C or a service manager's SIGTERM must not take the writer away while
    # the node drains: the node decides when the writer stops.
    os.kill(pid, signal.SIGINT)
    os.kill(pid, signal.SIGTERM)
    await asyncio.sleep(0.2)
    assert await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    await store.close()
    await wait_gone(pid)
    assert store.writer_pid is None
    await store.close()  # idempotent


async def test_close_waits_for_the_calls_already_sent(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.db", writer="process")
    await store.open()
    lease = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    appends = [
        asyncio.ensure_future(store.append_batch([one_event("acct/a", lease.epoch, seq)]))
        for seq in range(20)
    ]
    await asyncio.sleep(0)  # every append is sent
    await store.close()
    assert [append.result() for append in appends] == [[None]] * 20
    reopened = SqliteStore(tmp_path / "store.db")
    await reopened.open()
    assert [event.seq for event in await reopened.read_events("acct/a")] == list(range(1, 21))
    await reopened.close()


async def test_a_missing_directory_is_a_clear_store_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "no-such-directory" / "store.db"
    store = SqliteStore(path, writer="process")
    with pytest.raises(StoreUnavailable, match="does not exist: create it"):
        await store.open()


def test_writer_settings_are_checked() -> None:
    with pytest.raises(UsageError, match=r"writer must be one of \['thread', 'process'\]"):
        SqliteStore("x.db", writer="fork")
    with pytest.raises(UsageError, match="':memory:'"):
        SqliteStore(":memory:", writer="process")
    assert SqliteStore("x.db").writer == "process"  # the default for a file on POSIX
    assert SqliteStore("x.db", writer="thread").writer == "thread"
    assert SqliteStore(":memory:").writer == "thread"
    assert SqliteStore("x.db", runner_factory=InlineRunner.open).writer == "thread"
    assert SqliteStore("x.db").writer_pid is None  # not open


async def test_a_closed_runner_refuses_calls(tmp_path: Path) -> None:
    runner = await ProcessRunner.open(str(tmp_path / "store.db"))
    assert await runner.run(calls.process_id) == runner.pid
    await runner.close()
    with pytest.raises(UsageError, match="closed"):
        await runner.run(calls.process_id)


def test_errors_and_schema_refusals_pickle_with_their_fields() -> None:
    held = pickle.loads(pickle.dumps(LeaseHeld("acct/a", "node-1", 5)))
    assert (held.stream_id, held.owner, held.expires_at_ms, str(held)) == (
        "acct/a",
        "node-1",
        5,
        str(LeaseHeld("acct/a", "node-1", 5)),
    )
    unknown = pickle.loads(pickle.dumps(sql.UnknownSchemaVersion([1, 9], 3)))
    assert (unknown.found, unknown.supported) == ([1, 9], 3)


def test_write_records_pickle_as_their_field_values() -> None:
    """Goal: what travels to the writer process arrives equal, and as field values (the fast
    form), not attrs' per-object dict. Method: pickle a request that uses every part."""
    request = AppendRequest(
        "acct/a",
        1,
        0,
        [NewEvent("test.happened", 1, b"{}", "m1")],
        NOW_MS,
        [DedupeRecord("m1", 1, b"reply")],
        100,
        [OutboxMessage("o1", "acct/a", "acct", "b", "test.sent", 1, b"{}", NOW_MS)],
        [Timer("acct/a", "tick", NOW_MS + 5, b"p")],
        ["old"],
        Snapshot("acct/a", 1, "test.state", 2, b"{}", NOW_MS),
        "active",
        LeaseRequest("acct/a", "node-1", NOW_MS, TTL_MS),
    )
    copy = pickle.loads(pickle.dumps(request, pickle.HIGHEST_PROTOCOL))
    assert copy == request
    assert copy.claim == request.claim
    assert request.__reduce__() == (AppendRequest, attrs.astuple(request, recurse=False))
    lease = Lease("acct/a", "node-1", 3, 7, NOW_MS)
    assert pickle.loads(pickle.dumps(lease)) == lease
