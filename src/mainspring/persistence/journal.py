"""Journal: group commit of many actors' appends over one Store.

Appends that arrive while commits are in flight wait and go into the next transaction together,
so throughput grows with concurrency while each actor still waits for its own commit before it
replies (durable before acknowledged). Each request keeps its own fencing and sequence check in
the store, so one actor's conflict never fails another's events.

Up to ``commits_in_flight_max`` transactions run at once, over disjoint sets of streams. With
two, actors fall into cohorts: while one cohort's transaction commits, the event loop handles
the next messages of the actors whose commit just finished, instead of waiting in lock-step.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final, final

import attrs
from opentelemetry.context import Context
from opentelemetry.trace import Tracer

from mainspring.crashpoints import crash_point
from mainspring.errors import Fenced, NodeClosed, StoreUnavailable, UsageError
from mainspring.persistence.store import AppendRequest, Store
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


Completion = Callable[[BaseException | None], None]
"""Told a request's outcome once its batch is decided: None when it committed, else the error
that rejected it (``Fenced``, ``ConcurrencyConflict``) or failed its batch
(``StoreUnavailable``)."""

_Pending = tuple[AppendRequest, Completion]
"""A request waiting for its commit, and what to tell when it is decided. A plain tuple: one is
made per append, and a class instance would cost several times as much."""


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

    async def _run(self) -> None:
        while True:
            if self._pending and len(self._commits) < self._commits_in_flight_max:
                batch = self._take_batch()
                if batch:
                    commit = asyncio.create_task(self._commit(batch), name="mainspring-commit")
                    self._commits.add(commit)
                    commit.add_done_callback(self._commit_finished)
                    continue
            if self._closing and not self._pending and not self._commits:
                return
            # Woken by a new append or by a finished commit (which frees streams and a slot).
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

    def _complete(self, batch: list[_Pending], outcomes: Sequence[BaseException | None]) -> None:
        """Free the batch's places and tell every request its outcome, in batch order."""
        self._give_back_room(len(batch))
        for (request, completion), outcome in zip(batch, outcomes, strict=True):
            try:
                completion(outcome)
            except Exception:
                # One appender's bug must not keep the others of the batch waiting.
                log.exception("AppendCompletionFailed", extra={"stream_id": request.stream_id})
