"""The Store contract, run against every implementation (memory, SQLite file, PostgreSQL).

Each test states one rule of ``mainspring.persistence.store``; a store that breaks the rule fails
the test for that store only.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mainspring.errors import ConcurrencyConflict, Fenced, LeaseHeld, StreamExists, UsageError
from mainspring.persistence.memory import MemoryStore
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

TTL_MS = 10_000
NOW_MS = 1_700_000_000_000


def events(count: int, *, start: int = 1, message_id: str | None = None) -> list[NewEvent]:
    return [
        NewEvent("test.happened", 1, b'{"n":%d}' % (start + index), message_id)
        for index in range(count)
    ]


def request(
    stream_id: str, epoch: int, expected_seq: int, count: int = 1, **extra: Any
) -> AppendRequest:
    return AppendRequest(
        stream_id=stream_id,
        epoch=epoch,
        expected_seq=expected_seq,
        events=events(count, start=expected_seq + 1),
        recorded_at_ms=NOW_MS,
        **extra,
    )


async def append_one(store: Any, append: AppendRequest) -> None:
    [result] = await store.append_batch([append])
    if result is not None:
        raise result


# Leases and epochs


async def test_first_lease_creates_the_stream_at_epoch_one(store: Any) -> None:
    lease = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    assert (lease.epoch, lease.head_seq, lease.owner) == (1, 0, "node-1")
    assert lease.expires_at_ms == NOW_MS + TTL_MS
    head = await store.read_head("acct/a")
    assert head is not None
    assert (head.epoch, head.head_seq, head.owner) == (1, 0, "node-1")


async def test_unknown_stream_has_no_head_and_no_events(store: Any) -> None:
    assert await store.read_head("acct/missing") is None
    assert await store.read_events("acct/missing") == []
    assert await store.read_snapshot("acct/missing") is None
    assert await store.read_dedupe("acct/missing", 10) == []
    assert await store.read_lease_history("acct/missing") == []


async def test_every_acquisition_bumps_the_epoch_even_for_the_same_owner(store: Any) -> None:
    first = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    second = await store.acquire_lease("acct/a", "node-1", NOW_MS + 1, TTL_MS)
    assert second.epoch == first.epoch + 1


async def test_an_unexpired_lease_of_another_owner_is_refused(store: Any) -> None:
    await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    with pytest.raises(LeaseHeld) as caught:
        await store.acquire_lease("acct/a", "node-2", NOW_MS + TTL_MS - 1, TTL_MS)
    assert caught.value.owner == "node-1"
    assert caught.value.expires_at_ms == NOW_MS + TTL_MS
    head = await store.read_head("acct/a")
    assert head is not None
    assert (head.epoch, head.owner) == (1, "node-1")


async def test_an_expired_lease_is_taken_over_with_a_new_epoch(store: Any) -> None:
    await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    lease = await store.acquire_lease("acct/a", "node-2", NOW_MS + TTL_MS, TTL_MS)
    assert (lease.epoch, lease.owner) == (2, "node-2")


async def test_steal_takes_an_unexpired_lease(store: Any) -> None:
    await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    lease = await store.acquire_lease("acct/a", "node-2", NOW_MS, TTL_MS, steal=True)
    assert (lease.epoch, lease.owner) == (2, "node-2")


async def test_lease_history_records_every_grant(store: Any) -> None:
    await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    await store.acquire_lease("acct/a", "node-2", NOW_MS + TTL_MS, TTL_MS)
    history = await store.read_lease_history("acct/a")
    assert [(r.epoch, r.owner, r.acquired_at_ms) for r in history] == [
        (1, "node-1", NOW_MS),
        (2, "node-2", NOW_MS + TTL_MS),
    ]


async def test_a_lease_batch_decides_each_request_on_its_own(store: Any) -> None:
    await store.acquire_lease("acct/held", "node-2", NOW_MS, TTL_MS)
    await store.acquire_lease("acct/expired", "node-2", NOW_MS - TTL_MS, TTL_MS)
    await store.acquire_lease("acct/stolen", "node-2", NOW_MS, TTL_MS)
    await store.acquire_lease("acct/mine", "node-1", NOW_MS, TTL_MS)
    await append_one(store, request("acct/mine", 1, 0, 3))
    outcomes = await store.acquire_leases(
        [
            LeaseRequest("acct/new", "node-1", NOW_MS, TTL_MS),
            LeaseRequest("acct/held", "node-1", NOW_MS, TTL_MS),
            LeaseRequest("acct/expired", "node-1", NOW_MS, TTL_MS),
            LeaseRequest("acct/stolen", "node-1", NOW_MS, TTL_MS, steal=True),
            LeaseRequest("acct/mine", "node-1", NOW_MS + 1, 5),
        ]
    )
    new, held, expired, stolen, mine = outcomes
    assert new == Lease("acct/new", "node-1", 1, 0, NOW_MS + TTL_MS)
    assert isinstance(held, LeaseHeld)
    assert (held.stream_id, held.owner, held.expires_at_ms) == (
        "acct/held",
        "node-2",
        NOW_MS + TTL_MS,
    )
    assert expired == Lease("acct/expired", "node-1", 2, 0, NOW_MS + TTL_MS)
    assert stolen == Lease("acct/stolen", "node-1", 2, 0, NOW_MS + TTL_MS)
    assert mine == Lease("acct/mine", "node-1", 2, 3, NOW_MS + 1 + 5)
    # The refused request wrote nothing; each grant is in the history.
    refused = await store.read_head("acct/held")
    assert refused is not None
    assert (refused.epoch, refused.owner) == (1, "node-2")
    assert [r.epoch for r in await store.read_lease_history("acct/held")] == [1]
    for stream_id, epochs in (("acct/new", [1]), ("acct/stolen", [1, 2]), ("acct/mine", [1, 2])):
        assert [r.epoch for r in await store.read_lease_history(stream_id)] == epochs


async def test_a_lease_batch_refuses_a_stream_named_twice_and_writes_nothing(store: Any) -> None:
    with pytest.raises(UsageError, match="names stream 'acct/a' twice"):
        await store.acquire_leases(
            [
                LeaseRequest("acct/a", "node-1", NOW_MS, TTL_MS),
                LeaseRequest("acct/b", "node-1", NOW_MS, TTL_MS),
                LeaseRequest("acct/a", "node-1", NOW_MS, TTL_MS),
            ]
        )
    assert await store.read_head("acct/a") is None
    assert await store.read_head("acct/b") is None
    with pytest.raises(UsageError, match="not a stream id"):
        await store.acquire_leases([LeaseRequest("no-slash", "node-1", NOW_MS, TTL_MS)])
    assert await store.acquire_leases([]) == []


async def test_renew_extends_held_leases_and_reports_lost_ones(store: Any) -> None:
    a = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    b = await store.acquire_lease("acct/b", "node-1", NOW_MS, TTL_MS)
    await store.acquire_lease("acct/b", "node-2", NOW_MS, TTL_MS, steal=True)
    lost = await store.renew_leases(
        "node-1", [("acct/a", a.epoch), ("acct/b", b.epoch), ("acct/none", 1)], NOW_MS + 5, TTL_MS
    )
    assert sorted(lost) == ["acct/b", "acct/none"]
    head = await store.read_head("acct/a")
    assert head is not None
    assert head.lease_expires_at_ms == NOW_MS + 5 + TTL_MS
    other = await store.read_head("acct/b")
    assert other is not None
    assert (other.owner, other.lease_expires_at_ms) == ("node-2", NOW_MS + TTL_MS)


async def test_release_frees_the_lease_only_at_the_held_epoch(store: Any) -> None:
    a = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    b = await store.acquire_lease("acct/b", "node-1", NOW_MS, TTL_MS)
    await store.acquire_lease("acct/b", "node-2", NOW_MS, TTL_MS, steal=True)
    await store.release_leases("node-1", [("acct/a", a.epoch), ("acct/b", b.epoch)])
    # acct/a is free at once for anyone; acct/b still belongs to node-2.
    taken = await store.acquire_lease("acct/a", "node-3", NOW_MS + 1, TTL_MS)
    assert taken.epoch == a.epoch + 1
    with pytest.raises(LeaseHeld):
        await store.acquire_lease("acct/b", "node-3", NOW_MS + 1, TTL_MS)


# Appends, fencing and sequence checks


async def test_append_assigns_gapless_sequence_numbers_and_keeps_the_epoch(store: Any) -> None:
    lease = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    await append_one(store, request("acct/a", lease.epoch, 0, 3))
    await append_one(store, request("acct/a", lease.epoch, 3, 2))
    stored = await store.read_events("acct/a")
    assert [event.seq for event in stored] == [1, 2, 3, 4, 5]
    assert [event.payload for event in stored] == [b'{"n":%d}' % n for n in range(1, 6)]
    assert {event.epoch for event in stored} == {lease.epoch}
    assert {event.stream_id for event in stored} == {"acct/a"}
    assert stored[0].type_name == "test.happened"
    assert stored[0].type_version == 1
    assert stored[0].recorded_at_ms == NOW_MS
    head = await store.read_head("acct/a")
    assert head is not None
    assert head.head_seq == 5


async def test_read_events_pages_after_a_sequence_number(store: Any) -> None:
    lease = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    await append_one(store, request("acct/a", lease.epoch, 0, 10))
    page = await store.read_events("acct/a", after_seq=3, limit=4)
    assert [event.seq for event in page] == [4, 5, 6, 7]
    assert [event.seq for event in await store.read_events("acct/a", after_seq=10)] == []


async def test_message_ids_and_binary_payloads_round_trip(store: Any) -> None:
    lease = await store.acquire_lease("acct/ü 1", "node-1", NOW_MS, TTL_MS)
    payload = bytes(range(256))
    append = AppendRequest(
        stream_id="acct/ü 1",
        epoch=lease.epoch,
        expected_seq=0,
        events=[NewEvent("test.binary", 3, payload, "msg-1")],
        recorded_at_ms=NOW_MS,
    )
    await append_one(store, append)
    [event] = await store.read_events("acct/ü 1")
    assert (event.payload, event.message_id, event.type_version) == (payload, "msg-1", 3)


async def test_wrong_expected_sequence_is_a_conflict_and_writes_nothing(store: Any) -> None:
    lease = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    await append_one(store, request("acct/a", lease.epoch, 0, 2))
    with pytest.raises(ConcurrencyConflict) as caught:
        await append_one(store, request("acct/a", lease.epoch, 1, 1))
    assert (caught.value.expected_seq, caught.value.actual_seq) == (1, 2)
    with pytest.raises(ConcurrencyConflict):
        await append_one(store, request("acct/a", lease.epoch, 5, 1))
    assert [event.seq for event in await store.read_events("acct/a")] == [1, 2]


async def test_append_to_a_stream_never_leased_is_fenced(store: Any) -> None:
    with pytest.raises(Fenced):
        await append_one(store, request("acct/ghost", 1, 0))
    assert await store.read_events("acct/ghost") == []


# Creating a stream with its first append (AppendRequest.claim)


def creating(stream_id: str, owner: str = "node-1", count: int = 1, **extra: Any) -> AppendRequest:
    return request(
        stream_id, 1, 0, count, claim=LeaseRequest(stream_id, owner, NOW_MS, TTL_MS), **extra
    )


async def test_a_claim_creates_the_stream_leased_at_epoch_one_with_its_events(
    store: Any,
) -> None:
    await append_one(store, creating("acct/new", count=2, status="open"))
    head = await store.read_head("acct/new")
    assert head is not None
    assert (head.epoch, head.head_seq, head.owner) == (1, 2, "node-1")
    assert head.lease_expires_at_ms == NOW_MS + TTL_MS
    assert [(e.seq, e.epoch) for e in await store.read_events("acct/new")] == [(1, 1), (2, 1)]
    history = await store.read_lease_history("acct/new")
    assert [(r.epoch, r.owner, r.acquired_at_ms) for r in history] == [(1, "node-1", NOW_MS)]
    instance = await store.read_instance("acct", "new")
    assert instance is not None
    assert instance.status == "open"
    # The lease is an ordinary one: renewed, then taken over after it expires.
    assert await store.renew_leases("node-1", [("acct/new", 1)], NOW_MS + 1, TTL_MS) == []
    with pytest.raises(LeaseHeld):
        await store.acquire_lease("acct/new", "node-2", NOW_MS + 2, TTL_MS)
    later = await store.acquire_lease("acct/new", "node-2", NOW_MS + 1 + TTL_MS, TTL_MS)
    assert (later.epoch, later.head_seq) == (2, 2)
    with pytest.raises(Fenced):
        await append_one(store, request("acct/new", 1, 2))


async def test_a_claim_on_a_stream_that_exists_writes_nothing(store: Any) -> None:
    """Leased without events, or written: either way the stream exists and a claim fails."""
    await store.acquire_lease("acct/leased", "node-2", NOW_MS, TTL_MS)
    await append_one(store, creating("acct/written", owner="node-2", count=3))
    for stream_id, epoch, head_seq in (("acct/leased", 1, 0), ("acct/written", 1, 3)):
        with pytest.raises(StreamExists) as caught:
            await append_one(store, creating(stream_id, dedupe=[DedupeRecord("m", 1, b"1")]))
        assert isinstance(caught.value, ConcurrencyConflict)
        assert (caught.value.current_epoch, caught.value.actual_seq) == (epoch, head_seq)
        head = await store.read_head(stream_id)
        assert head is not None
        assert (head.epoch, head.head_seq, head.owner) == (epoch, head_seq, "node-2")
        assert len(await store.read_lease_history(stream_id)) == 1
        assert await store.read_dedupe(stream_id, 10) == []
    # The same owner, too: a claim never takes over, it only creates.
    with pytest.raises(StreamExists):
        await append_one(store, creating("acct/written", owner="node-2"))


async def test_claims_in_one_batch_are_decided_each_on_its_own(store: Any) -> None:
    await store.acquire_lease("acct/taken", "node-2", NOW_MS, TTL_MS)
    lease = await store.acquire_lease("acct/plain", "node-1", NOW_MS, TTL_MS)
    results = await store.append_batch(
        [
            creating("acct/fresh-1"),
            creating("acct/taken"),
            request("acct/plain", lease.epoch, 0, 2),
            creating("acct/fresh-2", count=2),
        ]
    )
    assert results[0] is None
    assert isinstance(results[1], StreamExists)
    assert results[2:] == [None, None]
    assert [len(await store.read_events(s)) for s in ("acct/fresh-1", "acct/fresh-2")] == [1, 2]
    assert await store.read_events("acct/taken") == []
    assert len(await store.read_events("acct/plain")) == 2


async def test_concurrent_claims_of_one_stream_create_it_once(store_factory: Any) -> None:
    """Two nodes assume the same actor new at once: one creates it, the other is refused."""
    stores = [store_factory(), store_factory()]
    for each in stores:
        await each.open()
    results = await asyncio.gather(
        *(
            each.append_batch([creating("acct/race", owner=f"node-{n}")])
            for n, each in enumerate(stores, start=1)
        )
    )
    outcomes = [result for [result] in results]
    assert sorted(outcome is None for outcome in outcomes) == [False, True]
    refused = next(outcome for outcome in outcomes if outcome is not None)
    assert isinstance(refused, StreamExists)
    winner = "node-1" if outcomes[0] is None else "node-2"
    head = await stores[0].read_head("acct/race")
    assert head is not None
    assert (head.epoch, head.head_seq, head.owner) == (1, 1, winner)
    assert [r.owner for r in await stores[0].read_lease_history("acct/race")] == [winner]


async def test_second_activation_fences_the_first(store: Any) -> None:
    """Two activations on two nodes: the second bumps the epoch, the first's append fails."""
    first = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    await append_one(store, request("acct/a", first.epoch, 0, 1))
    second = await store.acquire_lease("acct/a", "node-2", NOW_MS, TTL_MS, steal=True)
    assert second.head_seq == 1
    with pytest.raises(Fenced) as caught:
        await append_one(store, request("acct/a", first.epoch, 1, 1))
    assert (caught.value.epoch, caught.value.current_epoch) == (first.epoch, second.epoch)
    await append_one(store, request("acct/a", second.epoch, 1, 1))
    assert [(e.seq, e.epoch) for e in await store.read_events("acct/a")] == [
        (1, first.epoch),
        (2, second.epoch),
    ]
    assert await store.renew_leases("node-1", [("acct/a", first.epoch)], NOW_MS, TTL_MS) == [
        "acct/a"
    ]


