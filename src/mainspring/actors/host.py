"""The actor host: activation, one mailbox task per live actor, passivation.

Each live actor is an ``Activation`` whose task is the actor's single writer: it takes the lease
(bumping the epoch), hydrates from the latest snapshot plus the events after it, then handles
its mailbox one batch at a time. A batch's events are committed through the journal before any
reply of the batch is sent. A fenced or failed commit drops the activation without releasing
anything; queued messages go to a fresh activation, which re-hydrates from the store.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, final

import attrs
from opentelemetry.context import Context
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    StatusCode,
    Tracer,
    get_current_span,
    set_span_in_context,
)

from mainspring.actors.actor import Actor, ActorContext, creates_actor, fold_events
from mainspring.codec import Registry
from mainspring.config import NodeConfig
from mainspring.crashpoints import crash_point
from mainspring.errors import (
    CodecError,
    ConcurrencyConflict,
    Fenced,
    LeaseHeld,
    NodeClosed,
    Overloaded,
    StoreUnavailable,
    StreamExists,
    UnknownActorType,
    UsageError,
)
from mainspring.persistence.journal import Journal
from mainspring.persistence.store import (
    AppendRequest,
    DedupeRecord,
    LeaseRequest,
    NewEvent,
    OutboxMessage,
    Snapshot,
    Store,
    Timer,
    stream_id_of,
)
from mainspring.seams import Clock, Random, SeededRandom

if TYPE_CHECKING:
    from mainspring.cluster.routing import Router

__all__ = ["Activation", "ActorHost", "HostStatistics"]

log: Final = logging.getLogger(__name__)

_REPLAY_PAGE_EVENTS: Final = 10_000
_LEASE_WRITE_ATTEMPTS: Final = 3
"""Tries of a lease grant or release that the store failed. Both are safe to repeat (a node may
always take back its own lease, and a release at an epoch is idempotent), and a lease write
whose acknowledgement was lost may have committed: trying again turns an orphaned grant, which
would block the actor's other nodes until it expires, into a lease that is used or released."""
_LEASE_WRITE_BACKOFF_S: Final = 0.05


@attrs.define(eq=False)
class _Envelope:
    message: object
    message_id: str | None
    reply: asyncio.Future[Any] | None
    handler: Callable[..., Any]
    """The actor type's handler of ``message``, looked up once when the message is accepted."""
    accepted_s: float = 0.0
    """The host clock's monotonic time when the message was queued (for the mailbox age)."""
    sender: SpanContext | None = None
    """The span the message was sent from (only when the node traces)."""


_PLAIN_REPLIES: Final = frozenset({type(None), bool, int, float, str, bytes})
"""Reply types that are never awaitable: most replies skip ``inspect.isawaitable``."""


@attrs.define
class HostStatistics:
    """Counters of an actor host since it started."""

    activations: int = 0
    passivations: int = 0
    messages: int = 0
    duplicates: int = 0
    handler_errors: int = 0
    fenced: int = 0
    snapshots_written: int = 0
    snapshot_fallbacks: int = 0
    events_replayed: int = 0
    leases_acquired: int = 0
    leases_renewed: int = 0
    leases_lost: int = 0
    claims_refused: int = 0
    """Activations assumed new whose first write found the actor existing (they start over)."""
    claims_abandoned: int = 0
    """Activations assumed new whose first messages wrote nothing (they start over)."""


def _settle(envelope: _Envelope, *, result: Any = None, error: BaseException | None = None) -> None:
    future = envelope.reply
    if future is None:
        if error is not None and not isinstance(error, Fenced | ConcurrencyConflict):
            log.warning(
                "TellFailed",
                extra={"message_type": type(envelope.message).__name__},
                exc_info=error,
            )
        return
    if future.done():  # the asker gave up (cancelled); the outcome stands regardless
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _settle_from(envelope: _Envelope, done: asyncio.Future[Any]) -> None:
    """Settle ``envelope`` with the outcome of ``done`` (a forwarded copy of it)."""
    if done.cancelled():
        _settle(envelope, error=NodeClosed("the forward of this message was cancelled"))
    elif done.exception() is not None:
        _settle(envelope, error=done.exception())
    else:
        _settle(envelope, result=done.result())


