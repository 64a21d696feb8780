"""Journal: group commit batches concurrent appends and keeps each request's outcome its own."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mainspring.errors import (
    ConcurrencyConflict,
    Fenced,
    LeaseHeld,
    NodeClosed,
    StoreUnavailable,
)
from mainspring.persistence.journal import Journal
from mainspring.persistence.memory import MemoryStore
from mainspring.persistence.store import AppendRequest, Lease, LeaseRequest, NewEvent
from mainspring.seams import SystemClock


def one_event(stream_id: str, epoch: int, expected: int) -> AppendRequest:
    return AppendRequest(stream_id, epoch, expected, [NewEvent("t", 1, b"{}")], 0)


async def leased(store: MemoryStore, count: int) -> list[int]:
    return [(await store.acquire_lease(f"s/{n}", "n", 0, 10**12)).epoch for n in range(count)]


async def test_concurrent_appends_share_transactions() -> None:
    store = MemoryStore()
    await store.open()
    epochs = await leased(store, 50)
    journal = Journal(store, SystemClock(), batch_requests_max=20)
    await journal.start()
    await asyncio.gather(*(journal.append(one_event(f"s/{n}", epochs[n], 0)) for n in range(50)))
    await journal.close()
    assert journal.statistics.requests == 50
    assert journal.statistics.commits == 3  # 20 + 20 + 10: batched, and bounded
    assert journal.statistics.batch_requests_max_seen == 20


async def test_one_rejected_request_does_not_fail_its_batch_neighbours() -> None:
    store = MemoryStore()
    await store.open()
    epochs = await leased(store, 3)
    await store.acquire_lease("s/2", "other", 0, 10**12, steal=True)
    journal = Journal(store, SystemClock())
    await journal.start()
    results = await asyncio.gather(
        journal.append(one_event("s/0", epochs[0], 0)),
        journal.append(one_event("s/1", epochs[1], 5)),
        journal.append(one_event("s/2", epochs[2], 0)),
        return_exceptions=True,
    )
    await journal.close()
    assert results[0] is None
    assert isinstance(results[1], ConcurrencyConflict)
    assert isinstance(results[2], Fenced)
    assert journal.statistics.commits == 1


async def test_two_appends_of_one_stream_never_share_a_transaction() -> None:
    store = MemoryStore()
    await store.open()
    [epoch] = await leased(store, 1)
    journal = Journal(store, SystemClock())
    await journal.start()
    await asyncio.gather(
        journal.append(one_event("s/0", epoch, 0)), journal.append(one_event("s/0", epoch, 1))
    )
    await journal.close()
    assert journal.statistics.commits == 2
    assert [e.seq for e in await store.read_events("s/0")] == [1, 2]


class BrokenStore(MemoryStore):  # type: ignore[misc]
    async def append_batch(self, requests: object) -> list[BaseException | None]:
        raise StoreUnavailable("disk on fire", ambiguous=True)


async def test_a_failed_batch_fails_every_caller_with_the_store_error() -> None:
    store = BrokenStore()
    await store.open()
    epochs = await leased(store, 2)
    journal = Journal(store, SystemClock())
    await journal.start()
    results = await asyncio.gather(
        *(journal.append(one_event(f"s/{n}", epochs[n], 0)) for n in range(2)),
        return_exceptions=True,
    )
    await journal.close()
    assert all(isinstance(r, StoreUnavailable) and r.ambiguous for r in results)


async def test_a_closed_journal_refuses_appends() -> None:
    store = MemoryStore()
    await store.open()
    journal = Journal(store, SystemClock())
    await journal.start()
    await journal.close()
    with pytest.raises(NodeClosed):
        await journal.append(one_event("s/0", 1, 0))


class GatedStore(MemoryStore):  # type: ignore[misc]
    """Holds every append batch until the test opens the gate, recording what is in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.in_flight: list[list[str]] = []
        self.in_flight_max = 0

    async def append_batch(self, requests: Any) -> list[BaseException | None]:
        streams = [request.stream_id for request in requests]
        self.in_flight.append(streams)
        self.in_flight_max = max(self.in_flight_max, len(self.in_flight))
        # Paired with the journal's rule: no stream is in two transactions at once.
        flat = [stream for batch in self.in_flight for stream in batch]
        assert len(flat) == len(set(flat)), self.in_flight
        await self.gate.wait()
        self.in_flight.remove(streams)
        return await super().append_batch(requests)