async def test_stale_epoch_after_lease_expiry_is_fenced(store: Any) -> None:
    first = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    await store.acquire_lease("acct/a", "node-2", NOW_MS + TTL_MS + 1, TTL_MS)
    # node-1 wakes from a long pause, still believing its lease is good: its write must fail.
    with pytest.raises(Fenced):
        await append_one(store, request("acct/a", first.epoch, 0, 1))
    assert await store.read_events("acct/a") == []


async def test_fencing_holds_across_two_store_objects(store_factory: Any) -> None:
    """Two Store objects over the same database behave like two nodes."""
    node_1 = store_factory()
    node_2 = store_factory()
    await node_1.open()
    await node_2.open()
    first = await node_1.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    second = await node_2.acquire_lease("acct/a", "node-2", NOW_MS, TTL_MS, steal=True)
    with pytest.raises(Fenced):
        await append_one(node_1, request("acct/a", first.epoch, 0, 1))
    await append_one(node_2, request("acct/a", second.epoch, 0, 1))
    assert len(await node_1.read_events("acct/a")) == 1


async def test_concurrent_appends_with_the_same_expectation_commit_once(store: Any) -> None:
    lease = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    results = await asyncio.gather(
        *(store.append_batch([request("acct/a", lease.epoch, 0, 2)]) for _ in range(8))
    )
    outcomes = [result for [result] in results]
    assert sum(outcome is None for outcome in outcomes) == 1
    assert all(isinstance(o, ConcurrencyConflict) for o in outcomes if o is not None)
    assert [event.seq for event in await store.read_events("acct/a")] == [1, 2]