@final
class _Wakeup:
    """An activation's wake-up call, and the idle timeout of its waits.

    ``set`` ends the activation's current wait, or the next one at once. A wait is a bare
    future that ends ``True`` when woken and ``False`` when ``timeout_s`` passed first: no
    ``asyncio.Event`` and no coroutine of its own, so a wait costs one future, and an idle
    activation keeps only that future and this object.

    One timer handle serves many waits: it is armed when a wait starts and none is pending,
    and re-armed only when it fires during a later wait than the one it was armed for. A
    timeout scheduled and cancelled around every wait would cost a timer-heap push and a
    cancellation per message of a busy actor.
    """

    __slots__ = (
        "_armed_for",
        "_handle",
        "_is_set",
        "_loop",
        "_timeout_s",
        "_waiter",
        "_waiting_since",
    )

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._is_set = False
        self._waiter: asyncio.Future[bool] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._armed_for: float | None = None
        self._waiting_since: float | None = None

    def set(self) -> None:
        """Wake the waiting activation (or let its next wait end at once)."""
        self._is_set = True
        waiter = self._waiter
        if waiter is not None:
            self._waiter = self._waiting_since = None
            if not waiter.done():
                waiter.set_result(True)

    def clear(self) -> None:
        """Forget an earlier ``set``: the next wait waits."""
        self._is_set = False

    def is_set(self) -> bool:
        """Whether ``set`` was called since the last ``clear``."""
        return self._is_set

    def parked(self) -> bool:
        """Whether a wait is in progress and nothing has ended it yet."""
        return self._waiter is not None

    def restart_timeout(self) -> None:
        """Let the wait in progress, if any, run a full ``timeout_s`` from now: the activation
        did work without waking (``Activation.handle_now``)."""
        if self._waiter is not None:
            assert self._loop is not None
            self._waiting_since = self._loop.time()

    def wait(self) -> asyncio.Future[bool]:
        """A future that ends ``True`` once woken, or ``False`` when ``timeout_s`` passed
        without a wake-up."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        since = loop.time()
        if self._handle is None:
            self._arm(since)
        if self._is_set:
            waiter.set_result(True)
            return waiter
        self._waiter, self._waiting_since = waiter, since
        return waiter

    def cancel(self) -> None:
        """Drop the pending timer handle, if any (the activation is leaving)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self, since: float) -> None:
        assert self._loop is not None
        self._armed_for = since
        self._handle = self._loop.call_at(since + self._timeout_s, self._fire)

    def _fire(self) -> None:
        self._handle = None
        since = self._waiting_since
        if since is None:
            return  # busy: the next wait arms a new handle
        if since == self._armed_for:
            waiter = self._waiter
            self._waiter = self._waiting_since = None
            if waiter is not None and not waiter.done():
                waiter.set_result(False)
        else:
            self._arm(since)  # armed for an earlier wait: this one has time left


@final
class _BatchCommit:
    """The completion of one handled batch's append (see ``Journal.submit``): called by the
    journal once the batch is decided, in its commit task, it moves the activation's state on
    and sends the replies right there, without waking the activation's task.

    One slotted object per commit rather than a closure: a closure over these values would be a
    function and a cell per value, and every object alive while a commit is in flight is one
    more for the garbage collector to walk, many times over, with many actors waiting on one
    commit.
    """

    __slots__ = (
        "activation",
        "callbacks",
        "dedupe",
        "new_seq",
        "outbox_written",
        "outcomes",
        "request",
        "snapshot",
        "status",
        "timers_due_ms",
        "working",
    )

    def __init__(
        self,
        activation: Activation,
        request: AppendRequest,
        working: Any,
        new_seq: int,
        snapshot: Snapshot | None,
        status: str | None,
        dedupe: list[DedupeRecord] | None,
        outcomes: list[tuple[_Envelope, Any, BaseException | None]],
        callbacks: list[Callable[[], None]] | None,
        outbox_written: bool,
        timers_due_ms: int | None,
    ) -> None:
        self.activation = activation
        self.request = request
        self.working = working
        self.new_seq = new_seq
        self.snapshot = snapshot
        self.status = status
        self.dedupe = dedupe
        self.outcomes = outcomes
        self.callbacks = callbacks
        self.outbox_written = outbox_written
        self.timers_due_ms = timers_due_ms

    def __call__(self, failure: BaseException | None) -> None:
        activation = self.activation
        host = activation.host
        outcomes = self.outcomes
        assert activation.committing
        activation.committing = False
        activation.busy = False
        refused = False
        if activation.claiming:
            activation.claiming = False
            if failure is None:
                activation.hydrated = True  # the stream is ours, at epoch 1, as written
                host.statistics.leases_acquired += 1
            elif isinstance(failure, StreamExists):
                # Not new after all, and nothing was written: the messages go to a new
                # activation, which takes the lease and reads the stream.
                host.statistics.claims_refused += 1
                activation.mailbox.extendleft(reversed([envelope for envelope, _, _ in outcomes]))
                refused = True
        try:
            if failure is None:
                activation.apply_commit(self)
                if self.outbox_written:
                    host.on_outbox_written()
                if self.timers_due_ms is not None:
                    host.on_timers_set(self.timers_due_ms)
        except Exception as error:
            log.exception("CommitCompletionFailed", extra={"stream_id": activation.stream_id})
            failure = error
        if failure is not None:
            if isinstance(failure, Fenced | ConcurrencyConflict) and not refused:
                host.statistics.fenced += 1
            for envelope, _, _ in () if refused else outcomes:
                _settle(envelope, error=failure)
            # Our view of the stream is not to be trusted: leave without releasing the
            # lease; queued messages start afresh in a new activation.
            activation.dropped = True
            host.forget(activation)
            host.redeliver(activation)
        activation.commit_decided(failure is None)