async def test_commits_overlap_up_to_the_bound_over_disjoint_streams() -> None:
    store = GatedStore()
    await store.open()
    epochs = await leased(store, 9)
    journal = Journal(store, SystemClock(), batch_requests_max=3, commits_in_flight_max=2)
    await journal.start()
    appends = [
        asyncio.ensure_future(journal.append(one_event(f"s/{n}", epochs[n], 0))) for n in range(9)
    ]
    for _ in range(20):
        await asyncio.sleep(0)
    assert store.in_flight_max == 2
    assert [len(batch) for batch in store.in_flight] == [3, 3]
    store.gate.set()
    await asyncio.gather(*appends)
    await journal.close()
    assert journal.statistics.commits == 3
    assert store.in_flight_max == 2


async def test_a_stream_waits_for_its_own_commit_in_flight() -> None:
    store = GatedStore()
    await store.open()
    [epoch] = await leased(store, 1)
    journal = Journal(store, SystemClock(), commits_in_flight_max=2)
    await journal.start()
    first = asyncio.ensure_future(journal.append(one_event("s/0", epoch, 0)))
    second = asyncio.ensure_future(journal.append(one_event("s/0", epoch, 1)))
    for _ in range(20):
        await asyncio.sleep(0)
    assert store.in_flight == [["s/0"]]  # the second append is held back, not sent alongside
    store.gate.set()
    await asyncio.gather(first, second)
    await journal.close()
    assert [e.seq for e in await store.read_events("s/0")] == [1, 2]


async def bounded_journal(streams: int) -> tuple[GatedStore, list[int], Journal]:
    """A started journal over a gated store with ``streams`` leased streams, room for two
    pending requests, batches of two and one commit in flight."""
    store = GatedStore()
    await store.open()
    epochs = await leased(store, streams)
    journal = Journal(
        store, SystemClock(), batch_requests_max=2, commits_in_flight_max=1, pending_requests_max=2
    )
    await journal.start()
    return store, epochs, journal


async def test_appends_beyond_the_pending_bound_wait_in_order_for_room() -> None:
    store, epochs, journal = await bounded_journal(5)
    appends = [
        asyncio.ensure_future(journal.append(one_event(f"s/{n}", epochs[n], 0))) for n in range(5)
    ]
    for _ in range(20):
        await asyncio.sleep(0)
    assert store.in_flight == [["s/0", "s/1"]]  # the other three wait for room, not in memory
    appends[3].cancel()  # a waiter that gives up takes no room and keeps no one waiting
    store.gate.set()
    results = await asyncio.gather(*appends, return_exceptions=True)
    await journal.close()
    assert results[:3] == [None, None, None]
    assert results[4] is None
    assert isinstance(results[3], asyncio.CancelledError)
    assert store.in_flight == []
    assert journal.statistics.requests == 4
    assert [n for n in range(5) if await store.read_events(f"s/{n}")] == [0, 1, 2, 4]


async def test_submit_tells_each_request_its_outcome_even_when_a_completion_fails() -> None:
    store = MemoryStore()
    await store.open()
    epochs = await leased(store, 3)
    journal = Journal(store, SystemClock())
    await journal.start()
    told: list[tuple[str, object]] = []

    def completion(stream_id: str) -> Any:
        def tell(failure: BaseException | None) -> None:
            told.append((stream_id, type(failure)))
            if stream_id == "s/0":
                raise RuntimeError("a broken completion")

        return tell

    await journal.submit(one_event("s/0", epochs[0], 0), completion("s/0"))
    await journal.submit(one_event("s/1", epochs[1], 7), completion("s/1"))
    await journal.submit(one_event("s/2", epochs[2], 0), completion("s/2"))
    assert told == []  # nothing is decided before the commit
    await journal.close()
    assert told == [("s/0", type(None)), ("s/1", ConcurrencyConflict), ("s/2", type(None))]
    with pytest.raises(NodeClosed):
        await journal.submit(one_event("s/2", epochs[2], 1), completion("s/2"))


async def test_submit_now_queues_like_submit_while_there_is_room() -> None:
    store, epochs, journal = await bounded_journal(3)
    told: list[tuple[str, object]] = []
    for n in range(2):
        assert journal.has_room()
        journal.submit_now(
            one_event(f"s/{n}", epochs[n], 0),
            lambda failure, n=n: told.append((f"s/{n}", failure)),
        )
    assert not journal.has_room()  # two requests pending fill the bound
    with pytest.raises(AssertionError, match="submit_now without room"):
        journal.submit_now(one_event("s/2", epochs[2], 0), lambda failure: None)
    store.gate.set()
    await journal.close()
    assert told == [("s/0", None), ("s/1", None)]
    assert await store.read_events("s/2") == []
    assert journal.statistics.requests == 2