async def test_requests_in_a_batch_succeed_or_fail_on_their_own(store: Any) -> None:
    ok_1 = await store.acquire_lease("acct/ok1", "node-1", NOW_MS, TTL_MS)
    conflicting = await store.acquire_lease("acct/conflict", "node-1", NOW_MS, TTL_MS)
    fenced = await store.acquire_lease("acct/fenced", "node-1", NOW_MS, TTL_MS)
    ok_2 = await store.acquire_lease("acct/ok2", "node-1", NOW_MS, TTL_MS)
    await store.acquire_lease("acct/fenced", "node-2", NOW_MS, TTL_MS, steal=True)

    def loaded(stream_id: str, epoch: int, expected: int) -> AppendRequest:
        return request(
            stream_id,
            epoch,
            expected,
            2,
            dedupe=[DedupeRecord(f"{stream_id}-m", expected + 2, b"reply")],
            outbox=[outbox_message(f"{stream_id}-out", stream_id)],
            timers_set=[Timer(stream_id, "t", NOW_MS + 5)],
            snapshot=Snapshot(stream_id, expected + 2, "test.state", 1, b"{}", NOW_MS),
            status="busy",
        )

    results = await store.append_batch(
        [
            loaded("acct/ok1", ok_1.epoch, 0),
            loaded("acct/conflict", conflicting.epoch, 7),
            loaded("acct/fenced", fenced.epoch, 0),
            loaded("acct/ok2", ok_2.epoch, 0),
        ]
    )
    assert results[0] is None
    assert isinstance(results[1], ConcurrencyConflict)
    assert isinstance(results[2], Fenced)
    assert results[3] is None
    for good in ("acct/ok1", "acct/ok2"):
        assert len(await store.read_events(good)) == 2
        assert [r.message_id for r in await store.read_dedupe(good, 10)] == [f"{good}-m"]
        assert await store.read_snapshot(good) is not None
    for bad in ("acct/conflict", "acct/fenced"):
        assert await store.read_events(bad) == []
        assert await store.read_dedupe(bad, 10) == []
        assert await store.read_snapshot(bad) is None
        assert await store.read_instance("acct", bad.split("/")[1]) is None
    outbox_ids = sorted(message.message_id for message in await store.read_outbox(10))
    assert outbox_ids == ["acct/ok1-out", "acct/ok2-out"]
    due = await store.read_due_timers(NOW_MS + 5, 10)
    assert sorted(timer.stream_id for timer in due) == ["acct/ok1", "acct/ok2"]