@final
class Activation:
    """One live actor: its state, its mailbox and the task that is its single writer."""

    def __init__(
        self, host: ActorHost, actor_cls: type[Actor[Any]], actor_id: str, claim: bool = False
    ) -> None:
        self.host: Final = host
        self.actor_cls: Final = actor_cls
        self.actor: Final = actor_cls()
        self.actor_id: Final = actor_id
        self.stream_id: Final = stream_id_of(actor_cls.type_name, actor_id)
        self.mailbox: Final[deque[_Envelope]] = deque()
        self.wakeup: Final = _Wakeup(host.config.idle_timeout_s)
        self.state: Any = actor_cls.initial_state
        self.seq = 0
        self.epoch = 0
        self.snapshot_seq = 0
        self.status: str | None = None
        self.dedupe: Final[OrderedDict[str, bytes]] = OrderedDict()
        self.passivate_requested = False
        self.busy = False
        self.committing = False
        """A batch is in the journal: its completion applies it and replies (``_BatchCommit``)."""
        self.dropped = False
        """This activation was dropped (the journal rejected or failed a batch, or a batch
        handled at once by ``handle_now`` failed): its loop ends without releasing the lease."""
        self._commit_outcome: asyncio.Future[bool] | None = None
        self.hydrated = False
        self.claiming = claim
        """Assumed new: not hydrated, and the first write creates the stream and takes its
        lease (``AppendRequest.claim``) until that write is decided."""
        self._outbox_counter = 0
        self.task: asyncio.Task[None] | None = None

    def next_outbox_id(self) -> str:
        """A message id no other committed outbox message of this stream has: epochs are unique
        per activation and the counter is unique within one."""
        self._outbox_counter += 1
        return f"{self.stream_id}#{self.epoch}.{self._outbox_counter}"

    # Hydration --------------------------------------------------------------------------------

    async def hydrate(self) -> None:
        """Take the lease; rebuild the state from the latest snapshot plus the events after it."""
        host = self.host
        failures = 0
        while True:
            try:
                lease = await host.journal.acquire_lease(
                    LeaseRequest(
                        self.stream_id,
                        host.node_id,
                        host.clock.wall_ms(),
                        host.config.lease_ttl_ms,
                    )
                )
                break
            except StoreUnavailable:
                failures += 1
                if failures >= _LEASE_WRITE_ATTEMPTS or host.closing:
                    raise
                await asyncio.sleep(_LEASE_WRITE_BACKOFF_S * failures)
            except LeaseHeld as held:
                # In a cluster the previous owner hands the actor off (or crashed): wait for
                # its release or expiry while this node still owns the actor.
                if host.router is None or not await host.router.await_lease(self.stream_id, held):
                    raise
        assert lease.epoch >= 1
        await crash_point("host.after_lease")
        host.statistics.leases_acquired += 1
        self.epoch = lease.epoch
        rewrite_snapshot = False
        # Epoch 1 is the lease that created the stream: nothing was ever written to read back.
        new_stream = lease.epoch == 1
        assert not new_stream or lease.head_seq == 0, (self.stream_id, lease)
        snapshot = None if new_stream else await host.store.read_snapshot(self.stream_id)
        state = self.actor_cls.initial_state
        seq = 0
        if snapshot is not None:
            try:
                state = host.decode_state(self.actor_cls, snapshot)
                seq = snapshot.seq
            except CodecError as error:
                host.statistics.snapshot_fallbacks += 1
                rewrite_snapshot = True
                log.warning(
                    "SnapshotUndecodable",
                    extra={"stream_id": self.stream_id, "seq": snapshot.seq, "error": str(error)},
                )
        self.snapshot_seq = seq
        while seq < lease.head_seq:
            page = await host.store.read_events(self.stream_id, seq, _REPLAY_PAGE_EVENTS)
            if not page:
                break
            state, seq = fold_events(self.actor, state, seq, page, host.codec)
            host.statistics.events_replayed += len(page)
        assert seq >= lease.head_seq, (self.stream_id, seq, lease.head_seq)
        self.state = state
        self.seq = seq
        self.status = self.actor.status(state)
        if self.actor_cls.dedupe_window > 0 and not new_stream:
            for record in await host.store.read_dedupe(
                self.stream_id, self.actor_cls.dedupe_window
            ):
                self.dedupe[record.message_id] = record.reply
        self.hydrated = True
        if rewrite_snapshot:
            await self._write_snapshot()

    async def _write_snapshot(self) -> None:
        """Commit a snapshot of the current state at the current head (no events): an append,
        so it is fenced like any other write."""
        await self._commit(
            AppendRequest(
                stream_id=self.stream_id,
                epoch=self.epoch,
                expected_seq=self.seq,
                events=(),
                recorded_at_ms=self.host.clock.wall_ms(),
                snapshot=self._snapshot_of(self.state, self.seq),
            )
        )
        self.snapshot_seq = self.seq

    def _snapshot_of(self, state: Any, seq: int) -> Snapshot:
        self.host.statistics.snapshots_written += 1
        return self.host.encode_state(self.actor_cls, self.stream_id, state, seq)

    async def _commit(self, request: AppendRequest) -> None:
        await self.host.journal.append(request)
        assert request.new_head_seq == self.seq + len(request.events)

    # The mailbox loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """The actor's single-writer loop, from hydration to passivation."""
        host = self.host
        try:
            if self.claiming:
                # Assumed new: the state is the initial one, and the first write creates the
                # stream at epoch 1 (the epoch of a stream's creation) with its lease.
                self.epoch = 1
                self.status = self.actor.status(self.state)
            else:
                await self.hydrate()
        except Exception as error:
            host.forget(self)
            if host.router is not None and not host.owns(self.stream_id):
                host.redeliver(self)  # ownership moved while we waited: forward the mailbox
            else:
                self.fail_mailbox(error)
            return
        host.statistics.activations += 1
        wake = self.actor.activation_message(self.state)
        if wake is not None:
            handler = self.actor_cls.handler_for(wake)
            self.mailbox.append(
                _Envelope(wake, None, None, handler, host.clock.monotonic_s(), None)
            )
        wakeup = self.wakeup
        try:
            while True:
                if self.dropped:
                    return  # dropped by the commit's completion (the finally below deactivates)
                if self.committing or not self.mailbox:
                    # While a batch commits, the loop waits: its completion wakes it only when
                    # there is something to do, so a commit costs this task no wake-up of its own.
                    if not self.committing and (self.passivate_requested or host.closing):
                        break
                    wakeup.clear()
                    if (
                        not await wakeup.wait()
                        and not self.committing
                        and not self.mailbox
                        and not self.actor.keep_alive()
                    ):
                        break
                    continue
                batch = [
                    self.mailbox.popleft()
                    for _ in range(min(len(self.mailbox), host.config.handler_batch_max))
                ]
                self.busy = True
                try:
                    if host.tracer is None:
                        healthy = await self._handle_batch(batch)
                    else:
                        healthy = await self._handle_batch_traced(host.tracer, batch)
                finally:
                    self.busy = self.committing
                # Let the batch go before waiting: an idle activation would otherwise keep its
                # last messages (and everything they reference) alive until the next one.
                batch = []
                host.touch(self)
                if not healthy:
                    # The store rejected or lost our write: our view of the stream is not to be
                    # trusted. Leave without releasing the lease; queued messages start afresh.
                    host.forget(self)
                    host.redeliver(self)
                    return  # (the finally below deactivates the actor)
        finally:
            wakeup.cancel()
            self._deactivate()
        await self._passivate()

    def _deactivate(self) -> None:
        try:
            self.actor.on_deactivate()
        except Exception:
            log.exception("DeactivateFailed", extra={"stream_id": self.stream_id})

    async def _passivate(self) -> None:
        host = self.host
        # No await between the empty-mailbox check in run() and forget(): a message that
        # arrives from now on creates a new activation instead of landing in a dead mailbox.
        host.forget(self)
        host.statistics.passivations += 1
        try:
            if host.config.snapshot_on_passivate and self.seq > self.snapshot_seq:
                await self._write_snapshot()
            await crash_point("host.mid_passivation")
            for failures in range(1, _LEASE_WRITE_ATTEMPTS + 1):
                try:
                    await host.journal.release_lease(host.node_id, self.stream_id, self.epoch)
                    break
                except StoreUnavailable:
                    if failures == _LEASE_WRITE_ATTEMPTS:
                        raise
                    await asyncio.sleep(_LEASE_WRITE_BACKOFF_S * failures)
        except (Fenced, ConcurrencyConflict, StoreUnavailable, NodeClosed) as error:
            # A newer activation already exists, or the store is away: the lease simply expires.
            log.debug(
                "PassivateIncomplete", extra={"stream_id": self.stream_id, "error": str(error)}
            )

    def fail_mailbox(self, error: BaseException) -> None:
        while self.mailbox:
            _settle(self.mailbox.popleft(), error=error)

    async def _handle_batch_traced(self, tracer: Tracer, batch: Sequence[_Envelope]) -> bool:
        """``_handle_batch`` inside a span (when the node traces): the child of the sender's
        span when the batch is one message, else a new trace linked to every sender's span
        (never the child of whoever happened to activate the actor)."""
        senders = [e.sender for e in batch if e.sender is not None and e.sender.is_valid]
        parent = Context()
        if len(batch) == 1 and senders:
            parent = set_span_in_context(NonRecordingSpan(senders[0]))
        links = [Link(sender) for sender in senders] if len(senders) > 1 else None
        with tracer.start_as_current_span(
            "mainspring.actor.handle", context=parent, links=links
        ) as span:
            span.set_attribute("mainspring.stream_id", self.stream_id)
            span.set_attribute("mainspring.messages", len(batch))
            healthy = await self._handle_batch(batch)
            if healthy and self.committing:  # the span covers the commit too
                self._commit_outcome = asyncio.get_running_loop().create_future()
                healthy = await self._commit_outcome
            if not healthy:
                span.set_status(StatusCode.ERROR, "the commit failed; the actor is dropped")
            return healthy

    def _awaited_reply(self, envelope: _Envelope, reply: Awaitable[Any]) -> Awaitable[Any]:
        """The awaitable a handler returned, to await when the handler is ``async def``.

        Raises:
            UsageError: a handler that is not ``async def`` returned an awaitable. Such a
                handler may run at once inside ``deliver`` (``handle_now``), where nothing can
                be awaited, so the rule is the same everywhere.
        """
        if self.actor_cls.is_async_handler(envelope.handler):
            return reply
        if inspect.iscoroutine(reply):
            reply.close()  # never awaited, on purpose: no warning about it
        raise UsageError(
            f"the handler {envelope.handler.__qualname__} of actor type "
            f"{self.actor_cls.type_name!r} returned an awaitable but is not 'async def'; "
            "declare it 'async def' to have its work awaited"
        )

    def handle_now(self, envelope: _Envelope) -> None:
        """Handle one message at once, in the caller, instead of waking the activation's task.

        ``ActorHost.deliver`` calls it only when ``can_handle_now`` says the activation is
        idle: hydrated, its task waiting with an empty mailbox, no commit in flight, and the
        journal has room for one more request. The handler is not ``async def``. Then nothing
        in ``_handle_batch`` awaits: it runs to its end (the commit submitted, or the reply
        settled) within this call, as the single writer, exactly as the task would run it. What
        it saves is the task's wake-up and the loop iteration around it.
        """
        # The single writer's own conditions (``deliver`` checked ``can_handle_now`` just now;
        # these are the ones that, broken, would let two batches of this actor interleave).
        assert self.hydrated, self.stream_id
        assert not self.busy, self.stream_id
        assert not self.committing, self.stream_id
        assert not self.dropped, self.stream_id
        host = self.host
        self.busy = True
        batch = self._handle_batch((envelope,))
        try:
            batch.send(None)
        except StopIteration as finished:
            healthy: bool = finished.value
        except Exception as error:
            # A bug in the runtime, where the activation's task would have died of it: the
            # message gets the error, and the activation is dropped.
            log.exception("HandleFailed", extra={"stream_id": self.stream_id})
            _settle(envelope, error=error)
            healthy = False
        else:
            batch.close()
            raise AssertionError(f"a batch handled at once suspended: {self.stream_id}")
        finally:
            self.busy = self.committing
        if healthy:
            self.wakeup.restart_timeout()
            return
        # As the loop does for a batch it handled: leave without releasing the lease; its
        # task, woken, sees ``dropped`` and ends.
        self.dropped = True
        host.forget(self)
        host.redeliver(self)
        self.wakeup.set()

    def can_handle_now(self) -> bool:
        """Whether a message that arrives now may be handled at once (``handle_now``)."""
        return (
            self.hydrated
            and not self.mailbox
            and not self.busy
            and not self.committing
            and not self.dropped
            and not self.passivate_requested
            and self.wakeup.parked()
            and self.host.journal.has_room()
        )

    async def _handle_batch(self, batch: Sequence[_Envelope]) -> bool:
        """Handle ``batch`` against a working state, commit once, then reply. Returns False when
        the activation must be dropped."""
        host = self.host
        working = self.state
        events: list[NewEvent] = []
        outcomes: list[tuple[_Envelope, Any, BaseException | None]] = []
        # What handlers rarely write gets a container only once one of them writes it, and each
        # message's context is let go before the commit: everything still referenced here stays
        # alive until the commit, and with many actors waiting on one commit the garbage
        # collector scans those objects again and again.
        dedupe: list[DedupeRecord] | None = None
        seen_in_batch: dict[str, bytes] | None = None
        outbox: list[OutboxMessage] | None = None
        timers_set: dict[str, Timer] | None = None
        timers_cancelled: set[str] | None = None
        callbacks: list[Callable[[], None]] | None = None
        snapshot_requested = False
        context: ActorContext[Any] | None = None
        for index, envelope in enumerate(batch):
            host.statistics.messages += 1
            message_id = envelope.message_id
            if message_id is not None:
                seen = None if seen_in_batch is None else seen_in_batch.get(message_id)
                stored_reply = self.dedupe.get(message_id, seen)
                if stored_reply is not None:
                    host.statistics.duplicates += 1
                    outcomes.append((envelope, host.codec.loads_any(stored_reply), None))
                    continue
            context = ActorContext(self, working, message_id, host.codec)
            refusal: BaseException | None = None
            try:
                try:
                    reply = envelope.handler(self.actor, context, envelope.message)
                    if type(reply) not in _PLAIN_REPLIES and inspect.isawaitable(reply):
                        reply = await self._awaited_reply(envelope, reply)
                    encoded_reply = (
                        host.codec.dumps_any(reply)
                        if message_id is not None
                        and context.wrote_anything
                        and self.actor_cls.dedupe_window > 0
                        else None
                    )
                finally:
                    # The context lets go of its callbacks: one that uses the context (a
                    # closure over ``ctx``) would otherwise make a reference cycle, left for the
                    # garbage collector instead of freed with the batch.
                    after_commit = context.after_commit_callbacks
                    context.after_commit_callbacks = None
            except Exception as error:
                host.statistics.handler_errors += 1
                if error is context.commit_despite:
                    # The handler refuses the message but keeps what it recorded before it
                    # decided to (its events commit; the caller gets the error).
                    refusal, reply, encoded_reply = error, None, None
                elif context.events and self.actor_cls.mutable_state:
                    # The handler changed the working state in place and then failed: nothing
                    # of this batch is committed, so the others are handled again, afresh.
                    log.error(
                        "HandlerFailedAfterEmitting",
                        extra={"stream_id": self.stream_id},
                        exc_info=error,
                    )
                    _settle(envelope, error=error)
                    again = [queued for queued, _, _ in outcomes] + list(batch[index + 1 :])
                    self.mailbox.extendleft(reversed(again))
                    return False
                else:
                    outcomes.append((envelope, None, error))
                    continue
            working = context.state
            if after_commit:
                if callbacks is None:
                    callbacks = after_commit
                else:
                    callbacks.extend(after_commit)
            snapshot_requested = snapshot_requested or context.snapshot_requested
            if events:
                events.extend(context.events)
            else:
                events = context.events  # the context is let go below; its list is the batch's
            if context.outbox:
                if outbox is None:
                    outbox = []
                outbox.extend(context.outbox)
            if context.timers_cancelled or context.timers_set:
                if timers_set is None:
                    timers_set = {}
                if timers_cancelled is None:
                    timers_cancelled = set()
                for name in context.timers_cancelled or ():
                    timers_set.pop(name, None)
                    timers_cancelled.add(name)
                for name, timer in (context.timers_set or {}).items():
                    timers_cancelled.discard(name)
                    timers_set[name] = timer
            if encoded_reply is not None:
                assert message_id is not None
                if dedupe is None or seen_in_batch is None:
                    dedupe, seen_in_batch = [], {}
                dedupe.append(DedupeRecord(message_id, self.seq + len(events), encoded_reply))
                seen_in_batch[message_id] = encoded_reply
            outcomes.append((envelope, reply, refusal))
        context = None
        if events or outbox or timers_set or timers_cancelled:
            commit = self._commit_of(
                working,
                events,
                dedupe,
                outbox,
                timers_set,
                timers_cancelled,
                outcomes,
                callbacks,
                snapshot_requested,
            )
            journal = host.journal
            try:
                if journal.has_room():
                    journal.submit_now(commit.request, commit)  # no coroutine for the usual case
                else:
                    await journal.submit(commit.request, commit)
            except NodeClosed as failure:
                for envelope, _, _ in outcomes:
                    _settle(envelope, error=failure)
                return False
            self.committing = True
            return True
        assert working is self.state  # nothing was emitted, so nothing changed
        if self.claiming:
            # Nothing to create the stream with, and an answer read from a state that was only
            # assumed new could be wrong: start over the usual way (lease, then read).
            self.host.statistics.claims_abandoned += 1
            self.mailbox.extendleft(reversed(batch))
            return False
        for envelope, reply, outcome_error in outcomes:
            _settle(envelope, result=reply, error=outcome_error)
        if callbacks:
            self._run_callbacks(callbacks)
        return True

    def _run_callbacks(self, callbacks: list[Callable[[], None]]) -> None:
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("AfterCommitCallbackFailed", extra={"stream_id": self.stream_id})

    def _commit_of(
        self,
        working: Any,
        events: list[NewEvent],
        dedupe: list[DedupeRecord] | None,
        outbox: list[OutboxMessage] | None,
        timers_set: dict[str, Timer] | None,
        timers_cancelled: set[str] | None,
        outcomes: list[tuple[_Envelope, Any, BaseException | None]],
        callbacks: list[Callable[[], None]] | None,
        snapshot_requested: bool,
    ) -> _BatchCommit:
        """The append of a handled batch, and its completion (which holds the request)."""
        host = self.host
        new_seq = self.seq + len(events)
        now_ms = host.clock.wall_ms()
        snapshot = None
        every = self.actor_cls.snapshot_every
        if (snapshot_requested and events) or (every > 0 and new_seq - self.snapshot_seq >= every):
            snapshot = self._snapshot_of(working, new_seq)
        status = self.actor.status(working)
        # By position, in the order of AppendRequest's fields: one is built per commit of every
        # actor, and matching thirteen keywords cost as much as the rest of building it.
        request = AppendRequest(
            self.stream_id,
            self.epoch,
            self.seq,  # expected_seq
            events,
            now_ms,  # recorded_at_ms
            dedupe or (),
            self.actor_cls.dedupe_window,
            outbox or (),
            list(timers_set.values()) if timers_set else (),
            sorted(timers_cancelled) if timers_cancelled else (),
            snapshot,
            status if status != self.status else None,
            (
                LeaseRequest(self.stream_id, host.node_id, now_ms, host.config.lease_ttl_ms)
                if self.claiming
                else None
            ),  # claim
        )
        if host.reply_before_commit:  # broken on purpose (mainspring.simulations.selfcheck)
            for envelope, reply, error in outcomes:
                _settle(envelope, result=reply, error=error)

        return _BatchCommit(
            self,
            request,
            working,
            new_seq,
            snapshot,
            status,
            dedupe,
            outcomes,
            callbacks,
            bool(outbox),
            min(timer.due_at_ms for timer in timers_set.values()) if timers_set else None,
        )

    def commit_decided(self, committed: bool) -> None:
        """The journal decided this activation's commit in flight (after ``apply_commit`` when
        it committed): tell a traced batch waiting on it, and wake the loop if it has work."""
        outcome, self._commit_outcome = self._commit_outcome, None
        if outcome is not None and not outcome.done():
            outcome.set_result(committed)
        host = self.host
        if self.dropped or self.mailbox or self.passivate_requested or host.closing:
            self.wakeup.set()

    def apply_commit(self, commit: _BatchCommit) -> None:
        """The batch of ``commit`` committed: move the state on, then reply."""
        request, new_seq = commit.request, commit.new_seq
        assert request.new_head_seq == self.seq + len(request.events) == new_seq
        self.state = commit.working
        self.seq = new_seq
        self.status = commit.status
        if commit.snapshot is not None:
            self.snapshot_seq = new_seq
        if commit.dedupe:
            for record in commit.dedupe:
                self.dedupe[record.message_id] = record.reply
            # Only new records make it grow (hydration reads at most the window).
            while len(self.dedupe) > self.actor_cls.dedupe_window:
                self.dedupe.popitem(last=False)
        for envelope, reply, error in commit.outcomes:
            _settle(envelope, result=reply, error=error)
        if commit.callbacks:
            self._run_callbacks(commit.callbacks)