class CountingStore(MemoryStore):  # type: ignore[misc]
    """Records the size of every lease batch; fails them all while ``failing`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.lease_batches: list[list[str]] = []
        self.failing = False

    async def acquire_leases(self, requests: Any) -> list[Any]:
        self.lease_batches.append([request.stream_id for request in requests])
        if self.failing:
            raise StoreUnavailable("injected: lease batch lost", ambiguous=True)
        return await super().acquire_leases(requests)


async def test_concurrent_lease_requests_share_transactions_and_keep_their_outcomes() -> None:
    store = CountingStore()
    await store.open()
    await store.acquire_lease("s/held", "other", 0, 10**12)
    store.lease_batches.clear()
    journal = Journal(store, SystemClock(), batch_requests_max=20)
    await journal.start()
    names = [f"s/{n}" for n in range(45)] + ["s/held", "s/0"]
    outcomes = await asyncio.gather(
        *(journal.acquire_lease(LeaseRequest(name, "n", 0, 10**12)) for name in names),
        return_exceptions=True,
    )
    await journal.close()
    # 47 requests in batches of at most 20, and the second request of s/0 in a later batch.
    assert [len(batch) for batch in store.lease_batches] == [20, 20, 7]
    assert all(len(batch) == len(set(batch)) for batch in store.lease_batches)
    granted = outcomes[:45]
    assert all(isinstance(lease, Lease) and lease.owner == "n" for lease in granted)
    refused = outcomes[45]
    assert isinstance(refused, LeaseHeld)
    assert refused.owner == "other"
    again = outcomes[46]
    assert isinstance(again, Lease)
    assert again.epoch == 2  # s/0 leased twice, in order
    assert journal.statistics.lease_requests == 47
    assert journal.statistics.leases_refused == 1
    assert journal.statistics.lease_batches == 3


async def test_a_failed_lease_batch_fails_every_caller_and_the_next_batch_works() -> None:
    store = CountingStore()
    await store.open()
    journal = Journal(store, SystemClock())
    await journal.start()
    store.failing = True
    failed = await asyncio.gather(
        *(journal.acquire_lease(LeaseRequest(f"s/{n}", "n", 0, 10**12)) for n in range(3)),
        return_exceptions=True,
    )
    assert all(isinstance(error, StoreUnavailable) and error.ambiguous for error in failed)
    store.failing = False
    lease = await journal.acquire_lease(LeaseRequest("s/0", "n", 0, 10**12))
    await journal.close()
    assert lease.epoch == 1  # the failed batch wrote nothing
    with pytest.raises(NodeClosed):
        await journal.acquire_lease(LeaseRequest("s/1", "n", 0, 10**12))


async def test_a_lease_request_cancelled_before_its_batch_is_never_sent() -> None:
    store = CountingStore()
    await store.open()
    journal = Journal(store, SystemClock())
    await journal.start()
    cancelled = asyncio.ensure_future(journal.acquire_lease(LeaseRequest("s/gone", "n", 0, 1)))
    kept = asyncio.ensure_future(journal.acquire_lease(LeaseRequest("s/kept", "n", 0, 1)))
    await asyncio.sleep(0)  # both queued; the committer has not taken them yet
    cancelled.cancel()
    await kept
    await journal.close()
    assert cancelled.cancelled()
    assert store.lease_batches == [["s/kept"]]
    assert await store.read_head("s/gone") is None


class ReleaseCountingStore(MemoryStore):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.release_calls: list[list[tuple[str, int]]] = []

    async def release_leases(self, owner: str, leases: Any) -> None:
        self.release_calls.append(list(leases))
        await super().release_leases(owner, leases)


async def test_concurrent_lease_releases_share_transactions() -> None:
    store = ReleaseCountingStore()
    await store.open()
    epochs = await leased(store, 30)
    journal = Journal(store, SystemClock(), batch_requests_max=20)
    await journal.start()
    await asyncio.gather(
        *(journal.release_lease("n", f"s/{n}", epochs[n]) for n in range(30)),
        journal.release_lease("n", "s/0", 99),  # another epoch: left alone, no error
    )
    await journal.close()
    assert [len(call) for call in store.release_calls] == [20, 11]
    for n in range(30):
        head = await store.read_head(f"s/{n}")
        assert head is not None
        assert head.owner is None
    assert journal.statistics.releases == 31
    assert journal.statistics.release_batches == 2