async def test_a_batch_keeps_every_event_byte_for_byte_in_its_own_stream(store: Any) -> None:
    """Payloads of any bytes (empty, NUL, every byte value) and several type names, spread
    over requests of zero to three events in a batch whose order is not its streams' order."""
    payloads = [b"", b"\x00", bytes(range(256)), b'{"n":"\xc3\xa9"}', b"\xff" * 3000]
    names = ["a.b:c-d_1", "test.happened", "X"]
    leases = {
        stream_id: await store.acquire_lease(stream_id, "node-1", NOW_MS, TTL_MS)
        for stream_id in ("acct/z", "acct/\u00e9t\u00e9", "acct/a", "acct/m")
    }
    written: dict[str, list[tuple[str, int, bytes, str | None]]] = {}
    requests = []
    for number, stream_id in enumerate(leases):
        rows = [
            (names[(number + k) % 3], k + 1, payloads[(number + k) % 5], f"{stream_id}:{k}")
            for k in range(number)  # 0, 1, 2 and 3 events
        ]
        written[stream_id] = rows
        requests.append(
            AppendRequest(
                stream_id=stream_id,
                epoch=leases[stream_id].epoch,
                expected_seq=0,
                events=[NewEvent(*row) for row in rows],
                recorded_at_ms=NOW_MS,
            )
        )
    assert await store.append_batch(requests) == [None] * len(requests)
    for stream_id, rows in written.items():
        stored = await store.read_events(stream_id)
        assert [(e.stream_id, e.seq) for e in stored] == [
            (stream_id, seq) for seq in range(1, len(rows) + 1)
        ]
        assert [(e.type_name, e.type_version, e.payload, e.message_id) for e in stored] == rows


