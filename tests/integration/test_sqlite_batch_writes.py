"""The SQLite store writes a small batch through one JSON statement per kind of row, and falls
back to one row at a time for a large batch or a value JSON cannot carry unchanged. Every path
must store exactly what the row-by-row path stores and decide every request on its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from mainspring.errors import ConcurrencyConflict, Fenced, StreamExists
from mainspring.persistence import _sqlite_sql as sql
from mainspring.persistence.sqlite import InlineRunner, SqliteStore
from mainspring.persistence.store import AppendRequest, DedupeRecord, LeaseRequest, NewEvent

NOW_MS = 1_700_000_000_000
TTL_MS = 10_000
SIZES = [3, sql.JSON_ROWS_MAX + 5]
"""A batch that takes the JSON statements, and one beyond their bound."""

# Bytes that are not UTF-8, a NUL byte, text with a NUL, quotes, escapes and non-BMP characters.
AWKWARD_PAYLOADS = [b"\xff\xfe\x00raw", b"a\x00b", b'{"q": "\\"\\u0000\\n"}', "🎉 é".encode()]


async def opened(tmp_path: Path) -> SqliteStore:
    store = SqliteStore(tmp_path / "store.db", runner_factory=InlineRunner.open)
    await store.open()
    return store


def claim(stream_id: str, payload: bytes = b"{}", message_id: str | None = None) -> AppendRequest:
    return AppendRequest(
        stream_id,
        1,
        0,
        [NewEvent("t", 1, payload, message_id)],
        NOW_MS,
        dedupe=[DedupeRecord(message_id, 1, payload)] if message_id is not None else (),
        dedupe_window=10 if message_id is not None else 0,
        claim=LeaseRequest(stream_id, "node-1", NOW_MS, TTL_MS),
    )


def follow_up(stream_id: str, epoch: int, expected_seq: int, payload: bytes) -> AppendRequest:
    return AppendRequest(
        stream_id,
        epoch,
        expected_seq,
        [NewEvent("t", 1, payload, f"m{expected_seq}")],
        NOW_MS + 1,
        dedupe=[DedupeRecord(f"m{expected_seq}", expected_seq + 1, payload)],
        dedupe_window=10,
        status="done",
    )


@pytest.mark.parametrize("size", SIZES)
async def test_a_batch_of_new_streams_is_created_and_recorded(tmp_path: Path, size: int) -> None:
    store = await opened(tmp_path)
    streams = [f"acct/{index}" for index in range(size)]
    assert await store.append_batch([claim(stream) for stream in streams]) == [None] * size
    for stream in streams:
        [event] = await store.read_events(stream)
        assert (event.seq, event.epoch, event.payload) == (1, 1, b"{}")
        head = await store.read_head(stream)
        assert head is not None
        assert (head.epoch, head.head_seq, head.owner) == (1, 1, "node-1")
        [record] = await store.read_lease_history(stream)
        assert (record.epoch, record.owner) == (1, "node-1")
    await store.close()


@pytest.mark.parametrize("size", SIZES)
async def test_one_existing_stream_refuses_only_its_own_claim(tmp_path: Path, size: int) -> None:
    store = await opened(tmp_path)
    assert await store.append_batch([claim("acct/taken")]) == [None]
    streams = [f"acct/{index}" for index in range(size)]
    streams.insert(size // 2, "acct/taken")
    results = await store.append_batch([claim(stream) for stream in streams])
    for stream, result in zip(streams, results, strict=True):
        if stream == "acct/taken":
            assert isinstance(result, StreamExists)
            assert len(await store.read_events(stream)) == 1
        else:
            assert result is None, (stream, result)
            assert len(await store.read_events(stream)) == 1
            assert len(await store.read_lease_history(stream)) == 1
    await store.close()


@pytest.mark.parametrize("size", SIZES)
async def test_one_stale_request_fails_alone_and_moves_no_other_head_twice(
    tmp_path: Path, size: int
) -> None:
    store = await opened(tmp_path)
    streams = [f"acct/{index}" for index in range(size)]
    assert await store.append_batch([claim(stream) for stream in streams]) == [None] * size
    requests = [follow_up(stream, 1, 1, b"{}") for stream in streams]
    stale, fenced = size // 2, size - 1
    requests[stale] = follow_up(streams[stale], 1, 0, b"{}")  # expects a head it moved past
    requests[fenced] = follow_up(streams[fenced], 2, 1, b"{}")  # an epoch that never was
    results = await store.append_batch(requests)
    for index, (stream, result) in enumerate(zip(streams, results, strict=True)):
        head = await store.read_head(stream)
        assert head is not None
        if index == stale:
            assert isinstance(result, ConcurrencyConflict)
            assert not isinstance(result, Fenced)
            assert head.head_seq == 1
        elif index == fenced:
            assert isinstance(result, Fenced)
            assert head.head_seq == 1
        else:
            assert result is None, (stream, result)
            assert head.head_seq == 2
            assert [event.seq for event in await store.read_events(stream)] == [1, 2]
    await store.close()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("payload", AWKWARD_PAYLOADS, ids=repr)
async def test_awkward_bytes_and_text_are_stored_exactly(
    tmp_path: Path, size: int, payload: bytes
) -> None:
    store = await opened(tmp_path)
    streams = [f"acct/{index}" for index in range(size)]
    # One awkward value in the batch: the rest are plain JSON text.
    first = [claim(stream, b"{}", "start") for stream in streams]
    first[0] = claim(streams[0], payload, "start\x00nul")
    assert await store.append_batch(first) == [None] * size
    second = [follow_up(stream, 1, 1, payload) for stream in streams]
    assert await store.append_batch(second) == [None] * size
    events = await store.read_events(streams[0])
    assert [(event.payload, event.message_id) for event in events] == [
        (payload, "start\x00nul"),
        (payload, "m1"),
    ]
    replies = {
        record.message_id: record.reply for record in await store.read_dedupe(streams[0], 10)
    }
    assert replies == {"start\x00nul": payload, "m1": payload}
    [instance] = [
        info for info in await store.list_instances("acct", limit=size + 1) if info.actor_id == "0"
    ]
    assert (instance.status, instance.updated_at_ms) == ("done", NOW_MS + 1)
    for stream in streams[1:]:
        assert [event.payload for event in await store.read_events(stream)] == [b"{}", payload]
    await store.close()