@final
class ActorHost:
    """Hosts the live actors of one node.

    Args:
        node_id: the lease owner name of this node.
        store: the durable store.
        journal: the group-commit journal over ``store``.
        actors: the actor types this node hosts.
        config: the node's settings.
        clock: the node's clock.
        codec: the type registry.
        random: the node's random source (workflow seeds and retry jitter).
    """

    def __init__(
        self,
        node_id: str,
        store: Store,
        journal: Journal,
        actors: Sequence[type[Actor[Any]]],
        config: NodeConfig,
        clock: Clock,
        codec: Registry,
        random: Random | None = None,
    ) -> None:
        self.node_id: Final = node_id
        self.random: Final[Random] = random or SeededRandom()
        self.store: Final = store
        self.journal: Final = journal
        self.config: Final = config
        self.clock: Final = clock
        self.codec: Final = codec
        self.types: Final[dict[str, type[Actor[Any]]]] = {}
        for actor_cls in actors:
            if not (isinstance(actor_cls, type) and issubclass(actor_cls, Actor)):
                raise UsageError(f"actors= takes Actor subclasses, got {actor_cls!r}")
            other = self.types.get(actor_cls.type_name)
            if other is not None and other is not actor_cls:
                raise UsageError(
                    f"{actor_cls.__qualname__} and {other.__qualname__} both use type_name "
                    f"{actor_cls.type_name!r}"
                )
            self.types[actor_cls.type_name] = actor_cls
        self._hosted: Final[dict[object, type[Actor[Any]]]] = {}
        """Each hosted class by itself and by its type name: ``actor_type`` in one lookup."""
        for name, actor_cls in self.types.items():
            self._hosted[name] = self._hosted[actor_cls] = actor_cls
        self.live: Final[OrderedDict[str, Activation]] = OrderedDict()
        self._running: Final[set[asyncio.Task[None]]] = set()
        """The task of every activation that has not ended: the live ones, and those that left
        ``live`` and are still passivating (snapshot, lease release)."""
        self.closing = False
        self.statistics: Final = HostStatistics()
        self.on_outbox_written: Callable[[], None] = lambda: None
        self.on_timers_set: Callable[[int], None] = lambda due_at_ms: None
        self.tracer: Tracer | None = None
        """Makes a span per handled batch when set (by the node, when it traces)."""
        self.router: Router | None = None
        """Routes messages of actors other nodes own (set by the node in a cluster)."""
        # A deliberately broken variant for the simulator's self-check: reply before the commit.
        self.reply_before_commit = False
        self._handling_now = False
        """A message is being handled inside ``deliver`` (``Activation.handle_now``)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        """The loop the node runs on, from the first ``deliver`` (a node starts only once).
        ``asyncio.get_running_loop()`` costs a system call (``getpid``) on every call."""

    def actor_type(self, actor: type[Actor[Any]] | str) -> type[Actor[Any]]:
        """The hosted actor class for a class or a type name.

        Raises:
            UnknownActorType: this node does not host it.
        """
        try:
            return self._hosted[actor]
        except (KeyError, TypeError):  # TypeError: not even hashable
            name = actor if isinstance(actor, str) else getattr(actor, "type_name", None)
            raise UnknownActorType(
                str(name if name is not None else actor), list(self.types)
            ) from None

    def deliver(
        self,
        actor: type[Actor[Any]] | str,
        actor_id: str,
        message: object,
        message_id: str | None,
        *,
        want_reply: bool,
        hops: int = 0,
    ) -> asyncio.Future[Any] | None:
        """Queue ``message`` for the actor, activating it if needed; in a cluster, forward it
        to the node that owns the actor when that is another node.

        Returns a future of the reply when ``want_reply``. ``hops`` counts the nodes the
        message was forwarded through already.

        Raises:
            NodeClosed: the host is stopping.
            Overloaded: the actor's mailbox is full.
        """
        router = self.router
        if self.closing and router is None:
            raise NodeClosed(f"node {self.node_id!r} is stopping; send the message elsewhere")
        actor_cls = self.actor_type(actor)
        function = actor_cls.handler_for(message)  # fails fast, before anything is queued
        stream_id = stream_id_of(actor_cls.type_name, actor_id)
        if router is not None:
            if not router.owns(stream_id):
                return router.forward(
                    actor_cls.type_name,
                    actor_id,
                    message,
                    message_id,
                    want_reply=want_reply,
                    hops=hops,
                )
            if self.closing:
                raise NodeClosed(f"node {self.node_id!r} is stopping; send the message elsewhere")
        activation = self.live.get(stream_id)
        if activation is None:
            activation = self._activate(actor_cls, actor_id, claim=self._claims(message))
        if len(activation.mailbox) >= self.config.mailbox_messages_max:
            raise Overloaded(f"the mailbox of {stream_id!r}", self.config.mailbox_messages_max, 1.0)
        future = None
        if want_reply:
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            future = loop.create_future()
        self.live.move_to_end(stream_id)
        if (
            self.tracer is None
            and not self._handling_now
            and not actor_cls.is_async_handler(function)
            and activation.can_handle_now()
        ):
            # An idle actor handles the message right here rather than in its task: one task
            # switch less per message, and a reply that needs no write is ready on return.
            # Not from inside another handler (``_handling_now``): a chain of actors telling
            # one another would nest handlers on one stack.
            self._handling_now = True
            try:
                # Never queued, so without the time it was (``accepted_s``, the mailbox's age).
                activation.handle_now(_Envelope(message, message_id, future, function))
            finally:
                self._handling_now = False
            return future
        sender = None if self.tracer is None else get_current_span().get_span_context()
        activation.mailbox.append(
            _Envelope(message, message_id, future, function, self.clock.monotonic_s(), sender)
        )
        if not activation.committing:  # else the commit's completion wakes it
            activation.wakeup.set()
        return future

    def _claims(self, message: object) -> bool:
        """Whether an activation for ``message`` assumes its actor is new (see
        ``NodeConfig.create_with_first_write``)."""
        return self.config.create_with_first_write and creates_actor(message)

    def _activate(
        self, actor_cls: type[Actor[Any]], actor_id: str, *, claim: bool = False
    ) -> Activation:
        activation = Activation(self, actor_cls, actor_id, claim)
        self.live[activation.stream_id] = activation
        if len(self.live) > self.config.live_actors_max:
            self._shed(len(self.live) - self.config.live_actors_max)
        task = asyncio.create_task(
            activation.run(), name=f"mainspring-actor:{activation.stream_id}"
        )
        activation.task = task
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return activation

    def _shed(self, count: int) -> None:
        """Ask the ``count`` least recently used idle actors to passivate."""
        for activation in self.live.values():
            if count <= 0:
                break
            idle = (
                activation.hydrated
                and not activation.mailbox
                and not activation.busy
                and not activation.actor.keep_alive()
            )
            if idle and not activation.passivate_requested:
                activation.passivate_requested = True
                activation.wakeup.set()
                count -= 1

    def touch(self, activation: Activation) -> None:
        """Mark ``activation`` as recently used."""
        if self.live.get(activation.stream_id) is activation:
            self.live.move_to_end(activation.stream_id)

    def forget(self, activation: Activation) -> None:
        """Remove ``activation`` from the live set (it stops writing)."""
        if self.live.get(activation.stream_id) is activation:
            del self.live[activation.stream_id]

    def redeliver(self, dropped: Activation) -> None:
        """Move the queued messages of a dropped activation to a fresh one, which re-hydrates
        from the store. They were accepted already, so the mailbox bound does not apply."""
        while dropped.mailbox:
            envelope = dropped.mailbox.popleft()
            if self.router is not None and not self.router.owns(dropped.stream_id):
                self._forward_envelope(dropped, envelope)
                continue
            if self.closing:
                _settle(envelope, error=NodeClosed(f"node {self.node_id!r} is stopping"))
                continue
            activation = self.live.get(dropped.stream_id)
            if activation is None:
                activation = self._activate(dropped.actor_cls, dropped.actor_id)
            activation.mailbox.append(envelope)
            activation.wakeup.set()

    def _forward_envelope(self, dropped: Activation, envelope: _Envelope) -> None:
        """Send an accepted message on to the actor's owner (it moved while it was queued)."""
        assert self.router is not None
        try:
            forwarded = self.router.forward(
                dropped.actor_cls.type_name,
                dropped.actor_id,
                envelope.message,
                envelope.message_id,
                want_reply=envelope.reply is not None,
                hops=0,
            )
        except Exception as error:
            _settle(envelope, error=error)
            return
        if forwarded is not None:
            forwarded.add_done_callback(lambda done: _settle_from(envelope, done))

    def owns(self, stream_id: str) -> bool:
        """Whether this node should run ``stream_id``'s actor (always, outside a cluster)."""
        return self.router is None or self.router.owns(stream_id)

    def hand_off(self) -> int:
        """Ask every live actor this node no longer owns to finish its queued messages and
        passivate (releasing its lease); returns how many were asked."""
        asked = 0
        for activation in list(self.live.values()):
            if not activation.passivate_requested and not self.owns(activation.stream_id):
                activation.passivate_requested = True
                activation.wakeup.set()
                asked += 1
        return asked

    def lost_leases(self, stream_ids: Sequence[str]) -> None:
        """Drop activations whose lease renewal failed (another node owns them now)."""
        self.statistics.leases_lost += len(stream_ids)
        for stream_id in stream_ids:
            activation = self.live.get(stream_id)
            if activation is not None:
                activation.passivate_requested = True
                self.forget(activation)
                activation.wakeup.set()

    def held_leases(self) -> list[tuple[str, int]]:
        """``(stream_id, epoch)`` of every hydrated live actor."""
        return [(a.stream_id, a.epoch) for a in self.live.values() if a.hydrated]

    def encode_state(
        self, actor_cls: type[Actor[Any]], stream_id: str, state: Any, seq: int
    ) -> Snapshot:
        """Encode ``state`` as the snapshot after ``seq``."""
        codec = self.codec
        if codec.is_registered(type(state)):
            encoded = codec.encode(state)
            return Snapshot(
                stream_id,
                seq,
                encoded.type_name,
                encoded.type_version,
                encoded.payload,
                self.clock.wall_ms(),
            )
        payload = codec.dumps_plain(state)
        return Snapshot(stream_id, seq, "", actor_cls.state_version, payload, self.clock.wall_ms())

    def decode_state(self, actor_cls: type[Actor[Any]], snapshot: Snapshot) -> Any:
        """Decode a snapshot of ``actor_cls``.

        Raises:
            CodecError: the snapshot does not fit the current state class.
        """
        if snapshot.type_name:
            return self.codec.decode(snapshot.type_name, snapshot.type_version, snapshot.payload)
        if snapshot.type_version != actor_cls.state_version:
            raise CodecError(
                f"snapshot state_version {snapshot.type_version} != {actor_cls.type_name!r} "
                f"state_version {actor_cls.state_version}"
            )
        state_type = actor_cls.state_type or type(actor_cls.initial_state)
        return self.codec.loads_plain(snapshot.payload, state_type)

    async def drain(self) -> None:
        """Stop accepting messages, let every live actor finish its mailbox and passivate, and
        wait for the actors already passivating (handed off, shed, idle) to release their
        leases; all within ``shutdown_timeout_s``."""
        self.closing = True
        for activation in list(self.live.values()):
            activation.wakeup.set()
        # Not only the live ones: an activation leaves ``live`` when it starts passivating, and
        # its snapshot and lease release still need the journal, which closes after this.
        tasks = set(self._running)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self.config.shutdown_timeout_s)
        for activation in list(self.live.values()):
            if activation.task in pending:
                log.warning("ShutdownAbandonedMailbox", extra={"stream_id": activation.stream_id})
                self.forget(activation)
                activation.fail_mailbox(
                    NodeClosed(f"node {self.node_id!r} stopped before handling this message")
                )
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