async def test_a_batch_numbers_each_streams_events_from_its_own_head(store: Any) -> None:
    """As many events as requests, but not one each (none, two, one): every event still gets
    its own stream and the sequence number after its request's head."""
    leases = {
        stream_id: await store.acquire_lease(stream_id, "node-1", NOW_MS, TTL_MS)
        for stream_id in ("acct/a", "acct/b", "acct/c")
    }
    await append_one(store, request("acct/a", leases["acct/a"].epoch, 0, 3))
    await append_one(store, request("acct/b", leases["acct/b"].epoch, 0, 1))
    await append_one(store, request("acct/c", leases["acct/c"].epoch, 0, 2))
    batch = [
        request("acct/b", leases["acct/b"].epoch, 1, 2),
        # No events: cancelling a reminder is what it writes.
        request("acct/a", leases["acct/a"].epoch, 3, 0, timers_cancelled=["nothing"]),
        request("acct/c", leases["acct/c"].epoch, 2, 1),
    ]
    assert await store.append_batch(batch) == [None, None, None]
    expected = {"acct/a": [1, 2, 3], "acct/b": [1, 2, 3], "acct/c": [1, 2, 3]}
    for stream_id, seqs in expected.items():
        stored = await store.read_events(stream_id)
        assert [(e.stream_id, e.seq) for e in stored] == [(stream_id, seq) for seq in seqs]
        assert [e.payload for e in stored] == [b'{"n":%d}' % seq for seq in seqs]


async def test_a_batch_may_not_name_a_stream_twice(store: Any) -> None:
    lease = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    with pytest.raises(UsageError):
        await store.append_batch(
            [request("acct/a", lease.epoch, 0), request("acct/a", lease.epoch, 1)]
        )
    assert await store.read_events("acct/a") == []


async def test_an_empty_batch_is_a_no_op(store: Any) -> None:
    assert await store.append_batch([]) == []


async def test_a_request_without_events_still_checks_the_epoch(store: Any) -> None:
    first = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    timer = Timer("acct/a", "wake", NOW_MS + 100)
    await append_one(store, request("acct/a", first.epoch, 0, 0, timers_set=[timer]))
    assert await store.next_timer_due_ms() == NOW_MS + 100
    await store.acquire_lease("acct/a", "node-2", NOW_MS, TTL_MS, steal=True)
    late = Timer("acct/a", "late", NOW_MS + 1)
    with pytest.raises(Fenced):
        await append_one(store, request("acct/a", first.epoch, 0, 0, timers_set=[late]))
    assert [t.name for t in await store.read_due_timers(NOW_MS + 1000, 10)] == ["wake"]


# Dedupe records


