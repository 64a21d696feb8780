"""Journal: group commit of many actors' appends, and of their lease grants, over one Store.

Appends that arrive while commits are in flight wait and go into the next transaction together,
so throughput grows with concurrency while each actor still waits for its own commit before it
replies (durable before acknowledged). Each request keeps its own fencing and sequence check in
the store, so one actor's conflict never fails another's events.

Up to ``commits_in_flight_max`` transactions run at once, over disjoint sets of streams. With
two, actors fall into cohorts: while one cohort's transaction commits, the event loop handles
the next messages of the actors whose commit just finished, instead of waiting in lock-step.

Lease grants take the same road: every actor that activates needs one write transaction for its
lease before it can hydrate, and with many actors activating at once (a burst of new workflows)
a transaction each would queue them behind one another's commits. ``acquire_lease`` requests that
arrive together share one ``Store.acquire_leases`` transaction instead, each decided on its own;
``release_lease`` calls (actors passivating, a node draining) share ``Store.release_leases`` ones.
Lease batches and append batches take turns for the transaction slots.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Final, final

import attrs
from opentelemetry.context import Context
from opentelemetry.trace import Tracer

from mainspring.crashpoints import crash_point
from mainspring.errors import Fenced, LeaseHeld, NodeClosed, StoreUnavailable, UsageError
from mainspring.persistence.store import (
    AppendRequest,
    Lease,
    LeaseOutcome,
    LeaseRequest,
    Store,
)
from mainspring.seams import Clock

__all__ = ["Completion", "Journal", "JournalStatistics"]

log: Final = logging.getLogger(__name__)


@attrs.define
class JournalStatistics:
    """Counters of a journal since it started."""

    commits: int = 0
    requests: int = 0
    events: int = 0
    rejected: int = 0
    fenced: int = 0
    """Of ``rejected``: a newer epoch owns the stream."""
    conflicts: int = 0
    """Of ``rejected``: the stream head moved (not a fencing)."""
    failed_batches: int = 0
    batch_requests_max_seen: int = 0
    commit_seconds_total: float = 0.0
    lease_batches: int = 0
    """Transactions of lease grants (``acquire_leases`` calls), failed ones included."""
    lease_requests: int = 0
    leases_refused: int = 0
    """Of ``lease_requests``: refused because another owner held the lease."""
    lease_batch_requests_max_seen: int = 0
    release_batches: int = 0
    """Transactions of lease releases, failed ones included."""
    releases: int = 0


Completion = Callable[[BaseException | None], None]
"""Told a request's outcome once its batch is decided: None when it committed, else the error
that rejected it (``Fenced``, ``ConcurrencyConflict``) or failed its batch
(``StoreUnavailable``)."""

_Pending = tuple[AppendRequest, Completion]
"""A request waiting for its commit, and what to tell when it is decided. A plain tuple: one is
made per append, and a class instance would cost several times as much."""

_PendingLease = tuple[LeaseRequest, "asyncio.Future[LeaseOutcome]"]
"""A lease request waiting for its transaction, and the future its caller waits on."""

_PendingRelease = tuple[str, str, int, "asyncio.Future[None] | None"]
"""A lease to release: owner, stream id, epoch, and the future its caller waits on (None for a
release nobody waits for)."""


def _resolve(done: asyncio.Future[None], failure: BaseException | None) -> None:
    """The completion of an ``append``: settle the future its caller waits on."""
    if done.done():  # the caller was cancelled; the outcome stands regardless
        return
    if failure is None:
        done.set_result(None)
    else:
        done.set_exception(failure)


@final
class Journal:
    """Batches appends into store transactions; one committer task per journal.

    Args:
        store: the store to commit to.
        clock: for commit latency statistics only.
        batch_requests_max: the most append requests in one transaction.
        commits_in_flight_max: the most transactions in flight at once (over disjoint streams).
        pending_requests_max: the most requests waiting for a commit; ``append`` beyond it waits,
            which pushes back on the mailboxes instead of growing memory.
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        batch_requests_max: int = 1000,
        commits_in_flight_max: int = 2,
        pending_requests_max: int = 100_000,
    ) -> None:
        if batch_requests_max < 1:
            raise UsageError(f"batch_requests_max must be >= 1, got {batch_requests_max}")
        if commits_in_flight_max < 1:
            raise UsageError(f"commits_in_flight_max must be >= 1, got {commits_in_flight_max}")
        if pending_requests_max < batch_requests_max:
            raise UsageError(
                f"pending_requests_max ({pending_requests_max}) must be >= batch_requests_max "
                f"({batch_requests_max})"
            )
        self._store = store
        self._clock = clock
        self._batch_requests_max = batch_requests_max
        self._commits_in_flight_max = commits_in_flight_max
        self._commits: set[asyncio.Task[None]] = set()
        self._streams_in_flight: set[str] = set()
        self._pending: deque[_Pending] = deque()
        self._leases_pending: deque[_PendingLease] = deque()
        self._releases_pending: deque[_PendingRelease] = deque()
        self._leases_turn = True
        """Whether a lease batch goes before an append batch when both wait for a slot."""
        # The room left for pending requests, and the appenders waiting for room (a semaphore
        # in effect; asyncio.Semaphore's acquire costs a generator scan per call).
        self._room = pending_requests_max
        self._room_waiters: deque[asyncio.Future[None]] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.statistics: Final = JournalStatistics()
        self.tracer: Tracer | None = None
        """Makes a span per commit when set (by the node, when it traces)."""
        self.on_commit: Callable[[float, int], None] | None = None
        """Called after each successful commit with its latency (s) and its request count."""

    async def start(self) -> None:
        """Start the committer task."""
        assert self._task is None, "journal started twice"
        self._task = asyncio.create_task(self._run(), name="mainspring-journal")

    async def close(self) -> None:
        """Commit everything already appended, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None
        assert not self._pending, "journal closed with pending appends"
        assert not self._leases_pending, "journal closed with pending lease requests"
        assert not self._releases_pending, "journal closed with pending lease releases"
        assert not self._commits, "journal closed with commits in flight"
        assert not self._streams_in_flight

    async def append(self, request: AppendRequest) -> None:
        """Append ``request`` in the next group commit and wait until it is durable.

        Raises:
            Fenced: the request's epoch is stale; the actor must deactivate.
            ConcurrencyConflict: the stream head moved; the actor must re-hydrate.
            StoreUnavailable: the batch failed (``ambiguous`` when it may have committed).
            NodeClosed: the journal is closing.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self.submit(request, functools.partial(_resolve, done))
        await done

    async def submit(self, request: AppendRequest, completion: Completion) -> None:
        """Queue ``request`` for the next group commit without waiting for it: ``completion``
        is called with its outcome (see ``Completion``) from the journal's commit task, after
        the transaction is decided. It must not block; an exception it raises is logged.

        This waits only while ``pending_requests_max`` requests are already pending.

        Raises:
            NodeClosed: the journal is closing (``completion`` is not called).
        """
        if self._closing:
            raise NodeClosed("the journal is closing and accepts no more appends")
        if self._room <= 0 or self._room_waiters:
            await self._wait_for_room()  # returns holding a place
        else:
            self._room -= 1
        self._pending.append((request, completion))
        self._wakeup.set()

    def submit_now(self, request: AppendRequest, completion: Completion) -> None:
        """``submit`` for a caller that found ``has_room()``: queues ``request`` without a
        coroutine, which is all ``submit`` would have done."""
        assert self.has_room(), "submit_now without room; await submit() instead"
        self._room -= 1
        self._pending.append((request, completion))
        self._wakeup.set()

    def has_room(self) -> bool:
        """Whether ``submit`` would queue a request now without waiting (the journal is open,
        below ``pending_requests_max`` and nobody waits for a place)."""
        return self._room > 0 and not self._room_waiters and not self._closing

    async def acquire_lease(self, request: LeaseRequest) -> Lease:
        """Take a lease in the next lease transaction (see ``Store.acquire_leases``), together
        with the other lease requests waiting for one.

        Raises:
            LeaseHeld: another owner holds an unexpired lease and ``request.steal`` is false.
            StoreUnavailable: the batch failed (``ambiguous`` when it may have committed).
            NodeClosed: the journal is closing.
        """
        if self._closing:
            raise NodeClosed("the journal is closing and grants no more leases")
        done: asyncio.Future[LeaseOutcome] = asyncio.get_running_loop().create_future()
        self._leases_pending.append((request, done))
        self._wakeup.set()
        outcome = await done
        if isinstance(outcome, LeaseHeld):
            raise outcome
        return outcome

    async def release_lease(self, owner: str, stream_id: str, epoch: int) -> None:
        """Give up ``owner``'s lease of ``stream_id`` at ``epoch`` in the next release
        transaction (see ``Store.release_leases``), with the other releases waiting for one.

        Raises:
            StoreUnavailable: the batch failed; the lease then simply expires.
            NodeClosed: the journal is closing.
        """
        if self._closing:
            raise NodeClosed("the journal is closing and releases no more leases")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._releases_pending.append((owner, stream_id, epoch, done))
        self._wakeup.set()
        await done

    def _give_back_room(self, count: int = 1) -> None:
        self._room += count
        if self._room_waiters:
            self._wake_room_waiter()

    async def _wait_for_room(self) -> None:
        """Wait, in arrival order, until a place for a pending request is given to us."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._room_waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                # Given a place, then cancelled before taking it: pass the place on.
                self._give_back_room()
            elif waiter in self._room_waiters:
                self._room_waiters.remove(waiter)
            raise
        if self._closing:  # it began while this one waited: the committer may be gone
            self._give_back_room()
            raise NodeClosed("the journal is closing and accepts no more appends")

    def _wake_room_waiter(self) -> None:
        """Give the free places to the oldest waiters still waiting."""
        while self._room > 0 and self._room_waiters:
            waiter = self._room_waiters.popleft()
            if not waiter.done():
                self._room -= 1
                waiter.set_result(None)

    def _take_batch(self) -> list[_Pending]:
        """Up to ``batch_requests_max`` pending requests with distinct streams, none of them in
        a transaction already in flight, in order."""
        batch: list[_Pending] = []
        streams = self._streams_in_flight
        held_back: list[_Pending] = []
        while self._pending and len(batch) < self._batch_requests_max:
            pending = self._pending.popleft()
            stream_id = pending[0].stream_id
            if stream_id in streams:
                # Two appends of one stream never share a transaction: the second one's expected
                # sequence depends on the first one's outcome.
                held_back.append(pending)
                continue
            streams.add(stream_id)
            batch.append(pending)
        self._pending.extendleft(reversed(held_back))
        return batch

    def _take_lease_batch(self) -> list[_PendingLease]:
        """Up to ``batch_requests_max`` waiting lease requests with distinct streams, in order;
        requests whose caller gave up are dropped."""
        batch: list[_PendingLease] = []
        streams: set[str] = set()
        held_back: list[_PendingLease] = []
        while self._leases_pending and len(batch) < self._batch_requests_max:
            pending = self._leases_pending.popleft()
            if pending[1].done():  # cancelled while it waited: nothing to take
                continue
            stream_id = pending[0].stream_id
            if stream_id in streams:
                held_back.append(pending)
                continue
            streams.add(stream_id)
            batch.append(pending)
        self._leases_pending.extendleft(reversed(held_back))
        return batch

    def _next_commit(self) -> Coroutine[None, None, None] | None:
        """The next transaction to start, if anything waits: lease and append batches take
        turns when both wait."""
        for leases_first in (self._leases_turn, not self._leases_turn):
            if leases_first and self._leases_pending:
                leases = self._take_lease_batch()
                if leases:
                    self._leases_turn = False
                    return self._grant_leases(leases)
            if leases_first and self._releases_pending:
                self._leases_turn = False
                releases = [
                    self._releases_pending.popleft()
                    for _ in range(min(len(self._releases_pending), self._batch_requests_max))
                ]
                return self._release_leases(releases)
            if not leases_first and self._pending:
                batch = self._take_batch()
                if batch:
                    self._leases_turn = True
                    return self._commit(batch)
        return None

    async def _run(self) -> None:
        while True:
            if len(self._commits) < self._commits_in_flight_max:
                work = self._next_commit()
                if work is not None:
                    commit = asyncio.create_task(work, name="mainspring-commit")
                    self._commits.add(commit)
                    commit.add_done_callback(self._commit_finished)
                    continue
            if (
                self._closing
                and not self._pending
                and not self._leases_pending
                and not self._releases_pending
                and not self._commits
            ):
                return
            # Woken by a new request or by a finished commit (which frees streams and a slot).
            self._wakeup.clear()
            await self._wakeup.wait()

    def _commit_finished(self, commit: asyncio.Task[None]) -> None:
        self._commits.discard(commit)
        self._wakeup.set()

    async def _commit(self, batch: list[_Pending]) -> None:
        try:
            await self._commit_batch(batch)
        finally:
            streams = self._streams_in_flight
            for request, _ in batch:
                streams.discard(request.stream_id)

    async def _commit_batch(self, batch: list[_Pending]) -> None:
        if self.tracer is None:
            await self._commit_batch_untraced(batch)
            return
        # A trace of its own: the committer task's context is whoever started the journal.
        with self.tracer.start_as_current_span(
            "mainspring.journal.commit", context=Context()
        ) as span:
            span.set_attribute("mainspring.requests", len(batch))
            await self._commit_batch_untraced(batch)

    async def _commit_batch_untraced(self, batch: list[_Pending]) -> None:
        started = self._clock.monotonic_s()
        try:
            results = await self._store.append_batch([request for request, _ in batch])
        except StoreUnavailable as error:
            self.statistics.failed_batches += 1
            self._complete(batch, [error] * len(batch))
            return
        except Exception as error:
            # Anything else is a bug in a store: fail the batch loudly rather than hang callers.
            log.exception("StoreAppendFailed", extra={"requests": len(batch)})
            failure = StoreUnavailable(f"the store failed an append batch: {error!r}")
            self._complete(batch, [failure] * len(batch))
            return
        assert len(results) == len(batch), (len(results), len(batch))
        await crash_point("journal.after_commit")
        statistics = self.statistics
        statistics.commits += 1
        statistics.requests += len(batch)
        statistics.batch_requests_max_seen = max(statistics.batch_requests_max_seen, len(batch))
        elapsed_s = self._clock.monotonic_s() - started
        statistics.commit_seconds_total += elapsed_s
        if self.on_commit is not None:
            self.on_commit(max(elapsed_s, 0.0), len(batch))
        for (request, _), result in zip(batch, results, strict=True):
            if result is None:
                statistics.events += len(request.events)
            else:
                statistics.rejected += 1
                if isinstance(result, Fenced):
                    statistics.fenced += 1
                else:
                    statistics.conflicts += 1
        self._complete(batch, results)

    async def _grant_leases(self, batch: list[_PendingLease]) -> None:
        if self.tracer is None:
            await self._grant_leases_untraced(batch)
            return
        with self.tracer.start_as_current_span(
            "mainspring.journal.leases", context=Context()
        ) as span:
            span.set_attribute("mainspring.requests", len(batch))
            await self._grant_leases_untraced(batch)

    async def _grant_leases_untraced(self, batch: list[_PendingLease]) -> None:
        statistics = self.statistics
        statistics.lease_batches += 1
        statistics.lease_requests += len(batch)
        statistics.lease_batch_requests_max_seen = max(
            statistics.lease_batch_requests_max_seen, len(batch)
        )
        outcomes: Sequence[LeaseOutcome | StoreUnavailable]
        try:
            outcomes = await self._store.acquire_leases([request for request, _ in batch])
        except StoreUnavailable as error:
            outcomes = [error] * len(batch)
        except Exception as error:
            # Anything else is a bug in a store: fail the batch loudly rather than hang callers.
            log.exception("StoreLeaseBatchFailed", extra={"requests": len(batch)})
            outcomes = [StoreUnavailable(f"the store failed a lease batch: {error!r}")] * len(batch)
        assert len(outcomes) == len(batch), (len(outcomes), len(batch))
        for (request, done), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, LeaseHeld):
                statistics.leases_refused += 1
            if done.done():
                # The caller was cancelled: nobody will use this grant, so give it back at once
                # rather than let it block the actor's other nodes until it expires.
                if isinstance(outcome, Lease):
                    self._releases_pending.append(
                        (outcome.owner, outcome.stream_id, outcome.epoch, None)
                    )
                    self._wakeup.set()
                continue
            if isinstance(outcome, StoreUnavailable):
                done.set_exception(outcome)
            else:
                assert outcome.stream_id == request.stream_id, (outcome, request)
                done.set_result(outcome)

    async def _release_leases(self, batch: list[_PendingRelease]) -> None:
        """One ``release_leases`` call per owner in the batch (a node has one owner id)."""
        self.statistics.release_batches += 1
        self.statistics.releases += len(batch)
        by_owner: dict[str, list[tuple[str, int]]] = {}
        for owner, stream_id, epoch, _ in batch:
            by_owner.setdefault(owner, []).append((stream_id, epoch))
        failure: StoreUnavailable | None = None
        try:
            for owner, leases in by_owner.items():
                await self._store.release_leases(owner, leases)
        except StoreUnavailable as error:
            failure = error
        except Exception as error:
            log.exception("StoreReleaseBatchFailed", extra={"requests": len(batch)})
            failure = StoreUnavailable(f"the store failed a lease release batch: {error!r}")
        for *_, done in batch:
            if done is None or done.done():
                continue
            if failure is None:
                done.set_result(None)
            else:
                done.set_exception(failure)

    def _complete(self, batch: list[_Pending], outcomes: Sequence[BaseException | None]) -> None:
        """Free the batch's places and tell every request its outcome, in batch order."""
        self._give_back_room(len(batch))
        for (request, completion), outcome in zip(batch, outcomes, strict=True):
            try:
                completion(outcome)
            except Exception:
                # One appender's bug must not keep the others of the batch waiting.
                log.exception("AppendCompletionFailed", extra={"stream_id": request.stream_id})