async def test_dedupe_records_are_kept_newest_first_within_the_window(store: Any) -> None:
    lease = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    for n in range(5):
        record = DedupeRecord(f"m{n}", n + 1, b'{"d":%d}' % n)
        await append_one(
            store, request("acct/a", lease.epoch, n, 1, dedupe=[record], dedupe_window=3)
        )
    kept = await store.read_dedupe("acct/a", 10)
    assert [(r.message_id, r.seq, r.reply) for r in kept] == [
        ("m2", 3, b'{"d":2}'),
        ("m3", 4, b'{"d":3}'),
        ("m4", 5, b'{"d":4}'),
    ]
    assert [r.message_id for r in await store.read_dedupe("acct/a", 2)] == ["m3", "m4"]


# Outbox


def outbox_message(message_id: str, source: str, created_at_ms: int = NOW_MS) -> OutboxMessage:
    return OutboxMessage(
        message_id=message_id,
        source_stream_id=source,
        target_type="acct",
        target_id="target",
        type_name="test.msg",
        type_version=1,
        payload=b'{"x":1}',
        created_at_ms=created_at_ms,
    )


async def test_outbox_rows_commit_with_the_events_and_are_read_oldest_first(store: Any) -> None:
    lease = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    for n in range(3):
        message = outbox_message(f"out-{n}", "acct/a", NOW_MS + n)
        await append_one(store, request("acct/a", lease.epoch, n, 1, outbox=[message]))
    pending = await store.read_outbox(10)
    assert [message.message_id for message in pending] == ["out-0", "out-1", "out-2"]
    assert pending[0] == outbox_message("out-0", "acct/a", NOW_MS)
    assert [m.message_id for m in await store.read_outbox(2)] == ["out-0", "out-1"]
    await store.delete_outbox(["out-0", "out-2", "never-existed"])
    assert [m.message_id for m in await store.read_outbox(10)] == ["out-1"]


async def test_fenced_append_leaves_no_outbox_row(store: Any) -> None:
    first = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    await store.acquire_lease("acct/a", "node-2", NOW_MS, TTL_MS, steal=True)
    with pytest.raises(Fenced):
        await append_one(
            store, request("acct/a", first.epoch, 0, 1, outbox=[outbox_message("o", "acct/a")])
        )
    assert await store.read_outbox(10) == []


# Timers


async def test_timers_are_set_replaced_cancelled_and_read_when_due(store: Any) -> None:
    lease = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    assert await store.next_timer_due_ms() is None
    await append_one(
        store,
        request(
            "acct/a",
            lease.epoch,
            0,
            1,
            timers_set=[
                Timer("acct/a", "late", NOW_MS + 300, b"late"),
                Timer("acct/a", "early", NOW_MS + 100, None),
                Timer("acct/a", "gone", NOW_MS + 50),
            ],
        ),
    )
    await append_one(
        store,
        request(
            "acct/a",
            lease.epoch,
            1,
            1,
            timers_set=[Timer("acct/a", "early", NOW_MS + 200, b"moved")],
            timers_cancelled=["gone"],
        ),
    )
    assert await store.next_timer_due_ms() == NOW_MS + 200
    assert await store.read_due_timers(NOW_MS + 199, 10) == []
    due = await store.read_due_timers(NOW_MS + 1_000, 10)
    assert [(t.name, t.due_at_ms, t.payload) for t in due] == [
        ("early", NOW_MS + 200, b"moved"),
        ("late", NOW_MS + 300, b"late"),
    ]
    assert [t.name for t in await store.read_due_timers(NOW_MS + 1_000, 1)] == ["early"]


async def test_delete_timer_only_removes_the_occurrence_that_fired(store: Any) -> None:
    lease = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    await append_one(
        store, request("acct/a", lease.epoch, 0, 1, timers_set=[Timer("acct/a", "t", NOW_MS)])
    )
    await append_one(
        store,
        request("acct/a", lease.epoch, 1, 1, timers_set=[Timer("acct/a", "t", NOW_MS + 60_000)]),
    )
    # The firing of the old occurrence must not delete the re-set timer.
    assert await store.delete_timer("acct/a", "t", NOW_MS) is False
    assert await store.next_timer_due_ms() == NOW_MS + 60_000
    assert await store.delete_timer("acct/a", "t", NOW_MS + 60_000) is True
    assert await store.next_timer_due_ms() is None


# Snapshots


async def test_the_newest_snapshot_wins(store: Any) -> None:
    lease = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    snap_2 = Snapshot("acct/a", 2, "test.state", 1, b'{"at":2}', NOW_MS)
    await append_one(store, request("acct/a", lease.epoch, 0, 2, snapshot=snap_2))
    snap_4 = Snapshot("acct/a", 4, "test.state", 2, b'{"at":4}', NOW_MS + 1)
    await append_one(store, request("acct/a", lease.epoch, 2, 2, snapshot=snap_4))
    assert await store.read_snapshot("acct/a") == snap_4
    # An older snapshot never replaces a newer one.
    stale = Snapshot("acct/a", 4, "test.state", 1, b'{"at":3}', NOW_MS)
    assert stale.seq == snap_4.seq
    reencoded = Snapshot("acct/a", 4, "test.state", 3, b'{"v3":4}', NOW_MS + 2)
    await append_one(store, request("acct/a", lease.epoch, 4, 0, snapshot=reencoded))
    assert await store.read_snapshot("acct/a") == reencoded  # same seq, newer encoding wins


# Instance index


async def test_instance_index_tracks_status_and_times(store: Any) -> None:
    lease = await store.acquire_lease("order/o1", "node-1", NOW_MS, TTL_MS)
    await append_one(store, request("order/o1", lease.epoch, 0, 1))
    info = await store.read_instance("order", "o1")
    assert info is not None
    assert (info.status, info.created_at_ms, info.updated_at_ms) == ("active", NOW_MS, NOW_MS)
    later = AppendRequest(
        stream_id="order/o1",
        epoch=lease.epoch,
        expected_seq=1,
        events=events(1),
        recorded_at_ms=NOW_MS + 9,
        status="completed",
    )
    await append_one(store, later)
    info = await store.read_instance("order", "o1")
    assert info is not None
    assert (info.status, info.created_at_ms, info.updated_at_ms) == (
        "completed",
        NOW_MS,
        NOW_MS + 9,
    )
    assert await store.read_instance("order", "nope") is None


async def test_list_instances_filters_and_pages(store: Any) -> None:
    for actor_type, actor_id, status in [
        ("order", "b", "running"),
        ("order", "a", "completed"),
        ("order", "c", "running"),
        ("acct", "z", "active"),
    ]:
        stream_id = f"{actor_type}/{actor_id}"
        lease = await store.acquire_lease(stream_id, "node-1", NOW_MS, TTL_MS)
        await append_one(store, request(stream_id, lease.epoch, 0, 1, status=status))
    everything = await store.list_instances()
    assert [(i.actor_type, i.actor_id) for i in everything] == [
        ("acct", "z"),
        ("order", "a"),
        ("order", "b"),
        ("order", "c"),
    ]
    running = await store.list_instances(actor_type="order", status="running")
    assert [i.actor_id for i in running] == ["b", "c"]
    first_page = await store.list_instances(actor_type="order", limit=2)
    assert [i.actor_id for i in first_page] == ["a", "b"]
    second_page = await store.list_instances(actor_type="order", limit=2, after=("order", "b"))
    assert [i.actor_id for i in second_page] == ["c"]


async def test_list_streams_reports_every_head(store: Any) -> None:
    a = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    await store.acquire_lease("acct/b", "node-1", NOW_MS, TTL_MS)
    await append_one(store, request("acct/a", a.epoch, 0, 3))
    heads = await store.list_streams()
    assert [(h.stream_id, h.head_seq, h.epoch) for h in heads] == [
        ("acct/a", 3, 1),
        ("acct/b", 0, 1),
    ]


# Lifecycle


async def test_data_survives_close_and_reopen(store_factory: Any) -> None:
    store = store_factory()
    await store.open()
    await store.open()  # idempotent
    lease = await store.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    await append_one(store, request("acct/a", lease.epoch, 0, 2))
    await store.close()
    await store.close()  # idempotent
    reopened = store_factory()
    await reopened.open()
    assert [event.seq for event in await reopened.read_events("acct/a")] == [1, 2]
    again = await reopened.acquire_lease("acct/a", "node-1", NOW_MS, TTL_MS)
    assert (again.epoch, again.head_seq) == (lease.epoch + 1, 2)


async def test_using_a_store_before_open_is_a_clear_error(store_factory: Any) -> None:
    store = store_factory()
    if isinstance(store, MemoryStore):
        store = MemoryStore()  # the factory shares one object, which another fixture opened
    with pytest.raises(UsageError, match="open"):
        await store.read_head("acct/a")


# Cluster membership


async def test_a_joining_member_gets_a_clock_generation_then_a_higher_one_per_rejoin(
    store: Any,
) -> None:
    first = await store.join_member("node-1", "http://127.0.0.1:8001", NOW_MS, 0)
    assert (first.incarnation, first.state, first.heartbeat_at_ms) == (NOW_MS, "up", NOW_MS)
    await store.heartbeat_member("node-1", NOW_MS, NOW_MS + 5, "left")
    again = await store.join_member("node-1", "http://127.0.0.1:9001", NOW_MS + 10, NOW_MS)
    assert (again.incarnation, again.state, again.address) == (
        NOW_MS + 10,
        "up",
        "http://127.0.0.1:9001",
    )
    # A clock behind the row's incarnation still takes a higher one.
    behind = await store.join_member("node-1", "http://b", NOW_MS - 60_000, NOW_MS + 10)
    assert behind.incarnation == NOW_MS + 11
    assert await store.list_members() == [behind]


async def test_a_join_from_a_stale_reading_of_the_row_writes_nothing(store: Any) -> None:
    # A first try whose acknowledgement was lost, retried from a fresh reading of the row ...
    first = await store.join_member("node-1", "http://a", NOW_MS, 0)
    retried = await store.join_member("node-1", "http://a", NOW_MS + 10, first.incarnation)
    assert retried.incarnation > first.incarnation
    # ... then the first try again, as a late delivery: it must not supersede the retry.
    assert await store.join_member("node-1", "http://a", NOW_MS, 0) is None
    assert await store.join_member("node-1", "http://a", NOW_MS, first.incarnation) is None
    assert await store.join_member("node-1", "http://a", NOW_MS, 7) is None
    assert await store.list_members() == [retried]
    assert await store.heartbeat_member("node-1", retried.incarnation, NOW_MS + 20)


async def test_a_pruned_row_goes_only_as_it_was_read_and_its_id_rejoins_higher(
    store: Any,
) -> None:
    old = await store.join_member("node-1", "http://a", NOW_MS, 0)
    await store.join_member("node-2", "http://b", NOW_MS, 0)
    # A row that changed since it was read stays.
    assert await store.heartbeat_member("node-1", old.incarnation, NOW_MS + 1_000)
    assert not await store.prune_member("node-1", old.incarnation, NOW_MS)
    assert not await store.prune_member("node-1", old.incarnation + 1, NOW_MS + 1_000)
    assert not await store.prune_member("node-3", 1, NOW_MS)
    assert await store.prune_member("node-1", old.incarnation, NOW_MS + 1_000)
    assert [member.node_id for member in await store.list_members()] == ["node-2"]
    # The old process, were it still running, is not let back in; a new one joins higher.
    assert not await store.heartbeat_member("node-1", old.incarnation, NOW_MS + 2_000)
    again = await store.join_member("node-1", "http://a", NOW_MS + 3_000, 0)
    assert again.incarnation > old.incarnation
    with pytest.raises(UsageError, match="incarnation is an int >= 0"):
        await store.prune_member("node-2", -1, NOW_MS)


async def test_a_join_with_a_malformed_incarnation_is_refused(store: Any) -> None:
    for bad in (-1, True, 1.0, "1", None):
        with pytest.raises(UsageError, match="incarnation is an int >= 0"):
            await store.join_member("node-1", "http://a", NOW_MS, bad)
    assert await store.list_members() == []


async def test_concurrent_joins_from_one_reading_let_exactly_one_win(
    store_factory: Any,
) -> None:
    stores = [store_factory() for _ in range(3)]
    for one in stores:
        await one.open()
    joined = await asyncio.gather(
        *(one.join_member("node-1", f"http://n{i}", NOW_MS, 0) for i, one in enumerate(stores))
    )
    [winner] = [member for member in joined if member is not None]
    assert winner.incarnation == NOW_MS
    assert await stores[0].list_members() == [winner]


async def test_a_heartbeat_of_an_old_incarnation_changes_nothing(store: Any) -> None:
    old = await store.join_member("node-1", "http://a", NOW_MS, 0)
    newer = await store.join_member("node-1", "http://b", NOW_MS + 1, old.incarnation)
    assert not await store.heartbeat_member("node-1", old.incarnation, NOW_MS + 50)
    assert not await store.heartbeat_member("node-1", old.incarnation, NOW_MS + 50, "left")
    assert not await store.heartbeat_member("node-2", old.incarnation, NOW_MS + 50)
    assert await store.list_members() == [newer]


async def test_heartbeats_advance_time_and_state_but_never_back(store: Any) -> None:
    await store.join_member("node-2", "http://b", NOW_MS, 0)
    await store.join_member("node-1", "http://a", NOW_MS, 0)
    assert await store.heartbeat_member("node-1", NOW_MS, NOW_MS + 100)
    assert await store.heartbeat_member("node-1", NOW_MS, NOW_MS + 50)  # an older clock reading
    [one, two] = await store.list_members()
    # Never back, yet the row changes (a clock that jumped back still shows the node beats).
    assert (one.node_id, one.heartbeat_at_ms, one.state) == ("node-1", NOW_MS + 101, "up")
    assert two.node_id == "node-2"
    assert await store.heartbeat_member("node-1", NOW_MS, NOW_MS + 200, "leaving")
    assert not await store.heartbeat_member("node-1", NOW_MS, NOW_MS + 300, "up")
    assert await store.heartbeat_member("node-1", NOW_MS, NOW_MS + 400, "left")
    assert not await store.heartbeat_member("node-1", NOW_MS, NOW_MS + 500, "leaving")
    [one, _] = await store.list_members()
    assert (one.state, one.heartbeat_at_ms) == ("left", NOW_MS + 400)
    assert await store.heartbeat_member("node-2", NOW_MS, NOW_MS)
    assert await store.heartbeat_member("node-2", NOW_MS, NOW_MS)
    [_, two] = await store.list_members()
    assert two.heartbeat_at_ms == NOW_MS + 2


async def test_a_heartbeat_with_an_unknown_state_is_refused(store: Any) -> None:
    await store.join_member("node-1", "http://a", NOW_MS, 0)
    with pytest.raises(UsageError, match="member state"):
        await store.heartbeat_member("node-1", 1, NOW_MS, "gone")
